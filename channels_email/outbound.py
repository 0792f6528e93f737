"""Outbound email and delivery tracking (DESIGN.md section 5).

Contract:
- ``reply_create`` writes the agent's reply as a Pending outbound Message (our own
  Message-ID, registered in EmailThreadRef) in the caller's transaction and queues the send
  on commit. ``deliver`` (the task's body) builds the MIME (In-Reply-To the latest inbound
  mail, a bounded References chain, a ``Re:`` subject that does not stack, From the
  connection's name and address, or the address the customer wrote to when the sending
  mailbox may send as it (``selectors.reply_from``), our loop header, text + HTML,
  attachments) and sends it in the conversation's provider thread: Delivered with the
  provider id; transient errors retry while Pending (up to 8 attempts or 24 hours),
  throttling waits for the connection, permanent errors and lost sign-ins end Failed with
  a readable reason. A retry first asks the provider for our Message-ID among the sent
  mail, so nothing is sent twice.
- ``report_record`` is the hook inbound bounces and spam complaints are handed to.
"""

from __future__ import annotations

import re
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP as smtp_policy
from email.utils import format_datetime, formataddr, make_msgid

from django.db import transaction
from django.db.models import Case, CharField, F, Q, TextField, Value, When
from django.utils import timezone
from django.utils.html import linebreaks

from channels_email import health, providers
from channels_email.mime import (
    LOOP_HEADER,
    BounceInfo,
    BounceRecipient,
    ComplaintInfo,
    ParsedEmail,
    normalize_message_id,
)
from channels_email.models import (
    ACKNOWLEDGEMENT_PLACEHOLDERS,
    DEFAULT_ACKNOWLEDGEMENT,
    ConnectionStatus,
    EmailConnection,
    EmailThreadRef,
    InboundEmail,
    SuppressedAddress,
    SuppressionReason,
)
from channels_email.selectors import (
    latest_inbound_email,
    reply_connection_for,
    reply_from,
    reply_recipients,
    suppressed_among,
    tenant_addresses,
)
from channels_email.tokens import authorized
from contacts.models import normalize_email
from helpdesk import webhooks_out
from helpdesk.errors import ApplicationError
from helpdesk.models import Tenant, User
from helpdesk.tenancy import tenant_scope, unscoped
from tickets.models import DeliveryStatus, Message, MessageKind, Ticket
from tickets.services import attachments_add, ticket_subject


def _outbound_referenced(*, tenant: Tenant, ids: list[str],
                         current_round: bool = False) -> list[int]:
    """Our outbound messages among the Message-IDs a report carries. With
    ``current_round``, only ids of the message's latest sending count: after Retry sent a
    bounced message again under a new id, a late report about the old copy is history,
    not news about the new one."""
    ids = [i for i in dict.fromkeys(ids) if i]
    if not ids:
        return []
    refs = EmailThreadRef.objects.filter(tenant=tenant, message_id_header__in=ids,
                                         message__kind=MessageKind.OUTBOUND)
    if current_round:  # the message's own id, or one registered since its last Retry
        refs = refs.filter(Q(message__retried_at__isnull=True)
                           | Q(message_id_header=F("message__message_id_header"))
                           | Q(created_at__gte=F("message__retried_at")))
    return list(dict.fromkeys(refs.values_list("message_id", flat=True)))


def _sent_to(message_ids: list[int]) -> set[str]:
    """Every address (lower case) the messages went to, To and Cc."""
    sent_to = set()
    for to, cc in Message.objects.filter(pk__in=message_ids).values_list("to_addresses",
                                                                         "cc_addresses"):
        sent_to.update(a.lower() for a in [*to, *cc])
    return sent_to


def _suppress(*, tenant: Tenant, reason: str, entries: dict[str, str],
              inbound_email: InboundEmail | None) -> None:
    """Put ``entries`` (address -> details) on the suppression list; an address already
    on it keeps its first entry."""
    if entries:
        SuppressedAddress.objects.bulk_create([
            SuppressedAddress(tenant=tenant, email=address, reason=reason,
                              details=details[:2000], inbound_email=inbound_email)
            for address, details in entries.items()], ignore_conflicts=True)


