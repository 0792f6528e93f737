"""Writes on tickets, messages and attachments (keyword-only, transactional)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable

from django.core.files.base import ContentFile
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from contacts.models import Contact
from helpdesk import sql, webhooks_out
from helpdesk.models import Tenant, User
from routing.models import Team
from tickets import notifications
from tickets.models import (
    Attachment,
    DeliveryStatus,
    Message,
    MessageKind,
    ReplySubmission,
    SourceChannel,
    Ticket,
    TicketPriority,
    TicketStatus,
)


def next_ticket_number(*, tenant: Tenant) -> int:
    """Take the tenant's next ticket number. Must run inside the caller's transaction.

    One upsert (the database function ``tickets_next_number``, migration 0004); the row
    lock it takes is held until the caller commits, which orders concurrent creators in
    the tenant and keeps numbers unique and increasing.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("next_ticket_number must run inside transaction.atomic()")
    with connection.cursor() as cursor:
        cursor.execute("SELECT tickets_next_number(%s)", [tenant.pk])
        return cursor.fetchone()[0]


def ticket_create(
    *,
    tenant: Tenant,
    title: str,
    contact: Contact,
    description: str = "",
    status: str = TicketStatus.NEW,
    priority: str = TicketPriority.NORMAL,
    team: Team | None = None,
    assignee: User | None = None,
    source_channel: str = SourceChannel.MANUAL,
    cc_addresses: Iterable[str] = (),
    tags: Iterable[str] = (),
    email_connection=None,
    routing: dict | None = None,
    actor: User | None = None,
) -> Ticket:
    """Create a ticket with the tenant's next number (one INSERT: the number is taken by
    the database in the same statement and read back). Raises ValueError on a foreign
    row. ``routing`` is the routing engine's recorded decision, when it ran first.

    With a team or an assignee, the same statement also notifies the team's members and
    the assignee (``tickets.notifications``), never ``actor`` (the agent creating it;
    None for the system, e.g. email ingest)."""
    for related in (contact, team):
        if related is not None and related.tenant_id != tenant.pk:
            raise ValueError(f"{type(related).__name__} {related.pk} is not in tenant {tenant.pk}")
    ticket = Ticket(
        tenant=tenant,
        number=0,  # taken by the database in the INSERT itself
        title=(title or "").strip()[:998] or "(no subject)",
        description=description,
        status=status,
        priority=priority,
        contact=contact,
        team=team,
        assignee=assignee,
        source_channel=source_channel,
        cc_addresses=list(dict.fromkeys(cc_addresses)),
        tags=list(tags),
        email_connection=email_connection,
        routing=routing or {},
    )
    number = {"number": ("tickets_next_number(%s)", [tenant.pk])}
    notify = notifications.new_ticket_insert_sql(
        tenant_id=tenant.pk, team_id=ticket.team_id, assignee_id=ticket.assignee_id,
        actor_id=actor.pk if actor else None, ticket_id_sql="(SELECT id FROM t)")
    # One statement, so atomic by itself: the number's upsert and the row go in together.
    if notify is None:
        return webhooks_out.ticket_created(sql.insert(ticket, number))
    # The notifications' INSERT rides along as a data-modifying CTE: still one statement
    # on the ingest path. It reads the new id from t's RETURNING (the foreign key is
    # checked at commit, when the ticket row exists).
    names, placeholders, params = sql.insert_parts(ticket, number)
    notify_sql, notify_params = notify
    query = (
        f"WITH t AS (INSERT INTO {Ticket._meta.db_table} ({names}) "  # noqa: S608
        f"VALUES ({placeholders}) RETURNING id, number), n AS ({notify_sql}) "
        "SELECT id, number FROM t"
    )
    with connection.cursor() as cursor:
        cursor.execute(query, [*params, *notify_params])
        pk, ticket.number = cursor.fetchone()
    return webhooks_out.ticket_created(sql.saved(ticket, pk))


