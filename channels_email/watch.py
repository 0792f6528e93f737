"""The mailbox watcher (``manage.py mailbox_watch``): push for providers that have no
webhooks, by holding one long-lived connection per mailbox (IMAP IDLE, RFC 2177).

Contract:
- A watcher process serves one shard (``--shard i/n``): the connected mailboxes whose
  provider has ``Capability.IDLE`` and whose id hashes to ``i`` (``shard_of``: a stable
  hash, so every process agrees without talking to the others, and adding a process only
  moves the mailboxes of the shards that change).
- Each mailbox gets one thread holding one IDLE session. When the server announces mail
  (EXISTS), the thread queues the same coalesced sync as a webhook does
  (``sync.sync_request(id, "push")``); it also queues one each time its session
  (re)starts, so mail that arrived while nobody listened is fetched then. The sync itself
  runs in a Celery worker, from the stored cursor: the watcher holds no state, and a
  watcher killed at any moment loses nothing (the next one, or beat's reconciliation
  sweep, syncs from the cursor).
- A dropped connection is retried with backoff; a refused password is recorded on the
  connection's health (Sign-in failed) and the mailbox is left alone until it is Active
  again. The list of mailboxes is re-read every ``reload_seconds``: new ones are watched,
  removed, disconnected or failed ones let go, changed settings restart their session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

from django import db

from channels_email import health, providers
from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.providers.base import Capability
from helpdesk.tenancy import tenant_scope, unscoped

logger = logging.getLogger(__name__)

WAIT_SLICE_SECONDS = 1.0  # how often a thread looks at its stop flag while idling
RECHECK_SECONDS = 30.0  # how often a held session re-reads its connection's state


def shard_of(connection_id: int, shards: int) -> int:
    digest = hashlib.sha256(str(connection_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(shards, 1)


def _fingerprint(conn: EmailConnection) -> str:
    """Changes when the session must be opened anew (new password, other folder)."""
    return hashlib.sha256(json.dumps(conn.credentials or {}, sort_keys=True).encode()
                          ).hexdigest()


def watched_connections(shard: int, shards: int) -> dict[int, str]:
    """id -> settings fingerprint of the mailboxes this shard watches."""
    names = providers.names_with(Capability.IDLE)
    # Unscoped: the watcher serves every tenant; each session runs in its tenant's scope.
    with unscoped():
        rows = list(EmailConnection.objects.filter(
            provider__in=names,
            status__in=[ConnectionStatus.ACTIVE, ConnectionStatus.RATE_LIMITED]))
    return {c.pk: _fingerprint(c) for c in rows if shard_of(c.pk, shards) == shard}


class MailboxThread(threading.Thread):
    def __init__(self, connection_id: int, *, on_push):
        super().__init__(name=f"watch-{connection_id}", daemon=True)
        self.connection_id = connection_id
        self.on_push = on_push
        self.stopping = threading.Event()
        self.session = None
        self.failures = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self._run()
        finally:
            db.connection.close()  # this thread's own database connection

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                done = self._watch_once()
            except Exception:  # noqa: BLE001 - a bug must not end the watcher's other threads
                logger.exception("watch.crashed connection=%s", self.connection_id)
                done = False
            if done:
                return
            self.failures += 1
            self.stopping.wait(health.backoff_seconds(self.failures, base=1, cap=60))

    def _watch_once(self) -> bool:
        """One session; True when this mailbox is not to be watched any more."""
        with unscoped():
            conn = (EmailConnection.objects.select_related("tenant")
                    .filter(pk=self.connection_id).first())
        if conn is None or conn.status in (ConnectionStatus.DISCONNECTED,
                                           ConnectionStatus.TOKEN_EXPIRED):
            return True
        if not health.may_call(conn):
            self.stopping.wait(min(health.wait_seconds(conn), 60))
            return False
        with tenant_scope(conn.tenant):
            try:
                self.session = providers.get(conn.provider).idle_open(conn)
            except providers.AuthError as exc:
                health.record_error(conn, exc)  # Sign-in failed: wait for the admin
                logger.warning("watch.sign_in_failed connection=%s", conn.pk)
                return True
            except providers.ProviderError as exc:
                logger.warning("watch.connect_failed connection=%s error=%s", conn.pk,
                               health.redact(str(exc)))
                return False
        try:
            logger.info("watch.idle connection=%s", conn.pk)
            self.failures = 0
            self.on_push(conn.pk, "idle")  # catch up on what came while nobody listened
            checked = time.monotonic()
            while not self.stopping.is_set():
                if self.session.wait(WAIT_SLICE_SECONDS):
                    logger.info("watch.exists connection=%s", conn.pk)
                    self.on_push(conn.pk, "push")
                if time.monotonic() - checked > RECHECK_SECONDS:
                    # A skip time or cool-off began, or the mailbox was disconnected: let
                    # the connection go until it may be called again.
                    checked = time.monotonic()
                    conn.refresh_from_db(fields=["status", "consecutive_errors",
                                                 "last_error_at", "rate_limited_until",
                                                 "credentials"])
                    if not health.may_call(conn):
                        logger.info("watch.paused connection=%s", conn.pk)
                        return False
        except providers.ProviderError as exc:
            logger.warning("watch.dropped connection=%s error=%s", conn.pk,
                           health.redact(str(exc)))
            return False
        finally:
            self.session.close()
            self.session = None
        return True


def queue_sync(connection_id: int, trigger: str) -> None:
    from channels_email.sync import sync_request

    try:
        sync_request(connection_id, "push" if trigger == "push" else "watch")
    except Exception as exc:  # noqa: BLE001 - the broker is down: beat's sweep catches up
        logger.warning("watch.enqueue_failed connection=%s error=%s", connection_id,
                       type(exc).__name__)


class MailboxWatcher:
    """Keeps one ``MailboxThread`` per mailbox of the shard, re-reading the list every
    ``reload_seconds``, until ``stop()``."""

    def __init__(self, *, shard: int = 0, shards: int = 1, reload_seconds: float = 10.0,
                 on_push=queue_sync):
        self.shard, self.shards = shard, shards
        self.reload_seconds = reload_seconds
        self.on_push = on_push
        self.threads: dict[int, tuple[str, MailboxThread]] = {}
        self.stopping = threading.Event()

    def reconcile(self) -> None:
        wanted = watched_connections(self.shard, self.shards)
        for pk, (fingerprint, thread) in list(self.threads.items()):
            if wanted.get(pk) != fingerprint or not thread.is_alive():
                thread.stop()
                del self.threads[pk]
        for pk, fingerprint in wanted.items():
            if pk not in self.threads:
                thread = MailboxThread(pk, on_push=self.on_push)
                self.threads[pk] = (fingerprint, thread)
                thread.start()

    def run(self) -> None:
        logger.info("watch.start shard=%s/%s", self.shard, self.shards)
        while not self.stopping.is_set():
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - database down: try again at the next round
                logger.exception("watch.reload_failed")
            self.stopping.wait(self.reload_seconds)
        for _, thread in self.threads.values():
            thread.stop()
        for _, thread in self.threads.values():
            thread.join(timeout=WAIT_SLICE_SECONDS * 3)
        logger.info("watch.stop shard=%s/%s", self.shard, self.shards)

    def stop(self) -> None:
        self.stopping.set()