def delivery_bounce_record(*, tenant: Tenant, bounce: BounceInfo,
                           inbound_email: InboundEmail | None = None) -> list[int]:
    """Mark our outbound messages that ``bounce`` refers to as Bounced, and put the
    recipients that bounced hard on the tenant's suppression list.

    Matches every Message-ID the report carries (the original message's, and those of
    its In-Reply-To / References) against the ids we registered for outbound messages.
    Runs inside the caller's transaction and tenant scope. Returns the message ids marked.
    """
    message_ids = _outbound_referenced(
        tenant=tenant, ids=[bounce.original_message_id, *bounce.referenced_message_ids],
        current_round=True)
    if not message_ids:
        return []
    details = "; ".join(
        " ".join(p for p in (r.recipient, r.status, r.diagnostic) if p)
        for r in bounce.recipients
    ) or "the receiving mail server rejected the message"
    Message.objects.filter(pk__in=message_ids).update(
        delivery_status=DeliveryStatus.BOUNCED, delivery_error=f"Bounced: {details}"[:2000],
    )
    webhooks_out.message_delivery_status_emit(tenant_id=tenant.pk, message_ids=message_ids)
    # Only addresses we actually sent the bounced messages to count: a forged report
    # cannot suppress a stranger, and a soft bounce (4.x.x) never suppresses.
    sent_to = _sent_to(message_ids)
    hard = {}
    for r in bounce.recipients:
        address = (r.recipient or "").strip().lower()
        if address in sent_to and is_hard_bounce(r):
            hard[address] = " ".join(p for p in (r.status, r.diagnostic) if p)
    _suppress(tenant=tenant, reason=SuppressionReason.HARD_BOUNCE, entries=hard,
              inbound_email=inbound_email)
    return message_ids


def is_hard_bounce(recipient: BounceRecipient) -> bool:
    """A permanent failure: an explicit RFC 3463 class 5 status. A report without one (a
    classic MTA text, which may be a mere warning) never suppresses an address."""
    return recipient.status.strip().startswith("5")


COMPLAINT_TYPES = ("", "abuse", "fraud")  # "" for the non-ARF loops (JMRP)


def complaint_record(*, tenant: Tenant, complaint: ComplaintInfo, dmarc: str,
                     inbound_email: InboundEmail | None = None) -> list[int]:
    """A recipient reported one of our outbound messages as spam: put them on the
    suppression list, so no automatic email (acknowledgement) goes to them again.

    Only a report that passed DMARC (a feedback loop signs its reports; a recipient of a
    later reply who read our earlier Message-IDs in its References could forge one) and
    says abuse or fraud (not "not-spam", an authentication-failure report or a virus
    notice) suppresses anybody. The complainer is the report's Original-Rcpt-To when it
    names one we wrote to; when the report redacts it (most mailbox providers do), the
    message's only recipient. A message that went to several people with no named
    complainer suppresses nobody. Delivery status is left alone: the message was
    delivered. Returns the messages the report is about (the report is linked to them
    either way). Runs inside the caller's transaction and tenant scope.
    """
    message_ids = _outbound_referenced(tenant=tenant, ids=complaint.referenced_message_ids)
    if not message_ids or dmarc != "pass" or complaint.feedback_type not in COMPLAINT_TYPES:
        return message_ids
    sent_to = _sent_to(message_ids)
    complainers = [a for a in complaint.recipients if a in sent_to]
    if not complainers and len(sent_to) == 1:
        complainers = list(sent_to)
    details = "Reported as spam" + (f" ({complaint.feedback_type})"
                                    if complaint.feedback_type else "")
    _suppress(tenant=tenant, reason=SuppressionReason.COMPLAINT,
              entries=dict.fromkeys(complainers, details), inbound_email=inbound_email)
    return message_ids


def report_record(*, tenant: Tenant, parsed: ParsedEmail,
                  inbound_email: InboundEmail | None = None) -> list[int]:
    """A report about our outbound mail, a delivery failure or a spam complaint, recorded
    (see ``delivery_bounce_record`` and ``complaint_record``); returns the messages it is
    about ([] for any other mail)."""
    if parsed.bounce is not None:
        return delivery_bounce_record(tenant=tenant, bounce=parsed.bounce,
                                      inbound_email=inbound_email)
    if parsed.complaint is not None:
        return complaint_record(tenant=tenant, complaint=parsed.complaint,
                                dmarc=parsed.dmarc, inbound_email=inbound_email)
    return []


