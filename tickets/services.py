"""Writes on tickets, messages and attachments (keyword-only, transactional)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from contacts.models import Contact
from helpdesk import sql, webhooks_out
from helpdesk.errors import ApplicationError
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
    with a link to it, so later replies to its thread land in the target.

    Raises ApplicationError on ``into`` (the target's field): a ticket of another
    workspace (``ticket_not_found``, the same answer as an unknown one), the same ticket
    (``merge_same_ticket``), or either one merged already (``already_merged``, 409)."""
    from channels_email.models import EmailThreadRef, InboundEmail
    from helpdesk.services import audit_record

    if source.tenant_id != target.tenant_id:
        raise ApplicationError("ticket_not_found", "There is no such ticket to merge into.",
                               field="into")
    if source.pk == target.pk:
        raise ApplicationError("merge_same_ticket", "A ticket cannot be merged into itself; "
                               "choose another ticket.", field="into")
    if target.merged_into_id or source.merged_into_id:
        merged = source if source.merged_into_id else target
        raise ApplicationError("already_merged", f"#{merged.number} is merged already; "
                               "choose two tickets that are not merged.", field="into",
                               status=409)
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


class _Keep:
    """The value of a ``ticket_update`` field the caller leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()
TAG_MAX_LENGTH = 50
TAGS_MAX = 50


def ticket_etag(ticket: Ticket) -> str:
    """The ticket's entity tag (a strong, quoted ETag) for its representation (the API's
    ticket: its own fields and what it shows of its contact, team, assignee and the
    ticket it was merged into): it changes with every write of the ticket, since each
    one moves ``updated_at``, and with every change of those others that the ticket's
    row does not see (a contact renamed, a team renamed, an assignee's new name or
    address, a merge that moves what the ticket was merged into). So If-Match refuses a
    write to a copy that shows anything stale, and If-None-Match never answers 304 to
    one. Read the ticket with those rows joined (``ticket_get_for``) or this costs a
    query each."""
    contact, team, assignee = ticket.contact, ticket.team, ticket.assignee
    version = [
        ticket.pk, ticket.updated_at.isoformat(),
        [contact.pk, contact.email, contact.name],
        [team.pk, team.name] if team is not None else None,
        [assignee.pk, assignee.email, assignee.display_name] if assignee is not None else None,
        ticket.merged_into.number if ticket.merged_into_id else None,
    ]
    stamp = json.dumps(version, ensure_ascii=False).encode()
    return f'"{hashlib.sha256(stamp).hexdigest()[:32]}"'


def ticket_tags_clean(tags: Iterable[str]) -> list[str]:
    """Tags as stored: stripped, lower case, each once, in the given order. Raises
    ApplicationError (``tags``) for an empty or over-long tag or too many of them."""
    cleaned = list(dict.fromkeys(str(t).strip().lower() for t in tags))
    if any(not t or len(t) > TAG_MAX_LENGTH for t in cleaned):
        raise ApplicationError("tag_invalid", f"A tag is 1 to {TAG_MAX_LENGTH} characters.",
                               field="tags")
    if len(cleaned) > TAGS_MAX:
        raise ApplicationError("too_many_tags", f"A ticket has at most {TAGS_MAX} tags.",
                               field="tags")
    return cleaned


def _assignment_check(*, tenant_id: int, team: Team | None, assignee: User | None) -> None:
    """The assignment rules: the team is one of the ticket's workspace, the assignee an
    active member of it. Never a link to another workspace, whatever the caller passed."""
    from helpdesk.models import Membership

    if team is not None and team.tenant_id != tenant_id:
        raise ApplicationError("team_not_found", "There is no such team in this workspace.",
                               field="team")
    if assignee is not None and not (assignee.is_active and Membership.objects.filter(
            tenant_id=tenant_id, user_id=assignee.pk).exists()):
        raise ApplicationError("assignee_not_member", "The assignee must be an active member "
                               "of this workspace.", field="assignee")


def ticket_update(*, ticket: Ticket, status: str | _Keep = KEEP,
                  priority: str | _Keep = KEEP, team: Team | None | _Keep = KEEP,
                  assignee: User | None | _Keep = KEEP, tags: Iterable[str] | _Keep = KEEP,
                  actor: User | None = None,
                  if_match: Iterable[str] | None = None) -> Ticket:
    """Set the agent-controlled fields of a ticket; a field passed as ``KEEP`` (the
    default) stays as it is. Raises ApplicationError naming the field for a status or
    priority that does not exist, a team of another workspace or an assignee who is not
    an active member of it (``_assignment_check``), or bad tags.

    ``if_match``: the ETags (``ticket_etag``) the caller's copy may have; when given, the
    row is locked and a ticket changed since then is refused with ``ticket_changed``
    (412) and nothing written: the caller reads it again rather than overwrite a change
    it has not seen.

    People other than ``actor`` (the agent making the change) hear of it: a new assignee
    ("assigned to you"), and the members of a team the ticket moved to ("moved to your
    team"); one more statement, only then."""
    values = {"status": status, "priority": priority, "team": team, "assignee": assignee}
    values = {name: value for name, value in values.items() if value is not KEEP}
    for name, choices in (("status", TicketStatus), ("priority", TicketPriority)):
        if name in values and values[name] not in choices.values:
            raise ApplicationError(f"{name}_invalid", f"{values[name]!r} is not a {name}; "
                                   f"one of {', '.join(choices.values)}.", field=name)
    new_assignee = values.get("assignee")
    _assignment_check(tenant_id=ticket.tenant_id, team=values.get("team"),
                      assignee=new_assignee if new_assignee is not None
                      and new_assignee.pk != ticket.assignee_id else None)
    if tags is not KEEP:
        values["tags"] = ticket_tags_clean(tags)
    # A savepoint only with a precondition: its refusal must not doom a caller's
    # transaction; the plain update keeps to its statements.
    with transaction.atomic(savepoint=if_match is not None):
        if if_match is not None:
            # Locks the ticket's row only; the others are read for its ETag.
            current = (Ticket.objects.select_for_update(of=("self",))
                       .select_related("contact", "team", "assignee", "merged_into")
                       .get(pk=ticket.pk))
            if ticket_etag(current) not in set(if_match):
                raise ApplicationError("ticket_changed", "The ticket changed since this "
                                       "copy was read (its ETag is not the If-Match one); "
                                       "read it again and repeat the change.",
                                       field="If-Match", status=412)
        reassigned = values.get("assignee") is not None and \
            values["assignee"].pk != ticket.assignee_id
        moved = values.get("team") is not None and values["team"].pk != ticket.team_id
        for name, value in values.items():
            setattr(ticket, name, value)
        ticket.save(update_fields=[*values, "updated_at"])
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
            raise ApplicationError("status_after_reply_invalid", "A reply can set Pending "
                                   f"or Solved, not {set_status!r}.", field="set_status")
        return set_status
    if public and current in OPENED_BY_REPLY:
        return TicketStatus.OPEN
    return current


def reply_attachments_check(*, attachments: Iterable[tuple[str, bytes, str]]) -> None:
    """The limits of a reply's (or note's) files: ``REPLY_ATTACHMENT_MAX_BYTES`` each
    and ``REPLY_ATTACHMENTS_TOTAL_MAX_BYTES`` together (what one email can carry).
    Raises ApplicationError on ``attachments``."""
    mb = 1024 * 1024
    files = list(attachments)
    too_big = [name for name, content, _ in files
               if len(content) > settings.REPLY_ATTACHMENT_MAX_BYTES]
    if too_big:
        raise ApplicationError(
            "attachment_too_large", f"{', '.join(too_big)}: attachments are limited to "
            f"{settings.REPLY_ATTACHMENT_MAX_BYTES // mb} MB each. Nothing was sent.",
            field="attachments", status=413)
    total = sum(len(content) for _, content, _ in files)
    if total > settings.REPLY_ATTACHMENTS_TOTAL_MAX_BYTES:
        raise ApplicationError(
            "attachments_too_large", f"The attachments add up to {total / mb:.1f} MB; one "
            f"reply can carry {settings.REPLY_ATTACHMENTS_TOTAL_MAX_BYTES / mb:.1f} MB. "
            "Nothing was sent.", field="attachments", status=413)


def ticket_reply(*, ticket: Ticket, author: User, body_text: str, public: bool,
                 to: list[str] | None = None, cc: list[str] | None = None,
                 attachments: Iterable[tuple[str, bytes, str]] = (),
                 form_token: uuid.UUID | None = None, set_status: str = "",
                 assign_to_me: bool = False) -> Message:
    """What the ticket's composer does, in one transaction: the reply to the customer
    (``channels_email.outbound.reply_create``, its send queued on commit) or the internal
    note, then the ticket's status (``status_after_reply``) and assignee. The HTML
    composer and the API both call it.

    An unassigned ticket gets the author as assignee when they ask (``assign_to_me``), or
    on a reply to the customer when the workspace assigns automatically
    (``Tenant.auto_assign_on_reply``). ``form_token`` is the form's one-time token: a
    second call with it raises DuplicateSubmission and writes nothing (concurrent posts
    wait for the first one's commit on the unique index).

    Refused with ApplicationError, nothing written and the token unused: a merged ticket
    (``ticket_merged``, 409: the survivor takes replies), a reply with ``to`` given but
    empty (``recipient_required`` on ``to``), files over the limits
    (``reply_attachments_check``), a ``set_status`` other than Pending or Solved, and
    from ``reply_create``: no mailbox to reply from or no recipient outside our own."""
    from channels_email.outbound import reply_create

    if ticket.merged_into_id:
        raise ApplicationError("ticket_merged", f"This ticket was merged into "
                               f"#{ticket.merged_into.number}; reply there.", status=409)
    if public and to is not None and not to:
        raise ApplicationError("recipient_required", "Add the address the reply goes to.",
                               field="to")
    attachments = list(attachments)
    reply_attachments_check(attachments=attachments)
    status = status_after_reply(current=ticket.status, public=public, set_status=set_status)
    auto = public and ticket.tenant.auto_assign_on_reply
    assignee_id = author.pk if ticket.assignee_id is None and (assign_to_me or auto) \
        else ticket.assignee_id
    with transaction.atomic():
        submission = _submission_take(ticket=ticket, author=author, token=form_token)
        if public:
            message = reply_create(ticket=ticket, author=author, body_text=body_text, to=to,
                                   cc=cc, attachments=attachments)
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


def ticket_open_outbound(*, tenant: Tenant, actor: User, subject: str, body_text: str,
                         contact_id: int | None = None, contact_email: str = "",
                         contact_name: str = "", cc: Iterable[str] = (),
                         attachments: Iterable[tuple[str, bytes, str]] = (),
                         priority: str = TicketPriority.NORMAL, team: Team | None = None,
                         assignee: User | None = None, tags: Iterable[str] = (),
                         source_channel: str = SourceChannel.API) -> tuple[Ticket, Message]:
    """A ticket opened by us on behalf of a contact, with our first message to them sent
    through the workspace's default mailbox, in one transaction (the send queued on
    commit). The contact is ``contact_id`` (one of ``tenant``'s) or ``contact_email``
    (found or created). The ticket starts Open: it has its first answer.

    Raises ApplicationError naming the field: an unknown contact (``contact``), neither
    or both of id and address, an assignment the rules refuse (``team``, ``assignee``),
    bad tags, files over the limits, and from ``reply_create``: no default mailbox
    (``no_mailbox``, 409) or no recipient outside our own mailboxes."""
    from channels_email.outbound import reply_create
    from contacts.models import ContactSource
    from contacts.services import contact_get_or_create

    if (contact_id is None) == (not contact_email):
        raise ApplicationError("contact_required", "Name the contact by id or by email "
                               "address (one of the two).", field="contact")
    _assignment_check(tenant_id=tenant.pk, team=team, assignee=assignee)
    tags = ticket_tags_clean(tags)
    attachments = list(attachments)
    reply_attachments_check(attachments=attachments)
    with transaction.atomic():
        if contact_id is not None:
            contact = Contact.objects.filter(tenant=tenant, pk=contact_id).first()
            if contact is None:
                raise ApplicationError("contact_not_found", "There is no such contact in "
                                       "this workspace.", field="contact")
        else:
            contact, _ = contact_get_or_create(tenant=tenant, email=contact_email,
                                               name=contact_name, source=ContactSource.API)
        ticket = ticket_create(tenant=tenant, title=subject, contact=contact,
                               description=body_text, status=TicketStatus.OPEN,
                               priority=priority, team=team, assignee=assignee,
                               source_channel=source_channel, cc_addresses=cc, tags=tags,
                               actor=actor)
        message = reply_create(ticket=ticket, author=actor, body_text=body_text,
                               to=[contact.email], cc=list(ticket.cc_addresses),
                               attachments=attachments, new_thread=True)
    return ticket, message


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