def message_add(
    *,
    ticket: Ticket,
    kind: str,
    body_text: str,
    body_html: str = "",
    subject: str = "",
    author_contact: Contact | None = None,
    author_user: User | None = None,
    add_cc: Iterable[str] = (),
    touch: bool = True,
) -> Message:
    """Append a message to a ticket's timeline and touch the ticket (one UPDATE).

    An inbound message is the customer writing: ``ticket_touch_for_inbound`` reopens a
    solved or closed ticket, joins ``add_cc`` to its CC list and tells its assignee. An
    outbound message starts Pending; delivery is the outbound service's business.
    ``touch=False`` is for the first message of a ticket created in the same transaction
    (nothing to update).
    """
    with transaction.atomic(savepoint=False):
        message = Message.objects.create(
            tenant_id=ticket.tenant_id,
            ticket=ticket,
            kind=kind,
            subject=subject[:998],
            body_text=body_text,
            body_html=body_html,
            author_contact=author_contact,
            author_user=author_user,
            delivery_status=DeliveryStatus.PENDING if kind == MessageKind.OUTBOUND else "",
        )
        webhooks_out.message_created_emit(message=message)
        if not touch:
            return message
        if kind == MessageKind.INBOUND:
            touched = ticket_touch_for_inbound(tenant_id=ticket.tenant_id, ticket_id=ticket.pk,
                                               add_cc=add_cc)
            ticket.status, ticket.cc_addresses, ticket.updated_at = (
                touched.status, touched.cc_addresses, touched.updated_at)
        else:
            ticket.updated_at = timezone.now()
            Ticket.objects.filter(pk=ticket.pk).update(updated_at=ticket.updated_at)
        return message


def ticket_touch_for_inbound(*, tenant_id: int, ticket_id: int,
                             add_cc: Iterable[str] = ()) -> Ticket:
    """A customer wrote on ``ticket_id``: bump ``updated_at``, reopen a pending (the
    answer it waited for), solved or closed ticket, join new CC addresses, notify its
    assignee (if any, and still a member of the tenant), and return the ticket, in one
    statement (UPDATE ... RETURNING, with the notification's INSERT in a CTE).
    ``message_add`` calls it for inbound messages; ingest, which writes the message in a
    statement of its own, calls it directly."""
    table = Ticket._meta.db_table  # our model's table name, never input
    notify_sql, notify_params = notifications.customer_reply_insert_sql(ticket_rows="t")
    query = (
        f"WITH t AS (UPDATE {table} SET updated_at = now(), "  # noqa: S608
        "status = CASE WHEN status IN (%s, %s, %s) THEN %s ELSE status END, "
        "cc_addresses = cc_addresses || ARRAY(SELECT a FROM unnest(%s::varchar(320)[]) a "
        "  WHERE NOT a = ANY(cc_addresses)) "
        f"WHERE id = %s AND tenant_id = %s RETURNING {sql.columns(Ticket)}), "
        f"n AS ({notify_sql}) SELECT * FROM t"
    )
    params = [TicketStatus.PENDING, TicketStatus.SOLVED, TicketStatus.CLOSED, TicketStatus.OPEN,
              list(dict.fromkeys(add_cc)), ticket_id, tenant_id, *notify_params]
    return sql.fetch_one(Ticket, query, params)[0]


def attachments_add(
    *, message: Message, files: Iterable[tuple[str, bytes, str, str, bool]]
) -> list[Attachment]:
    """Store several files and link them to ``message`` with one INSERT.

    ``files`` holds (filename, content, content_type, content_id, inline) tuples.
    """
    rows = [_attachment_row(message=message, filename=name, content=content,
                            content_type=ctype, content_id=cid, inline=inline)
            for name, content, ctype, cid, inline in files]
    return Attachment.objects.bulk_create(rows)


def _attachment_row(*, message: Message, filename: str, content: bytes, content_type: str,
                    content_id: str, inline: bool) -> Attachment:
    safe_name = (filename or "attachment").replace("/", "_").replace("\\", "_").strip() or "file"
    attachment = Attachment(
        tenant_id=message.tenant_id,
        message=message,
        filename=safe_name[:255],
        content_type=(content_type or "application/octet-stream")[:255],
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content_id=(content_id or "")[:255],
        inline=inline,
    )
    attachment.file.save(safe_name[-150:], ContentFile(content), save=False)
    return attachment


def attachment_add(
    *,
    message: Message,
    filename: str,
    content: bytes,
    content_type: str = "application/octet-stream",
    content_id: str = "",
    inline: bool = False,
) -> Attachment:
    """Store ``content`` through Django's storage API and link it to ``message``."""
    attachment = _attachment_row(message=message, filename=filename, content=content,
                                 content_type=content_type, content_id=content_id,
                                 inline=inline)
    attachment.save()
    return attachment