# ------------------------------------------------------------------------ replies

MAX_ATTEMPTS = 8
MAX_AGE = timedelta(hours=24)
REFERENCES_KEEP = 20


class SendDeferred(Exception):  # noqa: N818 - a signal to the task
    """Try again after ``wait`` seconds; the message stays Pending."""

    def __init__(self, reason: str, wait: float):
        super().__init__(reason)
        self.wait = wait


def reply_subject(subject: str) -> str:
    """``Re: `` added once: "Re: x", "RE: x", "Re[2]: x" and "AW: x" are not stacked."""
    subject = (subject or "").strip() or "(no subject)"
    if re.match(r"^\s*(re|aw|sv|antw)(\[\d+\])?\s*:", subject, re.IGNORECASE):
        return subject
    return f"Re: {subject}"


def reply_create(*, ticket: Ticket, author: User, body_text: str, to: list[str] | None = None,
                 cc: list[str] | None = None,
                 attachments: list[tuple[str, bytes, str]] = (),
                 new_thread: bool = False) -> Message:
    """An agent's reply: a Pending outbound Message with our own Message-ID (registered for
    threading), written in the caller's transaction; the send is queued on commit.

    It goes out through the mailbox mapped for replies from the ticket's mailbox (default:
    that mailbox itself), or the workspace's default mailbox for a ticket that did not come
    by email; ApplicationError ``no_mailbox`` (409) when there is neither. ``to`` defaults
    to the latest inbound mail's Reply-To, else its sender; ``cc`` to the ticket's CC
    addresses; our own addresses are never copied. ``new_thread``: the first message of a
    ticket we opened, its subject the ticket's title (no ``Re:``)."""
    connection = reply_connection_for(ticket=ticket)
    if connection is None:
        why = ("its mailbox only receives forwarded mail, no mailbox is chosen to send its "
               "replies," if ticket.email_connection_id else "this ticket did not come by "
               "email")
        raise ApplicationError("no_mailbox", f"There is no mailbox to reply from: {why} and "
                               "the workspace has no default mailbox.", status=409)
    latest = latest_inbound_email(ticket_id=ticket.pk)
    own = tenant_addresses(tenant_id=ticket.tenant_id)
    default_to, default_cc = reply_recipients(ticket=ticket, latest=latest, own=own)
    return _outbound_create(
        ticket=ticket, connection=connection, author=author, body_text=body_text,
        to=default_to if to is None else to, cc=default_cc if cc is None else cc,
        subject=latest.subject if latest is not None else ticket.title, own=own,
        attachments=attachments, new_thread=new_thread)


def _outbound_create(*, ticket: Ticket, connection: EmailConnection, author: User | None,
                     body_text: str, to: list[str], cc: list[str], subject: str,
                     own: set[str], attachments=(), auto_submitted: bool = False,
                     new_thread: bool = False) -> Message:
    """The Pending outbound Message, its thread reference and attachments, and the send
    queued on commit. ``own`` is every address of the workspace's mailboxes: never a
    recipient, whoever typed it (nor is the sending mailbox, whatever the caller passed).
    ApplicationError ``no_recipient`` (on ``to``) when no recipient is left."""
    own = own | connection.own_addresses
    send_size_check(connection=connection, body_text=body_text, attachments=attachments)
    recipients = list(dict.fromkeys(a for a in map(normalize_email, to) if a and a not in own))
    if not recipients:
        raise ApplicationError("no_recipient", "The reply has no recipient outside our own "
                               "mailboxes.", field="to")
    copies = list(dict.fromkeys(a for a in map(normalize_email, cc)
                                if a and a not in own and a not in recipients))
    with transaction.atomic():
        message = Message.objects.create(
            tenant_id=ticket.tenant_id, ticket=ticket, kind=MessageKind.OUTBOUND,
            subject=ticket_subject(ticket=ticket, subject=subject if new_thread
                                   else reply_subject(subject))[:998],
            body_text=body_text, author_user=author,
            body_html=linebreaks(body_text, autoescape=True),
            delivery_status=DeliveryStatus.PENDING, to_addresses=recipients,
            cc_addresses=copies, email_connection=connection, auto_submitted=auto_submitted,
            message_id_header=_new_message_id(connection),
        )
        EmailThreadRef.objects.create(tenant_id=ticket.tenant_id, ticket=ticket,
                                      message=message,
                                      message_id_header=message.message_id_header)
        if attachments:
            attachments_add(message=message, files=[(n, c, t, "", False)
                                                    for n, c, t in attachments])
        Ticket.objects.filter(pk=ticket.pk).update(updated_at=timezone.now())
        webhooks_out.message_created_emit(message=message)
        transaction.on_commit(lambda: _queue_send(message.pk))
    return message


