"""IDLE as push, with real processes: ``manage.py mailbox_watch`` holding IDLE on the real
Dovecot and a real Celery worker on real Redis. Mail appended to the mailbox becomes a
ticket without any poll; a dropped IDLE connection and a SIGKILLed watcher lose nothing
and duplicate nothing; shards split the mailboxes by a stable hash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connection

from channels_email.models import EmailConnection, InboundEmail
from channels_email.watch import shard_of, watched_connections
from helpdesk.coordination import redis_client, redis_key
from helpdesk.tenancy import tenant_scope, unscoped
from tests.channels_email.test_gmail_worker import start_worker
from tests.channels_email.test_imap import add, customer_mail
from tickets.models import Ticket

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture(autouse=True)
def _services_env(settings, mail_server, monkeypatch):
    settings.IMAP_EXTRA_CA_FILE = str(mail_server.ca_file)
    settings.CELERY_TASK_ALWAYS_EAGER = False
    monkeypatch.setenv("IMAP_EXTRA_CA_FILE", str(mail_server.ca_file))


def start_watcher(log, shard: str = "0/1") -> subprocess.Popen:
    """``manage.py mailbox_watch`` on the test database and Redis (the worker's env)."""
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    env = dict(os.environ,
               DATABASE_URL=f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
               REDIS_URL=settings.REDIS_URL,
               CACHE_KEY_PREFIX=settings.CACHES["default"]["KEY_PREFIX"])
    return subprocess.Popen([sys.executable, "manage.py", "mailbox_watch", "--shard", shard,
                             "--reload", "0.5"], env=env, stdout=log.open("a"),
                            stderr=subprocess.STDOUT)


@pytest.fixture
def processes(tmp_path):
    from helpdesk.celery import app

    # Tasks that other tests queued without a worker are not ours to run.
    with app.connection_for_write() as broker:
        for queue in settings.CELERY_TASK_QUEUES_NAMES:
            broker.default_channel.queue_purge(queue)
    started: list[subprocess.Popen] = []
    log = tmp_path / "processes.log"

    def start(kind: str, **kwargs):
        proc = start_worker("", log) if kind == "worker" else start_watcher(log, **kwargs)
        started.append(proc)
        return proc

    start.log = log
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for(predicate, log, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out\n" + log.read_text()[-5000:])


def watching(log, count: int):
    return lambda: log.read_text().count("watch.idle") >= count


def idle_now(connection_id: int) -> bool:
    """No sync of the connection is queued or running."""
    redis = redis_client()
    return not redis.exists(redis_key("sync-pending", connection_id)) and not redis.exists(
        redis_key("sync-lock", connection_id))


def tickets(tenant) -> list[str]:
    with tenant_scope(tenant):
        return sorted(Ticket.objects.values_list("title", flat=True))


def test_idle_push_to_ticket_surviving_a_dropped_connection_and_a_sigkill(
        admin_client, tenant, mail_server, mailboxes, processes):
    conn = add(admin_client, tenant, mail_server, mailboxes)
    processes("worker")
    watcher = processes("watcher")
    wait_for(watching(processes.log, 1), processes.log)
    # The first sync (on connect) and the watcher's catch-up sync are done: what comes
    # now can only come by IDLE.
    wait_for(lambda: "sync.done" in processes.log.read_text() and idle_now(conn.pk),
             processes.log)

    mail_server.deliver(customer_mail(mailboxes, "Printer on fire"), mailboxes.support)
    wait_for(lambda: tickets(tenant) == ["Printer on fire"], processes.log)
    with tenant_scope(tenant):
        assert EmailConnection.objects.get(pk=conn.pk).last_push_at is not None, \
            processes.log.read_text()[-6000:]

    # The server drops every session of the mailbox: the watcher signs in again.
    mail_server.doveadm("kick", mailboxes.support)
    wait_for(watching(processes.log, 2), processes.log)
    mail_server.deliver(customer_mail(mailboxes, "After the drop"), mailboxes.support)
    wait_for(lambda: len(tickets(tenant)) == 2, processes.log)

    # The watcher is killed outright; mail arrives meanwhile; a new watcher catches up.
    watcher.send_signal(signal.SIGKILL)
    watcher.wait(timeout=10)
    mail_server.deliver(customer_mail(mailboxes, "While nobody watched"), mailboxes.support)
    processes("watcher")
    wait_for(lambda: len(tickets(tenant)) == 3, processes.log)
    mail_server.deliver(customer_mail(mailboxes, "Back to normal"), mailboxes.support)
    wait_for(lambda: len(tickets(tenant)) == 4, processes.log)
    time.sleep(1)  # let a straggling duplicate sync finish, if there were one
    assert tickets(tenant) == ["After the drop", "Back to normal", "Printer on fire",
                               "While nobody watched"]
    with unscoped():
        assert InboundEmail.objects.count() == 4


def test_shards_split_the_mailboxes_by_a_stable_hash(admin_client, tenant, mail_server,
                                                     mailboxes):
    conn = add(admin_client, tenant, mail_server, mailboxes)
    assert shard_of(conn.pk, 4) == shard_of(conn.pk, 4)
    owners = [s for s in range(4) if conn.pk in watched_connections(s, 4)]
    assert owners == [shard_of(conn.pk, 4)]
    spread = {shard_of(pk, 4) for pk in range(1, 200)}
    assert spread == {0, 1, 2, 3}
