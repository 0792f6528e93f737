"""The inbound pipeline: one stored InboundEmail -> a threaded, routed ticket, exactly once.

Contract of ``inbound_email_ingest(inbound_email_id=...)``:
- Safe to call any number of times, concurrently too: a row that is no longer
  ``received`` is left alone; the final state change is guarded (``WHERE state =
  received``), so of two workers racing on one row only one commits.
- Runs in the row's tenant scope. Provider-agnostic: the only provider fact it uses is
  the provider thread id stored on the row.
- Parsing happens outside the transaction (it is pure). Filters that need no database run
  next. Then one transaction: advisory locks on every thread key of the message (its own
  Message-ID, In-Reply-To, References, the provider thread; the contact upsert rides in
  the same statement when no filter can refuse the sender), thread lookup, duplicate
  check, contact, ticket or reply, thread references, attachments, routing, and the
  guarded state change. Two emails of one thread therefore serialise on a shared key and
  end in one ticket, whichever commits first; the same email reaching two connections, or
  arriving under several provider ids, becomes one message (the duplicates are skipped
  with a reason pointing at it).
- Never loses an email: quarantine, skip and failure all leave the row with a reason and
  the raw bytes. Transient database errors propagate (the Celery task retries them);
  anything else marks the row failed with the error and re-raises nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F

from channels_email import filters
from channels_email.mime import DEFAULT_LIMITS, ParsedEmail, ParseLimits, parse_email
from channels_email.models import (
    BodyPreference,
    EmailConnection,
    EmailThreadRef,
    InboundEmail,
    InboundState,
    RoutingMode,
)
from channels_email.outbound import acknowledgement_create, report_record
from channels_email.providers.forwarding.confirmation import forwarding_confirmation
from channels_email.services import raw_store
from contacts.models import ContactSource
from contacts.services import contact_get_or_create, contact_upsert_run, contact_upsert_sql
from helpdesk import sql, webhooks_out
from helpdesk.models import Tenant
from helpdesk.patterns import pattern_budget
from helpdesk.tenancy import tenant_scope
from routing.engine import RoutingFacts, decide_routing, ticket_fields
from routing.models import Flow, Team
from tickets.models import Message, MessageKind, SourceChannel, Ticket
from tickets.services import (
    attachments_add,
    ticket_create,
    ticket_touch_for_inbound,
)

logger = logging.getLogger(__name__)

# What the row's receiver wrote into ``details`` that a parse keeps: the sync's duplicate
# key, and the SMTP envelope and forwarder's Authentication-Results of forwarded mail.
KEPT_DETAILS = ("dedupe_key", "envelope")
FINAL_STATES = (InboundState.PROCESSED, InboundState.SKIPPED, InboundState.QUARANTINED)
DISCONNECTED_REASON = ("connection_disconnected: the mailbox was disconnected before this "
                       "mail was read")
TICKET_TOKEN = re.compile(r"\[#(\d{1,12})\]")
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


@dataclass
class IngestOutcome:
    state: str
    reason: str = ""
    ticket_id: int | None = None
    ticket_number: int | None = None
    created_ticket: bool = False
    message_pk: int | None = None
    parsed: ParsedEmail | None = field(default=None, repr=False)


class _LostRace(Exception):
    """Another worker finished this row first; roll back and report its state."""


def thread_lock_key(tenant_id: int, key: str) -> int:
    digest = hashlib.blake2b(f"{tenant_id}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_LOAD_MODELS = (
    # (model, alias, join) - the row, and everything ingest reads through it
    (InboundEmail, "i", ""),
    (EmailConnection, "c", "JOIN {table} c ON c.id = i.connection_id"),
    (Tenant, "t", "JOIN {table} t ON t.id = i.tenant_id"),
    (Team, "rt", "LEFT JOIN {table} rt ON rt.id = c.routing_team_id"),
    (Flow, "rf", "LEFT JOIN {table} rf ON rf.id = c.routing_flow_id"),
)


@functools.cache
def _load_sql() -> str:
    selected, joins = [], []
    for model, alias, join in _LOAD_MODELS:
        selected.append(sql.columns(model, alias))
        if join:
            joins.append(join.format(table=model._meta.db_table))
    connections_table = EmailConnection._meta.db_table
    # Every connected and alias address of the row's tenant: the loop filter's list.
    addresses = (
        f"ARRAY(SELECT lower(a.address) FROM {connections_table} a "  # noqa: S608
        "WHERE a.tenant_id = i.tenant_id UNION "
        f"SELECT lower(unnest(a.alias_addresses)) FROM {connections_table} a "
        "WHERE a.tenant_id = i.tenant_id UNION "
        f"SELECT a.inbound_address FROM {connections_table} a "
        "WHERE a.tenant_id = i.tenant_id AND a.inbound_address <> '')"
    )
    return (f"SELECT {', '.join(selected)}, {addresses} "  # noqa: S608 - our own table names
            f"FROM {InboundEmail._meta.db_table} i {' '.join(joins)} WHERE i.id = %s")


def _load(inbound_email_id: int) -> InboundEmail | None:
    """The row with its connection, tenant and routing targets, and the tenant's addresses
    (``row.tenant_addresses``), in one statement. Hand-written because this runs once per
    email and the ORM spends longer building the equivalent query than the database
    spends running it."""
    with connection.cursor() as cursor:
        cursor.execute(_load_sql(), [inbound_email_id])
        record = cursor.fetchone()
    if record is None:
        return None
    objects, position = {}, 0
    for model, _alias, _join in _LOAD_MODELS:
        values = record[position:position + sql.width(model)]
        position += sql.width(model)
        # A missing routing team / flow comes back as a row of NULLs.
        objects[model] = None if values[0] is None else sql.instance(model, values)
    row, conn, tenant = objects[InboundEmail], objects[EmailConnection], objects[Tenant]
    for model, name in ((Team, "routing_team"), (Flow, "routing_flow")):
        if objects[model] is not None:
            setattr(conn, name, objects[model])
    conn.tenant = tenant
    row.connection, row.tenant = conn, tenant
    row.tenant_addresses = set(record[position] or ())
    return row


def inbound_email_ingest(*, inbound_email_id: int,
                         limits: ParseLimits = DEFAULT_LIMITS) -> IngestOutcome:
    # Unscoped: the row names its tenant; everything after runs inside that scope.
    row = _load(inbound_email_id)
    if row is None:
        return IngestOutcome(state="missing", reason="no such inbound email")
    if row.state in FINAL_STATES:
        return IngestOutcome(state=row.state, reason=row.reason, ticket_id=row.ticket_id,
                             message_pk=row.message_id)
    with tenant_scope(row.tenant), pattern_budget():
        try:
            return _ingest(row, limits)
        except (FetchDeferred, *TRANSIENT_DB_ERRORS):
            raise
        except DatabaseError as exc:
            return _mark_failed(row, exc)
        except Exception as exc:  # noqa: BLE001 - recorded on the row, never swallowed
            logger.exception("ingest.failed inbound_email=%s", row.pk)
            return _mark_failed(row, exc)


def inbound_email_reprocess(*, inbound_email: InboundEmail, actor) -> IngestOutcome | None:
    """Put a quarantined, failed or skipped email back to received (audited, see
    ``services.inbound_email_reset_for_reprocess``) and ingest it again now; None when it
    is processed already (nothing to redo). The page, the API and the command call it."""
    from channels_email.services import inbound_email_reset_for_reprocess

    if not inbound_email_reset_for_reprocess(inbound_email=inbound_email, actor=actor):
        return None
    return inbound_email_ingest(inbound_email_id=inbound_email.pk)


def _mark_failed(row: InboundEmail, exc: BaseException) -> IngestOutcome:
    reason = f"error: {type(exc).__name__}: {str(exc)[:500]}"
    InboundEmail.objects.filter(pk=row.pk, state=InboundState.RECEIVED).update(
        state=InboundState.FAILED, reason=reason, attempts=F("attempts") + 1,
    )
    return IngestOutcome(state=InboundState.FAILED, reason=reason)


class FetchDeferred(Exception):  # noqa: N818 - a signal to the task, not a failure
    """The provider cannot be asked now (rate limited, transient error, token to
    refresh): the row stays ``received``; the task retries after ``wait`` seconds and the
    redrive sweep is the safety net."""

    def __init__(self, reason: str, wait: float):
        super().__init__(reason)
        self.wait = wait


def _fetch_raw(row: InboundEmail, conn: EmailConnection
               ) -> tuple[bytes | None, IngestOutcome | None]:
    """DESIGN section 4 step 1: fetch the raw MIME from the provider and store it (one
    UPDATE), outside any transaction. Returns (raw, None), or (None, outcome) when the row
    reached a final state, and raises FetchDeferred when it should be tried later."""
    from channels_email import health, providers
    from channels_email.tokens import authorized

    try:
        provider = authorized(conn)
    except KeyError:
        reason = "raw MIME is not stored and this connection cannot fetch it"
        _finish(row, InboundState.FAILED, reason)
        return None, IngestOutcome(state=InboundState.FAILED, reason=reason)
    if conn.status == "disconnected":
        reason = DISCONNECTED_REASON
        _finish(row, InboundState.SKIPPED, reason)
        return None, IngestOutcome(state=InboundState.SKIPPED, reason=reason)
    if not health.may_call(conn):
        raise FetchDeferred(f"connection is {conn.status}", max(health.wait_seconds(conn), 60))
    try:
        raw = provider.fetch_raw(row.provider_message_id)
    except providers.PermanentError as exc:
        health.record_error(conn, exc)
        reason = f"gone: the provider no longer has this message ({exc.reason or exc})"
        _finish(row, InboundState.SKIPPED, reason)
        return None, IngestOutcome(state=InboundState.SKIPPED, reason=reason)
    except providers.ProviderError as exc:
        health.record_error(conn, exc)
        wait = getattr(exc, "retry_after", None) or health.wait_seconds(conn) or 30
        raise FetchDeferred(f"{type(exc).__name__}: {exc}", wait) from exc
    health.record_success(conn)
    raw_store(row, raw)
    # Autocommitted, without waiting for the WAL flush (the provider keeps the message,
    # and the ingest's commit below flushes this first: see inbound_email_receive); in a
    # caller's transaction (a test), that transaction's commit decides.
    returning = "" if connection.in_atomic_block else f" RETURNING {sql.NO_FLUSH_WAIT}"
    with connection.cursor() as cursor:
        cursor.execute(f'UPDATE {InboundEmail._meta.db_table} SET "raw" = %s, '  # noqa: S608
                       f'"raw_size" = %s WHERE id = %s{returning}',
                       [row.raw.name, row.raw_size, row.pk])
    return raw, None


def _read_raw(row: InboundEmail) -> bytes | None:
    if not row.raw:
        return None
    with row.raw.open("rb") as handle:
        return handle.read()


def _finish(row: InboundEmail, state: str, reason: str = "", head: dict | None = None, *,
            ticket_id: int | None = None, message_pk: int | None = None) -> bool:
    """Guarded final state change; False when another worker got there first. ``head``
    holds what parsing learnt (Message-ID, subject, sender, details)."""
    table = InboundEmail._meta.db_table  # our own table name, never input
    sets = ["state = %s", "reason = %s", "processed_at = now()", "attempts = attempts + 1",
            "ticket_id = COALESCE(%s, ticket_id)", "message_id = COALESCE(%s, message_id)"]
    params: list = [state, reason[:2000], ticket_id, message_pk]
    if head is not None:
        sets += ["message_id_header = %s", "subject = %s", "from_address = %s",
                 "details = %s::jsonb"]
        params += [head["message_id_header"], head["subject"], head["from_address"],
                   json.dumps(head["details"], default=str)]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {', '.join(sets)} "  # noqa: S608
                       "WHERE id = %s AND state = %s", [*params, row.pk, InboundState.RECEIVED])
        return cursor.rowcount == 1


def _summary(parsed: ParsedEmail) -> dict:
    details = {
        "dmarc": parsed.dmarc,
        "importance": parsed.importance,
        "is_auto_reply": parsed.is_auto_reply,
        "defects": parsed.defects[:20],
    }
    reply_to = [a.email for a in parsed.reply_to if a.email][:10]
    if reply_to:
        details["reply_to"] = reply_to  # replies go here (the composer's To)
    if parsed.bounce is not None:
        details["bounce"] = {
            "original_message_id": parsed.bounce.original_message_id,
            "recipients": [r.__dict__ for r in parsed.bounce.recipients[:20]],
        }
    if parsed.complaint is not None:
        details["complaint"] = {"feedback_type": parsed.complaint.feedback_type,
                                "recipients": parsed.complaint.recipients}
    confirmation = forwarding_confirmation(
        sender=parsed.from_.email if parsed.from_ else "", subject=parsed.subject,
        text=parsed.text)
    if confirmation is not None:
        details["forwarding_confirmation"] = confirmation.__dict__
    return details


def _ingest(row: InboundEmail, limits: ParseLimits) -> IngestOutcome:
    conn = row.connection
    raw = _read_raw(row)
    if raw is None:
        raw, outcome = _fetch_raw(row, conn)
        if outcome is not None:
            return outcome

    parsed = parse_email(raw, limits)
    head = {
        "message_id_header": parsed.message_id[:998],
        "subject": parsed.subject[:998],
        "from_address": (parsed.from_.email if parsed.from_ else "")[:320],
        # The sync's duplicate key (sync._not_seen) outlives the parse.
        # and so does what the receiver recorded (the SMTP envelope of forwarded mail).
        "details": {**{k: v for k, v in (row.details or {}).items() if k in KEPT_DETAILS},
                    **_summary(parsed)},
    }
    if parsed.quarantine_reason:
        _finish(row, InboundState.QUARANTINED, parsed.quarantine_reason, head)
        return IngestOutcome(state=InboundState.QUARANTINED, reason=parsed.quarantine_reason,
                             parsed=parsed)
    if conn.status == "disconnected":
        reason = DISCONNECTED_REASON
        _finish(row, InboundState.SKIPPED, reason, head)
        return IngestOutcome(state=InboundState.SKIPPED, reason=reason, parsed=parsed)

    skip = filters.prefilter(parsed=parsed, connection=conn,
                             tenant_addresses=row.tenant_addresses,
                             inbound_id=row.pk, received_at=row.received_at)
    if skip is not None:
        reason = f"{skip.code}: {skip.reason}"
        linked: dict = {}
        with transaction.atomic():
            if skip.code in ("bounce", "complaint"):
                marked = report_record(tenant=row.tenant, parsed=parsed, inbound_email=row)
                head["details"][skip.code]["outbound_messages"] = marked
                if marked:
                    # The report stays linked to (the first of) the messages it is about.
                    linked = dict(Message.objects.filter(pk=marked[0]).values(
                        "ticket_id", message_pk=F("id")).get())
            if not _finish(row, InboundState.SKIPPED, reason, head, **linked):
                raise _LostRace
        return IngestOutcome(state=InboundState.SKIPPED, reason=reason, parsed=parsed)

    try:
        with transaction.atomic():
            return _thread_and_store(row, conn, parsed, head)
    except _LostRace:
        row.refresh_from_db()
        return IngestOutcome(state=row.state, reason=row.reason, ticket_id=row.ticket_id,
                             message_pk=row.message_id, parsed=parsed)


# The references among a message's ids, and its provider thread's earlier mail (the
# tenant, ids, connection, provider thread id, the row's own id). Prepared after a few runs:
# its generic plan must look the ids up (see migration channels_email/0010).
THREAD_LOOKUP_SQL = (
    "SELECT r.message_id_header, r.ticket_id, r.message_id IS NOT NULL, "
    "       t.merged_into_id "
    "FROM channels_email_emailthreadref r "
    "JOIN tickets_ticket t ON t.id = r.ticket_id "
    "WHERE r.tenant_id = %s AND r.message_id_header = ANY(%s) "
    "UNION ALL "
    "SELECT '', i.ticket_id, false, t.merged_into_id "
    "FROM channels_email_inboundemail i JOIN tickets_ticket t ON t.id = i.ticket_id "
    "WHERE i.connection_id = %s AND i.provider_thread_id = %s "
    "  AND i.provider_thread_id <> '' AND i.id <> %s "
    "LIMIT 200"
)


def _find_thread(row: InboundEmail, parsed: ParsedEmail) -> tuple[int | None, bool, str]:
    """(ticket id, is duplicate of an ingested message, how it was found).

    Order (DESIGN section 4): the message's own id (a reply to it arrived first, or it is
    a duplicate), In-Reply-To, then References newest first, against EmailThreadRef; then
    the provider thread id on the same connection.
    """
    own = parsed.message_id
    candidates = [own, *parsed.thread_ids]
    with connection.cursor() as cursor:
        # Raw SQL on the hot path: one statement for refs and provider thread; the tenant
        # and connection are bound explicitly.
        cursor.execute(
            THREAD_LOOKUP_SQL,
            [row.tenant_id, candidates, row.connection_id, row.provider_thread_id, row.pk],
        )
        hits = cursor.fetchall()
    by_id = {mid: (ticket, has_msg, merged) for mid, ticket, has_msg, merged in hits if mid}
    if own in by_id:
        ticket, has_message, merged = by_id[own]
        return merged or ticket, has_message, "message-id"
    for mid in parsed.thread_ids:
        if mid in by_id:
            ticket, _, merged = by_id[mid]
            return merged or ticket, False, "in-reply-to" if mid in parsed.in_reply_to \
                else "references"
    for mid, ticket, _, merged in hits:
        if not mid:
            return merged or ticket, False, "provider-thread"
    return None, False, ""


def _ticket_by_token(row: InboundEmail, parsed: ParsedEmail) -> Ticket | None:
    """A ``[#123]`` token in the subject, honoured only for a participant of that ticket
    (its contact or a CC), so nobody can append to a stranger's ticket by its number."""
    match = TICKET_TOKEN.search(parsed.subject)
    if not match or parsed.from_ is None:
        return None
    ticket = (Ticket.objects.filter(tenant_id=row.tenant_id, number=int(match.group(1)))
              .select_related("contact", "merged_into").first())
    if ticket is None:
        return None
    sender = parsed.from_.email
    if sender != ticket.contact.email and sender not in ticket.cc_addresses:
        return None
    # A merged ticket's mail goes to the ticket it was merged into.
    return ticket.merged_into or ticket


def _store(row: InboundEmail, ticket: Ticket, message: Message, parsed: ParsedEmail,
           head: dict) -> bool:
    """One statement for the end of a processed email: insert ``message``; register its own
    Message-ID (linked to it) and every id it refers to (In-Reply-To, References) for the
    ticket; and the row's guarded final state. An id that a reply registered before this
    message arrived gets the message linked now, so that a later copy of this message is
    recognised as a duplicate; other known ids keep their first ticket. Returns False when
    another worker finished the row first (the caller rolls back)."""
    names, placeholders, params = sql.insert_parts(message)
    ids = list(dict.fromkeys(m[:998] for m in [parsed.message_id, *parsed.thread_ids]))
    query = (
        f"WITH m AS (INSERT INTO {Message._meta.db_table} ({names}) "  # noqa: S608
        f"  VALUES ({placeholders}) RETURNING id), "
        f"r AS (INSERT INTO {EmailThreadRef._meta.db_table} AS r "
        "  (tenant_id, message_id_header, ticket_id, message_id, created_at) "
        "  SELECT %s, h, %s, CASE WHEN h = %s THEN (SELECT id FROM m) END, now() "
        "  FROM unnest(%s::varchar(998)[]) AS h "
        "  ON CONFLICT (tenant_id, message_id_header) DO UPDATE SET message_id = "
        "  EXCLUDED.message_id WHERE r.message_id IS NULL AND EXCLUDED.message_id IS NOT NULL), "
        f"f AS (UPDATE {InboundEmail._meta.db_table} SET state = %s, reason = '', "
        "  processed_at = now(), attempts = attempts + 1, ticket_id = %s, "
        "  message_id = (SELECT id FROM m), message_id_header = %s, subject = %s, "
        "  from_address = %s, details = %s::jsonb "
        "  WHERE id = %s AND state = %s RETURNING 1) "
        "SELECT (SELECT id FROM m), (SELECT count(*) FROM f)"
    )
    params += [row.tenant_id, ticket.pk, ids[0], ids,
               InboundState.PROCESSED, ticket.pk, head["message_id_header"], head["subject"],
               head["from_address"], json.dumps(head["details"], default=str),
               row.pk, InboundState.RECEIVED]
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        message_pk, finished = cursor.fetchone()
    sql.saved(message, message_pk)
    return finished == 1


def _thread_and_store(row: InboundEmail, conn: EmailConnection, parsed: ParsedEmail,
                      head: dict) -> IngestOutcome:
    keys = {parsed.message_id, *parsed.thread_ids}
    if row.provider_thread_id:
        keys.add(f"provider-thread:{row.connection_id}:{row.provider_thread_id}")
    # Sorted, so that two workers locking overlapping key sets cannot deadlock.
    lock = ("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) k",
            [sorted(thread_lock_key(row.tenant_id, k) for k in keys)])
    sender = parsed.from_
    contact, created_contact = None, False
    if filters.sender_always_accepted(conn):
        # No filter below can refuse the sender, so the contact upsert rides in the lock's
        # statement (one round trip less); the locks are taken first, as the upsert
        # selects its row from them. A duplicate of an ingested message touches no
        # contact (None comes back; it is skipped below). The check reads the statement's
        # snapshot, taken before the locks: an original committing in that instant lets
        # the upsert through, and the duplicate is still caught by _find_thread.
        contact, created_contact = contact_upsert_run(*contact_upsert_sql(
            tenant_id=row.tenant_id, email=sender.email, name=sender.name,
            source=ContactSource.EMAIL, before=lock, unless=(
                f"EXISTS (SELECT 1 FROM {EmailThreadRef._meta.db_table} r "  # noqa: S608
                "WHERE r.tenant_id = %s AND r.message_id_header = %s "
                "AND r.message_id IS NOT NULL)", [row.tenant_id, parsed.message_id[:998]])))
    else:
        with connection.cursor() as cursor:
            cursor.execute(*lock)

    ticket_id, duplicate, found_by = _find_thread(row, parsed)
    if duplicate:
        original = (EmailThreadRef.objects.filter(message_id_header=parsed.message_id)
                    .values_list("message_id", flat=True).first())
        reason = f"duplicate: the same Message-ID was already ingested (message {original})"
        if not _finish(row, InboundState.SKIPPED, reason, head, ticket_id=ticket_id,
                       message_pk=original):
            raise _LostRace
        return IngestOutcome(state=InboundState.SKIPPED, reason=reason, ticket_id=ticket_id,
                             message_pk=original, parsed=parsed)

    ticket = None
    if ticket_id is None:
        ticket = _ticket_by_token(row, parsed)
        found_by = "subject-token" if ticket else ""
    is_reply = ticket_id is not None or ticket is not None

    skip = filters.thread_filter(connection=conn, is_reply=is_reply)
    if skip is None:
        if conn.allowed_senders != "anyone":
            from contacts.models import Contact

            known = Contact.objects.filter(email=sender.email).exists()
            skip = filters.sender_filter(connection=conn, contact_known=known)
    if skip is not None:
        reason = f"{skip.code}: {skip.reason}"
        if not _finish(row, InboundState.SKIPPED, reason, head):
            raise _LostRace
        return IngestOutcome(state=InboundState.SKIPPED, reason=reason, parsed=parsed)

    if contact is None:
        contact, created_contact = contact_get_or_create(
            tenant=row.tenant, email=sender.email, name=sender.name,
            source=ContactSource.EMAIL)
    # Every address of the tenant's mailboxes is ours: never a CC to copy replies to.
    own = row.tenant_addresses  # the connection's own addresses are among them
    cc = [a.email for a in parsed.cc if a.email not in own and a.email != sender.email] \
        if conn.import_cc else []
    body_html = parsed.html if conn.body_preference == BodyPreference.HTML else ""

    created = False
    if is_reply:
        ticket = ticket_touch_for_inbound(tenant_id=row.tenant_id,
                                          ticket_id=ticket.pk if ticket else ticket_id, add_cc=cc)
    else:
        created = True
        routed = {}
        if conn.routing_mode != RoutingMode.NONE:
            # Decided before the ticket exists, so its INSERT carries the outcome.
            routed = ticket_fields(decide_routing(
                tenant_id=row.tenant_id, mode=conn.routing_mode, team=conn.routing_team,
                flow=conn.routing_flow,
                facts=RoutingFacts(
                    subject=parsed.subject, body=parsed.text, sender=sender.email,
                    recipients=tuple(sorted({a.email for a in [*parsed.to, *parsed.cc]}
                                            | set(parsed.delivered_to) | own)),
                    has_attachments=bool(parsed.attachments), importance=parsed.importance,
                    is_new_contact=created_contact,
                ),
            ))
        ticket = ticket_create(
            tenant=row.tenant, title=parsed.subject, description=parsed.text, contact=contact,
            source_channel=SourceChannel.EMAIL, cc_addresses=cc, email_connection=conn,
            **routed,
        )

    # The ticket is touched (or new) already: the message goes in with the thread ids and
    # the final state, in one statement (tickets.services.message_add with touch=False
    # would write the same row).
    message = Message(tenant_id=row.tenant_id, ticket=ticket, kind=MessageKind.INBOUND,
                      subject=parsed.subject[:998], body_text=parsed.text, body_html=body_html,
                      author_contact=contact)
    head["details"]["threaded_by"] = found_by or "new-ticket"
    if not _store(row, ticket, message, parsed, head):
        raise _LostRace
    webhooks_out.message_created_emit(message=message)
    if parsed.attachments:
        attachments_add(message=message, files=[
            (a.filename, a.content, a.content_type, a.content_id, a.inline)
            for a in parsed.attachments
        ])
    if created and conn.send_acknowledgement:
        _, why_not = acknowledgement_create(ticket=ticket, connection=conn, parsed=parsed,
                                            tenant_addresses=own)
        if why_not:
            logger.info("ingest.acknowledgement_skipped inbound_email=%s reason=%s", row.pk,
                        why_not)
    return IngestOutcome(state=InboundState.PROCESSED, ticket_id=ticket.pk,
                         ticket_number=ticket.number, created_ticket=created,
                         message_pk=message.pk, parsed=parsed)