def estimated_mime_bytes(*, body_text: str, attachments=()) -> int:
    """About how big the reply's MIME will be: each file base64-encoded (4/3, plus line
    breaks every 76 characters), the text twice (plain and HTML), headers."""
    files = sum(-(-len(content) // 3) * 4 * 78 // 76 for _, content, _ in attachments)
    return files + 2 * len(body_text.encode()) + 8192


def send_size_check(*, connection: EmailConnection, body_text: str, attachments=()) -> None:
    """Refuse, before anything is written, a reply bigger than the mailbox's provider can
    send with our headers (``max_send_bytes``; Microsoft 365's sendMail takes 4 MB per
    request, base64 included, and its large-message upload path cannot keep our threading
    headers, so a bigger reply could only go out unthreaded). ApplicationError on
    ``attachments``."""
    if not providers.is_enabled(connection.provider):
        return
    limit = getattr(providers.get(connection.provider), "max_send_bytes", None)
    size = estimated_mime_bytes(body_text=body_text, attachments=attachments)
    if limit and size > limit:
        raise ApplicationError(
            "message_too_large_for_mailbox",
            f"This reply would be about {size / 1e6:.1f} MB once encoded; "
            f"{connection.provider_label} sends at most {limit / 1e6:.1f} MB from "
            f"{connection.address} with our threading headers. Remove attachments or share "
            "a link instead. Nothing was sent.", field="attachments", status=413)


# ------------------------------------------------------------ acknowledgements

ACK_WINDOW = timedelta(hours=1)
ACK_MAX_AGE = timedelta(days=1)
ROBOT_LOCAL_PARTS = re.compile(
    r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|bounces?|notifications?)([+\-.]|$)",
    re.IGNORECASE)


def acknowledgement_skip_reason(*, ticket: Ticket, parsed: ParsedEmail, address: str,
                                tenant_addresses: set[str]) -> str:
    """Why the new ticket's acknowledgement must not go to ``address`` ("" when it may).

    Never to an auto-submitted sender (RFC 3834), a loop suspect (our own loop header,
    one of our own addresses, a robot mailbox, or an address acknowledged within the past
    hour), a suppressed address, a sender whose DMARC verdict is fail (the From is
    likely forged: we would be mailing a bystander), or mail dated over a day ago."""
    if parsed.is_auto_reply:
        return f"auto-submitted sender ({parsed.auto_reply_reason or 'auto-reply'})"
    # RFC 3834 section 2: never answer list traffic (an answer would go to every member).
    if parsed.headers.get("list-id") or parsed.headers.get("list-unsubscribe") or \
            parsed.headers.get("precedence", "").strip().lower() in ("list", "bulk", "junk"):
        return "mailing list or bulk mail"
    if parsed.loop_marker or address in tenant_addresses or \
            ROBOT_LOCAL_PARTS.match(address.split("@", 1)[0]):
        return "loop suspect"
    if parsed.dmarc == "fail":
        return "the sender failed DMARC"
    if parsed.date is not None and parsed.date < timezone.now() - ACK_MAX_AGE:
        # Mail fetched late (a catch-up after a reconnect): a "we got it" days later helps
        # nobody and may repeat one sent while the mailbox was elsewhere.
        return "old mail (written more than a day before it was fetched)"
    if suppressed_among(tenant_id=ticket.tenant_id, addresses=[address]):
        return "the address is on the suppression list"
    recent = Message.objects.filter(
        tenant_id=ticket.tenant_id, auto_submitted=True, to_addresses__contains=[address],
        created_at__gte=timezone.now() - ACK_WINDOW).exists()
    if recent:
        return "loop suspect: acknowledged within the past hour"
    return ""


ACKNOWLEDGEMENT_FIELD = re.compile(
    r"\{(" + "|".join(ACKNOWLEDGEMENT_PLACEHOLDERS) + r")\}")


def _acknowledgement_body(template: str, ticket: Ticket) -> str:
    # Only these three placeholders: str.format would also evaluate attribute lookups.
    values = {"name": ticket.contact.display_name, "number": str(ticket.number),
              "subject": ticket.title}
    return ACKNOWLEDGEMENT_FIELD.sub(lambda m: values[m.group(1)], template)


def acknowledgement_create(*, ticket: Ticket, connection: EmailConnection,
                           parsed: ParsedEmail, tenant_addresses: set[str]
                           ) -> tuple[Message | None, str]:
    """The optional confirmation of a new email ticket (the connection's setting, off by
    default): an outbound Message marked Auto-Submitted, with the ticket number in its
    body, tracked like any reply, sent through the ticket's reply mailbox. Runs in the
    ingest transaction and tenant scope; returns (message, "") or (None, why not).

    It goes to the From address only, the one DMARC vouched for: never to a Reply-To,
    which anybody can set to a bystander's address."""
    sender = reply_connection_for(ticket=ticket)
    to = [parsed.from_.email] if parsed.from_ and parsed.from_.email else []
    if not to or sender is None:
        return None, "no sender address"
    reason = acknowledgement_skip_reason(ticket=ticket, parsed=parsed, address=to[0],
                                         tenant_addresses=tenant_addresses)
    if reason:
        return None, reason
    body = _acknowledgement_body(connection.acknowledgement_text or DEFAULT_ACKNOWLEDGEMENT,
                                 ticket)
    try:
        return _outbound_create(ticket=ticket, connection=sender, author=None,
                                body_text=body, to=to[:1], cc=[], subject=ticket.title,
                                own=tenant_addresses, auto_submitted=True), ""
    except ApplicationError as exc:  # refused before any write: the ticket must not fail
        return None, exc.message


def _new_message_id(connection: EmailConnection) -> str:
    return normalize_message_id(make_msgid(domain=connection.address.rsplit("@", 1)[-1]))


def _queue_send(message_pk: int) -> None:
    from channels_email.tasks import send_reply

    send_reply.delay(message_id=message_pk)


def _thread_context(message: Message) -> tuple[str, list[str], str]:
    """(In-Reply-To, References, provider thread id) from the ticket's latest inbound mail."""
    latest = latest_inbound_email(ticket_id=message.ticket_id)
    if latest is None:
        return "", [], ""
    refs = list(EmailThreadRef.objects.filter(ticket_id=message.ticket_id)
                .exclude(message_id=message.pk).order_by("created_at", "id")
                .values_list("message_id_header", flat=True))
    parent = latest.message_id_header
    chain = [r for r in refs if r != parent]
    chain = (chain[:1] + chain[1:][-(REFERENCES_KEEP - 2):]) if chain else []
    # A provider thread id means something in its own mailbox only: a reply sent through
    # another mailbox threads by its headers alone.
    thread_id = latest.provider_thread_id \
        if latest.connection_id == message.email_connection_id else ""
    return parent, [*chain, parent] if parent else chain, thread_id


def build_mime(message: Message, connection: EmailConnection) -> tuple[bytes, str]:
    """The reply as RFC 5322 bytes, and the provider thread id to send it in."""
    parent, references, thread_id = _thread_context(message)
    mime = EmailMessage()
    name, address = reply_from(inbound=message.ticket.email_connection, sending=connection)
    mime["From"] = formataddr((name, address)) if name else address
    mime["To"] = ", ".join(message.to_addresses)
    if message.cc_addresses:
        mime["Cc"] = ", ".join(message.cc_addresses)
    mime["Subject"] = message.subject
    mime["Date"] = format_datetime(timezone.now())  # when it goes out (a retry: now)
    mime["Message-ID"] = f"<{message.message_id_header}>"
    if parent:
        mime["In-Reply-To"] = f"<{parent}>"
        mime["References"] = " ".join(f"<{r}>" for r in references)
    mime[LOOP_HEADER] = str(message.tenant_id)
    if message.auto_submitted:
        mime["Auto-Submitted"] = "auto-replied"  # RFC 3834 section 5
    mime.set_content(message.body_text)
    html = message.body_html or linebreaks(message.body_text, autoescape=True)
    mime.add_alternative(html, subtype="html")
    for attachment in message.attachments.all():
        with attachment.file.open("rb") as handle:
            data = handle.read()
        maintype, _, subtype = (attachment.content_type or "application/octet-stream") \
            .partition("/")
        mime.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                            filename=attachment.filename)
    return mime.as_bytes(policy=smtp_policy), thread_id