def ticket_merge(*, source: Ticket, target: Ticket, actor: User | None = None) -> Ticket:
    """Merge ``source`` into ``target``: every message (with its attachments), thread
    reference and inbound email of the source moves to the target; the source is closed
    with a link to it, so later replies to its thread land in the target. Raises
    ValueError for a ticket of another tenant, the same ticket, or an already merged one."""
    from channels_email.models import EmailThreadRef, InboundEmail
    from helpdesk.services import audit_record

    if source.tenant_id != target.tenant_id:
        raise ValueError("tickets of different workspaces cannot be merged")
    if source.pk == target.pk or target.merged_into_id or source.merged_into_id:
        raise ValueError("choose two different tickets that are not merged already")
    with transaction.atomic():
        moved = Message.objects.filter(ticket=source).update(ticket=target)
        EmailThreadRef.objects.filter(ticket=source).update(ticket=target)
        InboundEmail.objects.filter(ticket=source).update(ticket=target)
        Ticket.objects.filter(merged_into=source).update(merged_into=target)
        new_cc = [a for a in source.cc_addresses if a not in target.cc_addresses]
        Ticket.objects.filter(pk=target.pk).update(
            cc_addresses=[*target.cc_addresses, *new_cc], updated_at=timezone.now())
        Ticket.objects.filter(pk=source.pk).update(
            status=TicketStatus.CLOSED, merged_into=target, updated_at=timezone.now())
        audit_record(tenant=target.tenant, actor=actor, action="ticket.merged", target=target,
                     details={"source": source.number, "messages": moved})
        source.refresh_from_db()
        target.refresh_from_db()
        webhooks_out.tickets_updated(tickets=[source, target])
    return target


def note_add(*, ticket: Ticket, author: User, body_text: str,
             attachments: Iterable[tuple[str, bytes, str]] = ()) -> Message:
    """An internal note (never emailed), with its files, in one transaction."""
    with transaction.atomic():
        note = message_add(ticket=ticket, kind=MessageKind.NOTE, body_text=body_text,
                           author_user=author)
        files = [(name, content, ctype, "", False) for name, content, ctype in attachments]
        if files:
            attachments_add(message=note, files=files)
    return note


def ticket_update(*, ticket: Ticket, status: str, priority: str, team: Team | None,
                  assignee: User | None, actor: User | None = None) -> Ticket:
    """Set the agent-controlled fields of a ticket. Raises ValueError for a team of another
    workspace (the caller offers only its own). People other than ``actor`` (the agent
    making the change) hear of it: a new assignee ("assigned to you"), and the members of
    a team the ticket moved to ("moved to your team"); one more statement, only then."""
    if team is not None and team.tenant_id != ticket.tenant_id:
        raise ValueError(f"team {team.pk} is not in tenant {ticket.tenant_id}")
    reassigned = assignee is not None and assignee.pk != ticket.assignee_id
    moved = team is not None and team.pk != ticket.team_id
    ticket.status, ticket.priority, ticket.team, ticket.assignee = (status, priority, team,
                                                                    assignee)
    with transaction.atomic(savepoint=False):
        ticket.save(update_fields=["status", "priority", "team", "assignee", "updated_at"])
        webhooks_out.tickets_updated(tickets=[ticket])
        if moved:
            notifications.notifications_for_team_transfer(
                ticket=ticket, actor=actor, reassigned=reassigned)
        elif reassigned:
            notifications.notification_for_assignment(ticket=ticket, actor=actor)
    return ticket


# ------------------------------------------------------------------ the composer

# What "Send and set ..." may set; plain "Send" applies ``status_after_reply``.
STATUSES_AFTER_SEND = (TicketStatus.PENDING, TicketStatus.SOLVED)
# A reply to the customer on one of these makes the ticket Open: the first answer on a New
# ticket, and a reply that reopens a Solved or Closed one.
OPENED_BY_REPLY = (TicketStatus.NEW, TicketStatus.SOLVED, TicketStatus.CLOSED)


class DuplicateSubmission(Exception):  # noqa: N818 - an outcome the view reports
    """The composer form with this one-time token was sent already; nothing was done."""

    def __init__(self, message_id: int | None):
        super().__init__("this form was sent already")
        self.message_id = message_id


def status_after_reply(*, current: str, public: bool, set_status: str = "") -> str:
    """The ticket's status once the agent's reply (``public``) or note is in.

    "Send and set Pending / Solved" sets that status. Plain "Send": a reply to the customer
    moves a New ticket to Open (the first answer) and reopens a Solved or Closed one; an
    Open or Pending ticket keeps its status. A note changes nothing by itself."""
    if set_status:
        if set_status not in STATUSES_AFTER_SEND:
            raise ValueError(f"a reply can set Pending or Solved, not {set_status!r}")
        return set_status
    if public and current in OPENED_BY_REPLY:
        return TicketStatus.OPEN
    return current


