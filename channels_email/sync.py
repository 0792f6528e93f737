"""Mailbox sync: from the stored cursor to InboundEmail rows, exactly once per message.

Contract of ``connection_sync(connection_id)``:
- Runs under a per-connection lock in Redis; a second sync of the same connection while
  one runs is deferred (``SyncBusy``), and the push coalescing mark is cleared when a sync
  starts, so a push arriving during a running sync queues exactly one more.
- Never calls the provider for a connection that health says must wait (Rate Limited,
  Token Expired, Disconnected).
- Walks the provider's changes from ``connection.cursor`` page by page; then, in one
  transaction, inserts the new rows (the unique (connection, provider message id) makes a
  duplicate push or an overlapping sync harmless) and advances the cursor. The ingest
  tasks are enqueued after the commit.
- A cursor the provider no longer has (``CursorExpired``) falls back to a bounded full
  sync: every inbox message since the last successful sync (minus a margin), never
  before the connection's ``sync_start_at``; the new cursor is read before listing, so
  nothing that arrives meanwhile is skipped.
- A first sync with no cursor only records the mailbox's current cursor: mail already in
  the inbox when the mailbox was connected is not imported.
- Each provider call runs with a fresh token and survives one refused access token
  (``tokens.authorized``). Provider errors are reported to ``health`` and re-raised for
  the task to retry (an auth failure has made the connection Token Expired by then).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from django.db import connection as db_connection
from django.db import transaction
from django.utils import timezone

from channels_email import health, providers
from channels_email.models import ConnectionStatus, EmailConnection, InboundEmail, InboundState
from channels_email.providers.base import MessageRef
from channels_email.tokens import AuthorizedProvider, authorized
from helpdesk import sql
from helpdesk.coordination import redis_client, redis_key
from helpdesk.tenancy import tenant_scope, unscoped

logger = logging.getLogger(__name__)

FULL_SYNC_MARGIN = timedelta(hours=1)
LOCK_SECONDS = 300
MAX_PAGES = 200
PENDING_SECONDS = 600  # a lost task blocks the pushes of its mailbox at most this long


class SyncBusy(Exception):  # noqa: N818 - a signal to the task
    """Another worker is syncing this connection."""


@dataclass
class SyncResult:
    state: str  # synced | skipped | started
    new_rows: list[int] = field(default_factory=list)
    cursor: str = ""
    full_sync: bool = False
    reason: str = ""


def push_mark(connection_id: int) -> bool:
    """Mark a sync as wanted; True when no sync was already pending (the caller enqueues
    one). The mark expires by itself so a lost task cannot block pushes for long."""
    return bool(redis_client().set(redis_key("sync-pending", connection_id), "1", nx=True,
                                   ex=PENDING_SECONDS))


def push_unmark(connection_id: int) -> None:
    redis_client().delete(redis_key("sync-pending", connection_id))


def sync_request(connection_id: int, trigger: str = "push") -> bool:
    """Queue one sync of the connection unless one is pending already (coalescing);
    True when a task was queued. If the task cannot be queued the mark is taken back and
    the error raised, so the caller can answer "try again"."""
    return bool(sync_request_many((connection_id,), trigger))


def sync_request_many(connection_ids: Iterable[int], trigger: str = "push") -> list[int]:
    """``sync_request`` for several connections at once: their marks are set in one Redis
    round trip, then one sync is queued for each connection that had none pending; the
    ids queued are returned. If a task cannot be queued, the marks of that connection
    and of those not queued yet are taken back and the error raised (the ones queued
    before stay queued)."""
    from channels_email.tasks import sync_connection

    ids = list(dict.fromkeys(connection_ids))
    if not ids:
        return []
    pipe = redis_client().pipeline(transaction=False)
    for connection_id in ids:
        pipe.set(redis_key("sync-pending", connection_id), "1", nx=True, ex=PENDING_SECONDS)
    marked = [cid for cid, fresh in zip(ids, pipe.execute(), strict=True) if fresh]
    queued: list[int] = []
    try:
        with sync_connection.app.producer_or_acquire() as producer:  # one for the batch
            for connection_id in marked:
                sync_connection.apply_async(
                    kwargs={"connection_id": connection_id, "trigger": trigger},
                    producer=producer)
                queued.append(connection_id)
    except Exception:
        unsent = marked[len(queued):]
        if unsent:
            redis_client().delete(*(redis_key("sync-pending", cid) for cid in unsent))
        raise
    return queued


def connection_sync(connection_id: int, trigger: str = "push") -> SyncResult:
    with unscoped():  # the id names the connection; everything after runs in its tenant
        conn = (EmailConnection.objects.select_related("tenant")
                .filter(pk=connection_id).first())
    if conn is None or conn.status == ConnectionStatus.DISCONNECTED:
        push_unmark(connection_id)
        return SyncResult(state="skipped", reason="no such connection or disconnected")
    lock = redis_client().lock(redis_key("sync-lock", connection_id), timeout=LOCK_SECONDS,
                               blocking=False)
    if not lock.acquire():
        raise SyncBusy(f"connection {connection_id} is being synced")
    try:
        push_unmark(connection_id)  # from here on, a new push queues one more sync
        with tenant_scope(conn.tenant):
            return _sync(conn, trigger)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            logger.warning("sync.lock_expired connection=%s", connection_id)


def _sync(conn: EmailConnection, trigger: str) -> SyncResult:
    if not health.may_call(conn):
        return SyncResult(state="skipped", reason=f"connection is {conn.status}")
    provider = authorized(conn)
    try:
        if not conn.cursor:
            cursor = provider.current_cursor()
            EmailConnection.objects.filter(pk=conn.pk).update(cursor=cursor)
            health.record_success(conn, synced=True)
            return SyncResult(state="started", cursor=cursor)
        full_sync = False
        try:
            refs, cursor = _changes(provider, conn)
        except providers.CursorExpired:
            full_sync = True
            refs, cursor = _full_sync(provider, conn)
    except providers.ProviderError as exc:
        health.record_error(conn, exc)
        raise
    new_rows = _store(conn, refs, cursor, trigger)
    health.record_success(conn, synced=True)
    logger.info("sync.done connection=%s new=%s full=%s", conn.pk, len(new_rows), full_sync)
    return SyncResult(state="synced", new_rows=new_rows, cursor=cursor, full_sync=full_sync)


def _changes(provider: AuthorizedProvider, conn: EmailConnection) -> tuple[list[MessageRef], str]:
    refs: list[MessageRef] = []
    page, cursor = "", conn.cursor
    for _ in range(MAX_PAGES):
        result = provider.changes_since(conn.cursor, page)
        refs.extend(result.messages)
        cursor = result.cursor or cursor
        if not result.next_page:
            break
        page = result.next_page
    return refs, cursor


def _full_sync(provider: AuthorizedProvider, conn: EmailConnection) -> tuple[list[MessageRef], str]:
    cursor = provider.current_cursor()  # before listing: later mail comes next time
    since = max((conn.last_sync_at or conn.sync_start_at) - FULL_SYNC_MARGIN,
                conn.sync_start_at)
    refs: list[MessageRef] = []
    page = ""
    for _ in range(MAX_PAGES):
        result = provider.list_since(since, page)
        refs.extend(result.messages)
        if not result.next_page:
            break
        page = result.next_page
    logger.warning("sync.full connection=%s since=%s found=%s", conn.pk, since.isoformat(),
                   len(refs))
    return refs, cursor


def _store(conn: EmailConnection, refs: list[MessageRef], cursor: str,
           trigger: str = "push") -> list[int]:
    """Insert the rows and advance the cursor in one transaction; enqueue ingest after.

    Returns (and queues) every listed row still waiting to be ingested, new or not. Only
    rows this sync created count as mail the reconciliation sweep found without a push."""
    unique = _not_seen(conn, list({ref.provider_message_id: ref for ref in refs}.values()))
    ids: list[int] = []
    created: list[int] = []
    with transaction.atomic():
        if unique:
            created = _insert_new([
                InboundEmail(tenant_id=conn.tenant_id, connection=conn,
                             provider_message_id=ref.provider_message_id[:255],
                             provider_thread_id=ref.provider_thread_id[:255],
                             details={"dedupe_key": ref.dedupe_key} if ref.dedupe_key else {})
                for ref in unique
            ])
            ids = list(InboundEmail.objects.filter(
                connection=conn, state=InboundState.RECEIVED,
                provider_message_id__in=[r.provider_message_id[:255] for r in unique],
            ).values_list("pk", flat=True))
        now = timezone.now()
        fields = {"cursor": cursor, "updated_at": now}
        if trigger == "push":
            fields["last_push_at"] = now
        elif trigger == "reconcile" and created:
            fields["missed_push_at"] = now  # the sweep found mail no push announced
        EmailConnection.objects.filter(pk=conn.pk).update(**fields)
        transaction.on_commit(lambda: _enqueue(ids))
    return ids


def _not_seen(conn: EmailConnection, refs: list[MessageRef]) -> list[MessageRef]:
    """``refs`` less those whose ``dedupe_key`` a row of ``conn`` has already: the same
    mail under new provider ids (an IMAP folder whose UIDVALIDITY changed)."""
    keys = {ref.dedupe_key for ref in refs if ref.dedupe_key}
    if not keys:
        return refs
    seen = set(InboundEmail.objects.filter(connection=conn, details__dedupe_key__in=keys)
               .values_list("details__dedupe_key", flat=True))
    if seen:
        logger.info("sync.known_elsewhere connection=%s count=%s", conn.pk, len(seen))
    return [ref for ref in refs if not ref.dedupe_key or ref.dedupe_key not in seen]


def _insert_new(rows: list[InboundEmail]) -> list[int]:
    """One INSERT of ``rows`` (each as ``inbound_email_receive`` would write it, without
    raw bytes: ingest fetches them); the ids of those that were not there already."""
    parts = [sql.insert_parts(row) for row in rows]
    values = ", ".join(f"({placeholders})" for _, placeholders, _ in parts)
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {InboundEmail._meta.db_table} ({parts[0][0]}) "  # noqa: S608
            f"VALUES {values} ON CONFLICT (connection_id, provider_message_id) DO NOTHING "
            "RETURNING id", [value for _, _, params in parts for value in params])
        return [pk for (pk,) in cursor.fetchall()]


def _enqueue(ids: list[int]) -> None:
    from channels_email.tasks import process_inbound_email

    for pk in ids:
        process_inbound_email.delay(inbound_email_id=pk)