def _this_round(message: Message) -> dict:
    """The filter that finds ``message`` only while it is in the sending round this copy of
    the task loaded: a Retry since then (a new round, maybe a new Message-ID) is left to
    its own task."""
    return {"pk": message.pk, "message_id_header": message.message_id_header,
            "retried_at": message.retried_at}


def _delivered(message: Message, sent) -> None:
    # The provider accepted it: Delivered, whatever another copy of the task wrote
    # meanwhile, except a bounce ingested while the send was in flight (the last word).
    bounced = Q(delivery_status=DeliveryStatus.BOUNCED)
    Message.objects.filter(**_this_round(message)).update(
        delivery_status=Case(When(bounced, then=F("delivery_status")),
                             default=Value(DeliveryStatus.DELIVERED), output_field=CharField()),
        delivery_error=Case(When(bounced, then=F("delivery_error")), default=Value(""),
                            output_field=TextField()),
        delivered_at=timezone.now(), provider_message_id=sent.provider_message_id[:255])
    webhooks_out.message_delivery_status_emit(tenant_id=message.tenant_id,
                                              message_ids=[message.pk])
    stored = normalize_message_id(sent.message_id_header or "")
    if stored and stored != message.message_id_header:
        # The provider rewrote our Message-ID: replies will name its id, so register both.
        EmailThreadRef.objects.bulk_create([EmailThreadRef(
            tenant_id=message.tenant_id, ticket_id=message.ticket_id, message=message,
            message_id_header=stored[:998])], ignore_conflicts=True)