def ticket_reply(*, ticket: Ticket, author: User, body_text: str, public: bool,
                 to: list[str] | None = None, cc: list[str] | None = None,
                 attachments: Iterable[tuple[str, bytes, str]] = (),
                 form_token: uuid.UUID | None = None, set_status: str = "",
                 assign_to_me: bool = False) -> Message:
    """What the ticket's composer does, in one transaction: the reply to the customer
    (``channels_email.outbound.reply_create``, its send queued on commit) or the internal
    note, then the ticket's status (``status_after_reply``) and assignee.

    An unassigned ticket gets the author as assignee when they ask (``assign_to_me``), or
    on a reply to the customer when the workspace assigns automatically
    (``Tenant.auto_assign_on_reply``). ``form_token`` is the form's one-time token: a
    second call with it raises DuplicateSubmission and writes nothing (concurrent posts
    wait for the first one's commit on the unique index). A merged ticket takes no reply
    (ValueError: the survivor does); nor does a reply without a mailbox or recipient
    (ValueError from ``reply_create``), and then the token stays unused."""
    from channels_email.outbound import reply_create

    if ticket.merged_into_id:
        raise ValueError(f"this ticket was merged into #{ticket.merged_into.number}; "
                         "reply there")
    status = status_after_reply(current=ticket.status, public=public, set_status=set_status)
    auto = public and ticket.tenant.auto_assign_on_reply
    assignee_id = author.pk if ticket.assignee_id is None and (assign_to_me or auto) \
        else ticket.assignee_id
    with transaction.atomic():
        submission = _submission_take(ticket=ticket, author=author, token=form_token)
        if public:
            message = reply_create(ticket=ticket, author=author, body_text=body_text, to=to,
                                   cc=cc, attachments=list(attachments))
        else:
            message = note_add(ticket=ticket, author=author, body_text=body_text,
                               attachments=attachments)
        if submission is not None:
            ReplySubmission.objects.filter(pk=submission.pk).update(message=message)
        if (status, assignee_id) != (ticket.status, ticket.assignee_id):
            ticket.updated_at = timezone.now()
            Ticket.objects.filter(pk=ticket.pk).update(status=status, assignee_id=assignee_id,
                                                       updated_at=ticket.updated_at)
            ticket.status, ticket.assignee_id = status, assignee_id
            webhooks_out.tickets_updated(tickets=[ticket])
    return message


def _submission_take(*, ticket: Ticket, author: User,
                     token: uuid.UUID | None) -> ReplySubmission | None:
    if token is None:
        return None
    try:
        with transaction.atomic():
            return ReplySubmission.objects.create(tenant_id=ticket.tenant_id, token=token,
                                                  user=author, ticket=ticket)
    except IntegrityError:
        earlier = (ReplySubmission.objects.filter(tenant_id=ticket.tenant_id, token=token)
                   .values_list("message_id", flat=True).first())
        raise DuplicateSubmission(earlier) from None


def ticket_subject(*, ticket: Ticket, subject: str) -> str:
    """An outbound subject with the ticket's ``[#n]`` token, when the workspace puts it
    there (``Tenant.subject_ticket_token``, on by default): once, after any "Re:" prefix,
    so "Re: [#12] Printer" answered again stays as it is."""
    if not ticket.tenant.subject_ticket_token or ticket.token in subject:
        return subject
    prefix, rest = _REPLY_PREFIX.match(subject).groups()
    return f"{prefix}{ticket.token} {rest}".strip()


_REPLY_PREFIX = re.compile(r"^((?:\s*(?:re|aw|sv|antw)(?:\[\d+\])?\s*:\s*)*)(.*)$",
                           re.IGNORECASE | re.DOTALL)


def ticket_settings_update(*, tenant: Tenant, actor: User, auto_assign_on_reply: bool,
                           subject_ticket_token: bool) -> Tenant:
    """The workspace's ticket settings (its admins'; the caller checks the role), audited."""
    from helpdesk.services import audit_record

    with transaction.atomic():
        tenant.auto_assign_on_reply = auto_assign_on_reply
        tenant.subject_ticket_token = subject_ticket_token
        tenant.save(update_fields=["auto_assign_on_reply", "subject_ticket_token"])
        audit_record(tenant=tenant, actor=actor, action="tenant.ticket_settings",
                     target=tenant, details={"auto_assign_on_reply": auto_assign_on_reply,
                                             "subject_ticket_token": subject_ticket_token})
    return tenant
