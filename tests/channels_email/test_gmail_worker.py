"""Gmail with a real Celery worker on real Redis: a customer email delivered in the
sandbox becomes a ticket through push -> webhook -> sync task -> ingest task, and
duplicate or reordered pushes ingest every message exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests
from django.conf import settings
from django.db import connection

from channels_email.models import EmailConnection, InboundEmail
from helpdesk.tenancy import tenant_scope, unscoped
from tests.channels_email.test_gmail_flow import (  # noqa: F401 - fixtures
    admin_client,
    connect_mailbox,
    deliver,
    gmail,
)
from tickets.models import Ticket

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def start_worker(sandbox: str, log, queues: str = "ingest,outbound",
                 extra_env: dict | None = None) -> subprocess.Popen:
    """A real Celery worker (solo pool) on the test database, Redis and sandbox, consuming
    ``queues``, with ``extra_env`` on top of the test's settings; its log goes to ``log``
    (a path)."""
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    env = dict(
        os.environ,
        DATABASE_URL=f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        MEDIA_ROOT=settings.STORAGES["default"]["OPTIONS"]["location"],
        CACHE_KEY_PREFIX=settings.CACHES["default"]["KEY_PREFIX"],
        SANDBOX_URL=sandbox, GOOGLE_CLIENT_ID=settings.GOOGLE_CLIENT_ID,
        GOOGLE_CLIENT_SECRET=settings.GOOGLE_CLIENT_SECRET,
        GMAIL_PUBSUB_TOPIC=settings.GMAIL_PUBSUB_TOPIC,
        **(extra_env or {}),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "helpdesk", "worker", "--pool", "solo", "-Q",
         queues, "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("a"))


@pytest.fixture
def worker(tmp_path, gmail):  # noqa: F811 - the fixture above
    sandbox, _ = gmail
    log = tmp_path / "worker.log"
    proc = start_worker(sandbox, log)
    yield proc, log
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for(predicate, proc, log, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("timed out\n" + log.read_text()[-4000:])


def forward_pushes(client, catcher, count):
    """Hand each push Pub/Sub made to our webhook, as Pub/Sub would over the network."""
    for _ in range(count):
        headers, body = catcher.next()
        answer = client.post("/webhooks/google/pubsub/", data=body,
                             content_type="application/json",
                             HTTP_AUTHORIZATION=headers["Authorization"])
        assert answer.status_code == 204


def test_push_to_ticket_with_a_real_worker(gmail, admin_client, tenant, worker):  # noqa: F811
    sandbox, catcher = gmail
    proc, log = worker
    connect_mailbox(admin_client, tenant, "support@acme.test")
    forward_pushes(admin_client, catcher, 1)  # the watch's own notification
    deliver(sandbox, "support@acme.test", "Printer on fire")
    forward_pushes(admin_client, catcher, 1)

    def one_ticket():
        with tenant_scope(tenant):
            return Ticket.objects.filter(title="Printer on fire").exists()

    wait_for(one_ticket, proc, log)
    with tenant_scope(tenant):
        assert EmailConnection.objects.get().last_sync_at is not None


def test_duplicate_and_reordered_pushes_ingest_each_message_once(
        gmail, admin_client, tenant, worker):  # noqa: F811
    sandbox, catcher = gmail
    proc, log = worker
    connect_mailbox(admin_client, tenant, "support@acme.test")
    forward_pushes(admin_client, catcher, 1)
    requests.post(sandbox + "/_sandbox/faults", json=[{"kind": "push_duplicate"},
                                                      {"kind": "push_reorder"}],
                  timeout=5).raise_for_status()
    for n in range(5):
        deliver(sandbox, "support@acme.test", f"Question {n}")
    forward_pushes(admin_client, catcher, 10)  # each push twice, newest first

    def all_five():
        with tenant_scope(tenant):
            return Ticket.objects.count() == 5

    wait_for(all_five, proc, log)
    time.sleep(1.5)  # let any straggling duplicate task finish
    with unscoped():
        assert InboundEmail.objects.count() == 5
        assert InboundEmail.objects.filter(state="processed").count() == 5
    with tenant_scope(tenant):
        assert sorted(Ticket.objects.values_list("title", flat=True)) == [
            f"Question {n}" for n in range(5)]


def _a_ticket_to_answer(gmail, admin_client, tenant, worker):  # noqa: F811
    sandbox, catcher = gmail
    proc, log = worker
    connect_mailbox(admin_client, tenant, "support@acme.test")
    forward_pushes(admin_client, catcher, 1)
    deliver(sandbox, "support@acme.test", "Printer on fire")
    forward_pushes(admin_client, catcher, 1)

    def ticket_exists():
        with tenant_scope(tenant):
            return Ticket.objects.exists()

    wait_for(ticket_exists, proc, log)
    with tenant_scope(tenant):
        return Ticket.objects.get()


def _reply(tenant, ticket, user):
    from django.db import transaction

    from channels_email.outbound import reply_create

    with tenant_scope(tenant), transaction.atomic():
        return reply_create(ticket=ticket, author=user, body_text="We are on it.")


def _status(tenant, message):
    from tickets.models import Message

    with tenant_scope(tenant):
        return Message.objects.values_list("delivery_status", "attempts").get(pk=message.pk)


def test_the_worker_retries_two_server_errors_and_delivers_on_the_third_attempt(
        gmail, admin_client, tenant, admin_user, worker):  # noqa: F811
    sandbox, _ = gmail
    proc, log = worker
    ticket = _a_ticket_to_answer(gmail, admin_client, tenant, worker)
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "server_error", "count": 2},
                  timeout=5).raise_for_status()
    message = _reply(tenant, ticket, admin_user)
    wait_for(lambda: _status(tenant, message)[0] == "delivered", proc, log)
    assert _status(tenant, message) == ("delivered", 3)
    sent = requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]
    assert len(sent) == 1


def test_a_worker_killed_after_gmail_accepted_the_reply_does_not_send_it_twice(
        gmail, admin_client, tenant, admin_user, worker, tmp_path):  # noqa: F811
    from channels_email.tasks import redrive_pending_replies

    sandbox, _ = gmail
    proc, log = worker
    ticket = _a_ticket_to_answer(gmail, admin_client, tenant, worker)
    # Gmail stores the reply, then holds its answer: the worker dies before hearing it.
    requests.post(sandbox + "/_sandbox/faults", json={
        "kind": "slow_after_send", "count": 1, "delay": 20}, timeout=5).raise_for_status()
    message = _reply(tenant, ticket, admin_user)

    def sent():
        return requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]

    wait_for(lambda: len(sent()) == 1, proc, log)
    proc.kill()
    proc.wait(timeout=30)
    assert _status(tenant, message) == ("pending", 1)

    # A new worker, and the beat job that re-drives replies left Pending.
    replacement = start_worker(sandbox, log)
    try:
        assert redrive_pending_replies(older_than_minutes=0) == 1
        wait_for(lambda: _status(tenant, message)[0] == "delivered", replacement, log)
    finally:
        replacement.terminate()
        replacement.wait(timeout=30)
    assert _status(tenant, message) == ("delivered", 2)
    assert len(sent()) == 1  # found among the sent mail by our Message-ID, not re-sent


def test_an_agent_reply_is_sent_by_the_worker_and_becomes_delivered(
        gmail, admin_client, tenant, admin_user, worker):  # noqa: F811
    sandbox, _ = gmail
    proc, log = worker
    ticket = _a_ticket_to_answer(gmail, admin_client, tenant, worker)
    message = _reply(tenant, ticket, admin_user)
    wait_for(lambda: _status(tenant, message)[0] == "delivered", proc, log)
    sent = requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]
    assert [m["subject"] for m in sent] == [f"Re: [#{ticket.number}] Printer on fire"]