def _failed(message: Message, reason: str) -> None:
    if Message.objects.filter(**_this_round(message), delivery_status=DeliveryStatus.PENDING) \
            .update(delivery_status=DeliveryStatus.FAILED, delivery_error=reason[:2000]):
        webhooks_out.message_delivery_status_emit(tenant_id=message.tenant_id,
                                                  message_ids=[message.pk])


NO_MAILBOX_REASON = ("No mailbox to send from: connect one or set a default mailbox, then "
                     "retry.")


def _sending_connection(message: Message) -> EmailConnection | None:
    """The mailbox ``message`` goes out through: its own, else (it had none, or that one
    was deleted) the one a reply on its ticket would use now, which is then kept on it."""
    if message.email_connection is not None:
        return message.email_connection
    connection = reply_connection_for(ticket=message.ticket)
    if connection is not None:
        Message.objects.filter(pk=message.pk, email_connection__isnull=True).update(
            email_connection=connection)
        message.email_connection = connection
    return connection


def deliver(message_pk: int) -> str:
    """Send one Pending outbound message through its connection; returns the new status.

    Before any second attempt the provider is asked whether it has our Message-ID among
    the sent messages already (a crash after it accepted), so nothing is sent twice.
    Raises SendDeferred when the message should be tried again later.
    """
    with unscoped():  # the id names the message; everything after runs in its tenant
        message = (Message.objects.select_related("tenant", "email_connection",
                                                  "ticket__email_connection")
                   .filter(pk=message_pk, kind=MessageKind.OUTBOUND).first())
    if message is None or message.delivery_status != DeliveryStatus.PENDING:
        return message.delivery_status if message else "missing"
    with tenant_scope(message.tenant):
        connection = _sending_connection(message)
        if connection is None:
            _failed(message, NO_MAILBOX_REASON)
            return DeliveryStatus.FAILED
        if not message.to_addresses:
            _failed(message, "The reply has no recipient: add one in To, then send it again.")
            return DeliveryStatus.FAILED
        if connection.status in (ConnectionStatus.DISCONNECTED, ConnectionStatus.TOKEN_EXPIRED):
            _failed(message, f"Not sent: {connection.address} was "
                             f"{connection.get_status_display()} (reconnect needed). Once it "
                             "is reconnected, Retry sends it.")
            return DeliveryStatus.FAILED
        if not health.may_call(connection):
            raise SendDeferred(f"connection is {connection.status}",
                               max(health.wait_seconds(connection), 5))
        client = authorized(connection)
        attempts = message.attempts + 1
        # Claim this attempt: of two copies of the task running at once (a retry and the
        # redrive sweep's), only the one whose UPDATE matches sends; the other leaves it.
        claimed = Message.objects.filter(
            **_this_round(message), delivery_status=DeliveryStatus.PENDING,
            attempts=message.attempts).update(attempts=attempts)
        if not claimed:
            return DeliveryStatus.PENDING
        try:
            sent = client.find_sent(message.message_id_header) \
                if message.attempts or message.retried_at else None
            if sent is None:
                raw, thread_id = build_mime(message, connection)
                sent = client.send(raw, thread_id)
        except providers.AuthError as exc:
            health.record_error(connection, exc)
            _failed(message, f"Not sent: the sign-in of {connection.address} had expired or been "
                             "revoked (reconnect needed). Once it is reconnected, Retry sends it.")
            return DeliveryStatus.FAILED
        except providers.RateLimited as exc:
            health.record_error(connection, exc)
            raise SendDeferred("rate limited", max(health.wait_seconds(connection), 5)) from exc
        except providers.PermanentError as exc:
            _failed(message, f"The mail provider refused the message: {exc}")
            return DeliveryStatus.FAILED
        except providers.ProviderError as exc:
            health.record_error(connection, exc)
            too_old = timezone.now() - (message.retried_at or message.created_at) > MAX_AGE
            if attempts >= MAX_ATTEMPTS or too_old:
                _failed(message, f"Gave up after {attempts} attempts: {exc}")
                return DeliveryStatus.FAILED
            raise SendDeferred(str(exc), health.backoff_seconds(attempts, base=2, cap=900)) \
                from exc
        _delivered(message, sent)
        health.record_success(connection)
        return DeliveryStatus.DELIVERED


