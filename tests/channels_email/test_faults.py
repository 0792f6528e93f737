"""Faults with real processes: a real Celery worker, a real Redis, real PostgreSQL and the
Gmail sandbox over HTTP pushing to our webhook (a live server). After each fault, every
email delivered to the sandbox is exactly one ticket or one appended message, and every
agent reply is exactly one sent copy.

How the faults are made, and why:
- Redis: each test runs its own ``redis-server`` (``tests.sandbox_support.RedisServer``),
  and this process (webhook, cache, coordination, Celery producer) and the worker both
  use it; stopping it is a real outage, and the session's Redis that the rest of the
  suite shares never notices. It keeps nothing on disk, like the embedded one, so a
  restart loses the queue, the locks and the coalescing marks.
- PostgreSQL: the test database lives on the session's server, which every other test
  uses, so it is not restarted. The worker reaches it through ``PgProxy``, a TCP proxy
  in this process; ``down()`` drops every connection and refuses new ones, and ``up()``
  listens again on the same port. That is what a PostgreSQL restart looks like from the
  worker (connections reset, connects refused, then a fresh server). The test itself and
  the webhook talk to PostgreSQL directly.
- "Killed mid-ingest, after the raw MIME is stored, before the commit": the proxy also
  holds one statement: once the worker's ``UPDATE ... SET "raw" = ...`` (the raw MIME
  stored) has gone through, the next ``COMMIT`` on that connection is not forwarded. The
  worker then waits inside the ingest transaction, the test SIGKILLs it, and PostgreSQL
  sees its client go away and rolls back, as it would for a real kill.
- Provider faults are the sandbox's switches (429 with Retry-After, 5xx, slow calls).
- Recovery is the product's: task retries, Pub/Sub's push retries, and beat's sweeps
  (reconcile, re-drive stuck inbound rows, re-drive pending replies), which this module
  calls every few seconds where production runs them every few minutes.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from django.conf import settings
from django.db import connection
from django.db import transaction as db_transaction

from channels_email.models import EmailConnection, InboundEmail
from channels_email.tasks import (
    reconcile_connections,
    redrive_pending_replies,
    redrive_stuck_inbound,
)
from helpdesk.tenancy import tenant_scope, unscoped
from tests.channels_email.test_gmail_flow import AUDIENCE, PUSH_ACCOUNT, TOPIC, connect_mailbox
from tests.sandbox_support import (
    free_port,
    own_redis,  # noqa: F401 - a fixture
    use_sandbox_google,
)
from tickets.models import Message, Ticket

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
MAILBOX = "support@acme.test"


class PgProxy:
    """A TCP proxy from a local port to the test's PostgreSQL, for the worker only.

    ``down()`` closes the listener and every proxied connection; ``up()`` listens again on
    the same port. ``hold(after=..., on=...)``: on the first connection whose client sends
    a packet containing ``after``, the next client packet containing ``on`` is not
    forwarded; ``held`` is set. A held connection is closed (both ends) when its client
    goes away or on ``down()``."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_port()
        self.held = threading.Event()
        self._hold: tuple[bytes, bytes] | None = None
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._listener: socket.socket | None = None

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of _accept
            except OSError:
                pass
            listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            self._close(pair)

    def hold(self, *, after: bytes, on: bytes) -> None:
        self.held.clear()
        self._hold = (after, on)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._upstream, args=(pair,), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair),
                             daemon=True).start()

    def _upstream(self, pair) -> None:
        client, server = pair
        armed = False
        try:
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                hold = self._hold
                if hold and armed and hold[1] in chunk:
                    self._hold = None
                    self.held.set()
                    while client.recv(65536):  # never forwarded; wait for the client to go
                        pass
                    break
                if hold and hold[0] in chunk:
                    armed = True
                server.sendall(chunk)
        except OSError:
            pass
        self._close(pair)

    def _pump(self, source: socket.socket, sink: socket.socket, pair) -> None:
        try:
            while True:
                ready, _, _ = select.select([source], [], [], 1.0)
                if not ready:
                    continue
                chunk = source.recv(65536)
                if not chunk:
                    break
                sink.sendall(chunk)
        except (OSError, ValueError):
            pass
        self._close(pair)

    def _close(self, pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.fixture
def pg_proxy():
    db = connection.settings_dict
    proxy = PgProxy(db["HOST"] or "127.0.0.1", int(db["PORT"]))
    proxy.up()
    yield proxy
    proxy.down()


@pytest.fixture
def pushes(settings, sandbox, live_server, own_redis):  # noqa: F811 - the fixture
    """The sandbox pushes straight to our webhook on a live server (Pub/Sub retries any
    answer but 2xx), with every Redis user pointed at this test's own Redis."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    use_sandbox_google(settings, sandbox, public_base_url="http://testserver", topic=TOPIC,
                       push_endpoint=live_server.url + "/webhooks/google/pubsub/",
                       audience=AUDIENCE, service_account=PUSH_ACCOUNT)
    return sandbox


class Worker:
    """A real Celery worker (solo pool) whose PostgreSQL is reached through ``db_port``
    and whose Redis is this test's own."""

    def __init__(self, sandbox: str, db_port: int, log):
        self.sandbox, self.db_port, self.log = sandbox, db_port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        db = connection.settings_dict
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        env = dict(
            os.environ,
            DATABASE_URL=f"postgres://{auth}@127.0.0.1:{self.db_port}/{db['NAME']}"
                         "?sslmode=disable",
            REDIS_URL=settings.REDIS_URL,
            MEDIA_ROOT=settings.STORAGES["default"]["OPTIONS"]["location"],
            CACHE_KEY_PREFIX=settings.CACHES["default"]["KEY_PREFIX"],
            SANDBOX_URL=self.sandbox, GOOGLE_CLIENT_ID=settings.GOOGLE_CLIENT_ID,
            GOOGLE_CLIENT_SECRET=settings.GOOGLE_CLIENT_SECRET,
            GMAIL_PUBSUB_TOPIC=settings.GMAIL_PUBSUB_TOPIC,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "helpdesk", "worker", "--pool", "solo",
             "-Q", "ingest,outbound", "--loglevel", "INFO", "--without-mingle",
             "--without-gossip"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("a"))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> None:
        assert self.proc.poll() is None, self.log.read_text()[-4000:]


@pytest.fixture
def worker(pushes, pg_proxy, tmp_path):
    w = Worker(pushes, pg_proxy.port, tmp_path / "worker.log")
    w.start()
    yield w
    w.stop()


def beat() -> None:
    """What beat's sweeps do, now."""
    reconcile_connections()
    redrive_stuck_inbound(older_than_minutes=0)
    redrive_pending_replies(older_than_minutes=0)


def settle(predicate, worker: Worker, *, sweeps: bool = True, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    next_sweep = time.monotonic() + 3
    while time.monotonic() < deadline:
        worker.alive()
        if predicate():
            return
        if sweeps and time.monotonic() > next_sweep:
            beat()
            next_sweep = time.monotonic() + 3
        time.sleep(0.3)
    raise AssertionError("timed out\n" + worker.log.read_text()[-6000:])


def deliver(sandbox: str, subject: str, **extra) -> dict:
    answer = requests.post(sandbox + "/_sandbox/deliver", json={
        "to": MAILBOX, "from": "Maria Lopez <maria@customer.example>", "subject": subject,
        "body": f"About {subject}.", **extra}, timeout=5)
    answer.raise_for_status()
    return answer.json()


def fault(sandbox: str, **spec) -> None:
    requests.post(sandbox + "/_sandbox/faults", json=spec, timeout=5).raise_for_status()


def faults_left(sandbox: str) -> list[dict]:
    return requests.get(sandbox + "/_sandbox/faults", timeout=5).json()["faults"]


def sent(sandbox: str) -> list[dict]:
    return requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]


def connected(admin_client, tenant, worker: Worker) -> EmailConnection:
    """Connect the mailbox and wait until its first sync recorded the cursor."""
    assert connect_mailbox(admin_client, tenant, MAILBOX).status_code == 302

    def started():
        with tenant_scope(tenant):
            conn = EmailConnection.objects.get(address=MAILBOX)
        return conn.cursor and conn.last_sync_at

    settle(started, worker, sweeps=False)
    with tenant_scope(tenant):
        return EmailConnection.objects.get(address=MAILBOX)


def ingested(tenant, count: int):
    def check():
        with unscoped():
            return InboundEmail.objects.filter(state="processed").count() >= count
    return check


def assert_exactly_once(tenant, sandbox: str, *, tickets: dict[str, int],
                        replies: list[str] = ()) -> None:
    """Every email delivered to the mailbox is one processed row and one inbound message;
    ``tickets`` maps each ticket's title to its number of inbound messages; each of
    ``replies`` (subjects, before the ticket's ``[#n]`` token goes in) was sent exactly
    once."""
    inbox = [m for m in requests.get(sandbox + "/_sandbox/messages", timeout=5).json()
             ["messages"] if "INBOX" in m["labelIds"]]
    with unscoped():
        rows = list(InboundEmail.objects.values_list("provider_message_id", "state"))
    assert sorted(rows) == sorted((m["id"], "processed") for m in inbox)
    with tenant_scope(tenant):
        got = {t.title: t.messages.filter(kind="inbound").count()
               for t in Ticket.objects.all()}
        assert Ticket.objects.count() == len(tickets)
        assert Message.objects.filter(kind="inbound").count() == len(inbox)
    assert got == tickets
    outgoing = sorted(m["subject"] for m in sent(sandbox))
    with tenant_scope(tenant):
        numbers = {t.title: t.number for t in Ticket.objects.all()}
    expected = [f"Re: [#{numbers[subject.removeprefix('Re: ')]}] "
                f"{subject.removeprefix('Re: ')}" for subject in replies]
    assert outgoing == sorted(expected)


def reply(tenant, title: str, author) -> Message:
    from channels_email.outbound import reply_create

    with tenant_scope(tenant), db_transaction.atomic():
        return reply_create(ticket=Ticket.objects.get(title=title), author=author,
                            body_text="We are on it.")


def delivered(tenant, message: Message):
    def check():
        with tenant_scope(tenant):
            return Message.objects.get(pk=message.pk).delivery_status == "delivered"
    return check


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_worker_killed_after_the_raw_mime_is_stored_and_before_the_commit(
        pushes, admin_client, tenant, worker, pg_proxy):
    connected(admin_client, tenant, worker)
    pg_proxy.hold(after=b'SET "raw" =', on=b"COMMIT")
    deliver(pushes, "Printer on fire")
    assert pg_proxy.held.wait(60), worker.log.read_text()[-4000:]
    worker.kill()
    with unscoped():
        row = InboundEmail.objects.get()
    assert row.state == "received" and row.raw  # stored, never committed past that
    with tenant_scope(tenant):
        assert not Ticket.objects.exists()
    worker.start()  # the row is free again only if PostgreSQL rolled the ingest back
    settle(ingested(tenant, 1), worker)
    assert_exactly_once(tenant, pushes, tickets={"Printer on fire": 1})


def test_redis_restarted_during_a_sync(pushes, admin_client, tenant, worker, own_redis):  # noqa: F811
    connected(admin_client, tenant, worker)
    fault(pushes, kind="slow", count=1, delay=4)  # the next Gmail call: the sync's history
    first = deliver(pushes, "Question 1")
    deliver(pushes, "Question 2")
    settle(lambda: not faults_left(pushes), worker, sweeps=False)  # the sync is waiting
    own_redis.stop()
    time.sleep(1)
    own_redis.start()  # empty: the queue, the sync's lock and the marks are gone
    settle(lambda: "sync.lock_expired" in worker.log.read_text(), worker, sweeps=False)
    deliver(pushes, "Re: Question 1", headers={"In-Reply-To": first["messageId"]})
    deliver(pushes, "Question 3")
    settle(ingested(tenant, 4), worker)
    time.sleep(2)  # any straggling copy of a task
    assert_exactly_once(tenant, pushes, tickets={"Question 1": 2, "Question 2": 1,
                                                 "Question 3": 1})


def pushes_answered(sandbox: str, history_id: str) -> list:
    log = requests.get(sandbox + "/_sandbox/pushes", timeout=5).json()["pushes"]
    return [p["status"] for p in log if p["historyId"] == history_id]


def test_postgres_restarted_while_the_worker_is_idle(
        pushes, admin_client, tenant, worker, pg_proxy, admin_user):
    """PostgreSQL goes away between tasks and mail arrives meanwhile: the webhook (on its
    own database connection) queues the sync, which finds no database; it must come back
    to it by itself, and later pushes must not be swallowed by the pending one."""
    connected(admin_client, tenant, worker)
    deliver(pushes, "Before")
    settle(ingested(tenant, 1), worker, sweeps=False)
    pg_proxy.down()
    during = deliver(pushes, "During")["historyId"]
    settle(lambda: 204 in pushes_answered(pushes, during), worker, sweeps=False)
    time.sleep(2)  # the worker takes the sync and finds no database
    pg_proxy.up()
    deliver(pushes, "After")
    settle(ingested(tenant, 3), worker, sweeps=False)
    message = reply(tenant, "After", admin_user)
    settle(delivered(tenant, message), worker, sweeps=False)
    assert_exactly_once(tenant, pushes, tickets={"Before": 1, "During": 1, "After": 1},
                        replies=["Re: After"])


def test_postgres_restarted_while_the_worker_is_ingesting(
        pushes, admin_client, tenant, worker, pg_proxy):
    connected(admin_client, tenant, worker)
    pg_proxy.hold(after=b'SET "raw" =', on=b"COMMIT")
    for n in range(3):
        deliver(pushes, f"Question {n}")
    assert pg_proxy.held.wait(60), worker.log.read_text()[-4000:]
    pg_proxy.down()  # the worker is inside an ingest transaction
    time.sleep(2)
    pg_proxy.up()
    settle(ingested(tenant, 3), worker)
    time.sleep(2)
    assert_exactly_once(tenant, pushes, tickets={f"Question {n}": 1 for n in range(3)})


def test_postgres_restarted_while_gmail_accepts_a_reply(
        pushes, admin_client, tenant, worker, pg_proxy, admin_user):
    """Gmail has taken the reply, but the database is gone when the worker comes to
    record it: the retried task finds the sent copy by its Message-ID, sends nothing."""
    connected(admin_client, tenant, worker)
    deliver(pushes, "Printer on fire")
    settle(ingested(tenant, 1), worker, sweeps=False)
    fault(pushes, kind="slow_after_send", count=1, delay=3)
    message = reply(tenant, "Printer on fire", admin_user)
    settle(lambda: len(sent(pushes)) == 1, worker, sweeps=False)  # stored; answer held
    pg_proxy.down()
    time.sleep(4)  # the answer arrives; the worker finds no database to record it in
    pg_proxy.up()
    settle(delivered(tenant, message), worker, sweeps=False)
    assert_exactly_once(tenant, pushes, tickets={"Printer on fire": 1},
                        replies=["Re: Printer on fire"])


def test_a_burst_of_429s_with_retry_after(pushes, admin_client, tenant, worker, admin_user):
    connected(admin_client, tenant, worker)
    first = deliver(pushes, "Printer on fire")
    settle(ingested(tenant, 1), worker, sweeps=False)
    fault(pushes, kind="too_many_requests", count=6, retry_after=1)
    message = reply(tenant, "Printer on fire", admin_user)
    deliver(pushes, "Re: Printer on fire", headers={"In-Reply-To": first["messageId"]})
    deliver(pushes, "Scanner too")
    settle(lambda: ingested(tenant, 3)() and delivered(tenant, message)(), worker)
    assert not faults_left(pushes)  # every 429 was met, and waited out
    time.sleep(2)
    assert_exactly_once(tenant, pushes, tickets={"Printer on fire": 2, "Scanner too": 1},
                        replies=["Re: Printer on fire"])
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get()
    assert conn.last_error.startswith("RateLimited")  # it was Rate Limited, and is
    assert (conn.status, conn.consecutive_errors) == ("active", 0)  # Active again


def test_a_storm_of_server_errors(pushes, admin_client, tenant, worker, admin_user):
    connected(admin_client, tenant, worker)
    first = deliver(pushes, "Printer on fire")
    settle(ingested(tenant, 1), worker, sweeps=False)
    for status in (500, 502, 503, 504):
        fault(pushes, kind="server_error", status=status, probability=0.6)
    message = reply(tenant, "Printer on fire", admin_user)
    deliver(pushes, "Re: Printer on fire", headers={"In-Reply-To": first["messageId"]})
    for n in range(3):
        deliver(pushes, f"Question {n}")
    time.sleep(4)  # the storm rages
    requests.post(pushes + "/_sandbox/faults/clear", json={}, timeout=5).raise_for_status()
    settle(lambda: ingested(tenant, 5)() and delivered(tenant, message)(), worker)
    time.sleep(2)
    assert_exactly_once(tenant, pushes, tickets={"Printer on fire": 2,
                                                 **{f"Question {n}": 1 for n in range(3)}},
                        replies=["Re: Printer on fire"])
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get()
    assert conn.last_error_at is not None  # the storm reached us
    assert (conn.status, conn.consecutive_errors) == ("active", 0)


def test_a_push_while_redis_is_down_is_answered_503_and_its_retry_succeeds(
        pushes, admin_client, tenant, worker, own_redis):  # noqa: F811
    from channels_email import webhooks

    connected(admin_client, tenant, worker)
    webhooks._LOCAL.clear()  # a cold cache: the lookup itself needs Redis
    own_redis.stop()
    announced = deliver(pushes, "While Redis was down")["historyId"]

    def answers():
        return pushes_answered(pushes, announced)

    settle(lambda: answers().count(503) >= 2, worker, sweeps=False)  # refused, retried
    with unscoped():
        assert not InboundEmail.objects.exists()
    own_redis.start()
    settle(ingested(tenant, 1), worker, sweeps=False)  # the retried push, no sweep
    assert answers()[-1] == 204 and set(answers()) == {503, 204}
    assert_exactly_once(tenant, pushes, tickets={"While Redis was down": 1})