def reply_retry(*, message: Message) -> bool:
    """Re-queue a Failed or Bounced outbound message (the Retry button) for a new round
    of attempts (8, within 24 hours from now); False when it is neither.

    A Bounced message did go out: it is sent again under a new Message-ID (the old one
    stays registered, so answers to either thread in), because the look for an accepted
    copy before sending would otherwise find the bounced one and send nothing."""
    with transaction.atomic():
        current = (Message.objects.select_for_update(of=("self",))
                   .filter(pk=message.pk, kind=MessageKind.OUTBOUND,
                           delivery_status__in=[DeliveryStatus.FAILED,
                                                DeliveryStatus.BOUNCED])
                   .select_related("email_connection").first())
        if current is None:
            return False
        fields = {"delivery_status": DeliveryStatus.PENDING, "delivery_error": "",
                  "attempts": 0, "retried_at": timezone.now()}
        if current.delivery_status == DeliveryStatus.BOUNCED:
            fields["message_id_header"] = _new_message_id(current.email_connection)
            EmailThreadRef.objects.create(tenant_id=current.tenant_id,
                                          ticket_id=current.ticket_id, message=current,
                                          message_id_header=fields["message_id_header"])
        Message.objects.filter(pk=current.pk).update(**fields)
        webhooks_out.message_delivery_status_emit(tenant_id=current.tenant_id,
                                                  message_ids=[current.pk])
        transaction.on_commit(lambda: _queue_send(current.pk))
    return True
