"""Reads on the email channel shared by pages, commands and (later) the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.timesince import timesince

from channels_email import providers
from channels_email.models import (
    ConnectionStatus,
    EmailConnection,
    InboundEmail,
    InboundState,
    SuppressedAddress,
)
from helpdesk.models import Tenant

ATTENTION_STATES = (InboundState.SKIPPED, InboundState.QUARANTINED, InboundState.FAILED)
# No successful sync for this long while errors keep coming: the health page says the
# mailbox is not syncing, whatever kind the errors are (pushes and the reconciliation
# sweep both run far more often than this).
NOT_SYNCING_AFTER = timedelta(minutes=15)

# Colour of a badge: ok (green), warn (amber), bad (red).
_STATUS_TONE = {ConnectionStatus.ACTIVE: "ok", ConnectionStatus.RATE_LIMITED: "warn",
                ConnectionStatus.TOKEN_EXPIRED: "bad", ConnectionStatus.DISCONNECTED: "bad"}


@dataclass(frozen=True)
class HealthFlag:
    label: str
    tone: str
    detail: str


@dataclass(frozen=True)
class ConnectionHealth:
    """What the health block shows for one connection (the list and the mailbox's page
    render the same one, ``channels_email/_health.html``)."""

    connection: EmailConnection
    tone: str
    flags: tuple[HealthFlag, ...]
    # The last error happened before the last successful sync: history, not a problem now.
    last_error_past: bool
    now: datetime

    # The provider's own wording of the status when it has one (providers.health_status).
    custom_label: str = ""

    @property
    def status_label(self) -> str:
        conn = self.connection
        return self.custom_label or providers.status_label(conn.provider, conn.status,
                                                           conn.get_status_display())

    @property
    def last_sync_label(self) -> str:
        return providers.last_sync_label(self.connection.provider)

    @property
    def error_help(self) -> tuple[str, str] | None:
        """(url, label) of the page that fixes the last error, when its provider names
        one (an organization's admin consent); the health block links it."""
        conn = self.connection
        return providers.error_help(conn.provider, conn.status, conn.last_error)

    @property
    def last_sync_age(self) -> str:
        return age_in_words(self.connection.last_sync_at, self.now)

    @property
    def last_error_age(self) -> str:
        return age_in_words(self.connection.last_error_at, self.now)

    @property
    def rate_limited_until(self) -> datetime | None:
        conn = self.connection
        return conn.rate_limited_until if conn.status == ConnectionStatus.RATE_LIMITED \
            else None


def connection_health(connection: EmailConnection, *, now: datetime | None = None
                      ) -> ConnectionHealth:
    """The status badge, the flags (Not syncing, Failing, Watch expired, Pushes missing)
    and whether the last error is past, from the connection's own fields (no query)."""
    now = now or timezone.now()
    conn, flags = connection, []
    last_sync, last_error = conn.last_sync_at, conn.last_error_at
    live = conn.status != ConnectionStatus.DISCONNECTED
    # A connection that never synced counts from when it was connected.
    good_since = last_sync or conn.created_at
    if (live and conn.consecutive_errors and last_error is not None and good_since
            and last_error > good_since and now - good_since > NOT_SYNCING_AFTER):
        since = timezone.localtime(good_since).strftime("%Y-%m-%d %H:%M")
        flags.append(HealthFlag(
            "Not syncing", "bad",
            f"no successful sync since {since}" if last_sync else
            f"no successful sync since it was connected ({since})"))
    if conn.failing:
        flags.append(HealthFlag("Failing", "bad", f"{conn.consecutive_errors} errors in a "
                                                  "row; it keeps retrying"))
    if conn.watch_expired:
        expired = timezone.localtime(conn.subscription_expires_at).strftime("%Y-%m-%d %H:%M")
        flags.append(HealthFlag("Watch expired", "bad",
                                f"pushes stopped at {expired}; until the watch is renewed "
                                "the periodic sweep finds new mail"))
    if conn.pushes_missing:
        missed = timezone.localtime(conn.missed_push_at).strftime("%H:%M")
        last_push = (timezone.localtime(conn.last_push_at).strftime("%Y-%m-%d %H:%M")
                     if conn.last_push_at else "never")
        flags.append(HealthFlag("Pushes missing", "warn",
                                f"mail found by the sweep at {missed}; last push {last_push}"))
    tone, custom_label = _STATUS_TONE.get(conn.status, "bad"), ""
    worded = providers.health_status(conn)
    if worded is not None:
        custom_label, tone = worded
    return ConnectionHealth(
        connection=conn, tone=tone, flags=tuple(flags),
        last_error_past=bool(last_error and last_sync and last_sync > last_error), now=now,
        custom_label=custom_label)


def age_in_words(moment: datetime | None, now: datetime) -> str:
    """"just now", "5 minutes ago", "2 days, 3 hours ago"; empty for no moment."""
    if moment is None:
        return ""
    if now - moment < timedelta(minutes=1):
        return "just now"
    return f"{timesince(moment, now)} ago"


# The first word of a stored reason (``code: details``), in plain words. The details after
# the colon are written for people already.
REASON_WORDS = {
    "loop": "Mail loop", "bounce": "Bounce", "delay": "Delivery delay warning",
    "complaint": "Spam complaint", "challenge": "Challenge-response request",
    "auto_reply": "Automatic reply", "blocked": "Block list",
    "domain_not_allowed": "Sender domain not allowed",
    "sender_rate_limit": "Too much mail from one sender",
    "replies_not_allowed": "Replies not accepted",
    "new_threads_not_allowed": "New conversations not accepted",
    "unknown_sender": "Unknown sender", "connection_disconnected": "Mailbox disconnected",
    "gone": "Gone from the mailbox", "duplicate": "Duplicate", "error": "Processing error",
    "too_large": "Too large", "too_deep": "Nested too deeply", "too_slow": "Too slow to read",
    "too_many_attachments": "Too many attachments", "unparseable": "Unreadable",
    "no_sender": "No sender", "forwarding_confirmation": "Forwarding confirmation",
}


def reason_in_words(reason: str) -> tuple[str, str]:
    """(heading, details) of a stored skip, quarantine or failure reason: the code in
    plain words, and the rest; an unknown code stays as it was written."""
    code, sep, details = (reason or "").partition(": ")
    if sep and code in REASON_WORDS:
        return REASON_WORDS[code], details
    return "", reason or ""


def inbound_emails_needing_attention(*, tenant: Tenant, state: str = "") -> QuerySet:
    """Skipped, quarantined and failed mail of the workspace, newest first; ``state`` (one
    of those three) narrows it to one."""
    states = [state] if state in ATTENTION_STATES else list(ATTENTION_STATES)
    return (InboundEmail.objects.filter(tenant=tenant, state__in=states)
            .select_related("connection").order_by("-received_at"))


def inbound_email_get(*, tenant: Tenant, inbound_email_id: int) -> InboundEmail:
    """Raises InboundEmail.DoesNotExist for an unknown id or another tenant's row."""
    return InboundEmail.objects.select_related("connection").get(tenant=tenant,
                                                                 pk=inbound_email_id)


def addresses_needing_reconnect(*, tenant: Tenant,
                                mailboxes: list[EmailConnection] | None = None) -> list[str]:
    """The tenant's mailboxes that lost their sign-in (Token Expired): nothing is fetched
    or sent for them until an admin reconnects. ``mailboxes``: the tenant's mailboxes
    (``tenant_mailboxes``) when the caller has them, instead of a query."""
    if mailboxes is not None:
        return [m.address for m in mailboxes if m.status == ConnectionStatus.TOKEN_EXPIRED]
    return list(EmailConnection.objects.filter(
        tenant=tenant, status=ConnectionStatus.TOKEN_EXPIRED)
        .order_by("address").values_list("address", flat=True))


# What a page that only shows mailboxes never reads: loaded if something does read it.
MAILBOX_SECRETS = ("credentials", "subscription_secret", "cursor")


def tenant_mailboxes(*, tenant_id: int) -> list[EmailConnection]:
    """Every mailbox of the workspace by address, in one query, without its secrets (see
    MAILBOX_SECRETS): what the ticket page takes its reply mailbox
    (``reply_connection_for``), the workspace's own addresses (``tenant_addresses``) and
    the mailboxes that lost their sign-in (``addresses_needing_reconnect``) from."""
    return list(EmailConnection.objects.filter(tenant_id=tenant_id)
                .defer(*MAILBOX_SECRETS).order_by("address", "id"))


def connections_for_tenant(*, tenant: Tenant) -> QuerySet[EmailConnection]:
    return EmailConnection.objects.filter(tenant=tenant).order_by("address")


def connections_with_health(*, tenant: Tenant) -> list[ConnectionHealth]:
    """Every connection of the workspace (by address) with its health, in one query."""
    now = timezone.now()
    return [connection_health(c, now=now) for c in connections_for_tenant(tenant=tenant)
            .select_related("routing_team", "routing_flow", "reply_connection")]


def reply_connection_for(*, ticket, mailboxes: list[EmailConnection] | None = None
                         ) -> EmailConnection | None:
    """The mailbox replies on ``ticket`` go out through (``reply_connection_of`` its
    mailbox). ``mailboxes``: the ticket's workspace's mailboxes (``tenant_mailboxes``) when
    the caller has them already."""
    return reply_connection_of(tenant_id=ticket.tenant_id,
                               inbound_id=ticket.email_connection_id, mailboxes=mailboxes)


def reply_connection_of(*, tenant_id: int, inbound_id: int | None,
                        mailboxes: list[EmailConnection] | None = None
                        ) -> EmailConnection | None:
    """The mailbox replies to mail of mailbox ``inbound_id`` go out through: the one
    mapped for its replies (a mapped one disconnected since falls back), else that mailbox
    itself, else the workspace's default mailbox (mail that did not come by email, and
    that of a mailbox that only receives, like a forwarding one). None when there is
    neither. One read of the workspace's mailboxes (none when ``mailboxes`` is given)."""
    if mailboxes is None:
        mailboxes = tenant_mailboxes(tenant_id=tenant_id)
    by_id = {m.pk: m for m in mailboxes}
    inbound = by_id.get(inbound_id)
    if inbound is not None:
        mapped = by_id.get(inbound.reply_connection_id)
        if mapped is not None and mapped.status != ConnectionStatus.DISCONNECTED:
            return mapped
        if not inbound.receives_forwarded:
            return inbound
    return min((m for m in mailboxes if m.is_default and not m.receives_forwarded
                and m.status != ConnectionStatus.DISCONNECTED), key=lambda m: m.pk, default=None)


def reply_from(*, inbound: EmailConnection | None, sending: EmailConnection
               ) -> tuple[str, str]:
    """(display name, address) a reply sent through ``sending`` for a ticket of mailbox
    ``inbound`` is From: the address the customer wrote to when ``sending`` may send as it
    (it is ``sending``'s own address or one of its alias addresses: an admin who lists it
    there says that mailbox owns it), else ``sending``'s own address. The name is the
    inbound mailbox's sender name when its address is used, else ``sending``'s."""
    if inbound is not None and inbound.pk != sending.pk and \
            inbound.address in sending.alias_addresses:
        return inbound.display_name or sending.display_name, inbound.address
    return sending.display_name, sending.address


def latest_inbound_email(*, ticket_id: int) -> InboundEmail | None:
    """The InboundEmail of the ticket's latest customer mail by arrival: what a reply
    answers (its Reply-To and sender, subject, Message-ID and provider thread)."""
    from tickets.models import MessageKind

    return (InboundEmail.objects.filter(ticket_id=ticket_id, message__isnull=False,
                                        message__kind=MessageKind.INBOUND)
            .order_by("-received_at", "-id").first())


def latest_inbound_email_of(timeline) -> InboundEmail | None:
    """What ``latest_inbound_email`` finds, from the ticket's timeline already read
    (``tickets.selectors.ticket_timeline``: its messages with their InboundEmails, which
    move with them in a merge) instead of a query: the latest by arrival of the inbound
    messages' emails."""
    from tickets.models import MessageKind

    emails = [e for m in timeline if m.kind == MessageKind.INBOUND
              for e in m.inbound_emails.all()]
    return max(emails, key=lambda e: (e.received_at, e.pk), default=None)


def reply_recipients(*, ticket, latest=..., own: set[str] | None = None
                     ) -> tuple[list[str], list[str]]:
    """(To, CC) for a reply: To is the latest inbound mail's Reply-To, else its sender,
    else the ticket's contact; CC is the ticket's contact when somebody else wrote the
    latest mail (a CC'd colleague answered: the customer stays in the conversation; the
    customer's own Reply-To is respected), then the ticket's CC addresses; never an
    address of the workspace's mailboxes (connected or alias), never the To again.
    ``latest`` (``latest_inbound_email``) and ``own`` (``tenant_addresses``) are looked
    up when the caller has not already."""
    if latest is ...:
        latest = latest_inbound_email(ticket_id=ticket.pk)
    if own is None:
        own = tenant_addresses(tenant_id=ticket.tenant_id)
    candidates, contact = [], ticket.contact.email
    copy_contact = False
    if latest is not None:
        sender = latest.from_address
        candidates += [(latest.details or {}).get("reply_to", []), [sender]]
        copy_contact = bool(sender) and sender != contact
    candidates.append([contact])
    # The first of Reply-To, From, contact that names somebody outside our own mailboxes.
    outside = ([a for a in c if a and a not in own] for c in candidates)
    to = next((c for c in outside if c), [])
    cc = [a for a in dict.fromkeys([contact] * copy_contact + ticket.cc_addresses)
          if a not in own and a not in to]
    return to, cc


def tenant_addresses(*, tenant_id: int, mailboxes: list[EmailConnection] | None = None
                     ) -> set[str]:
    """Every address of the workspace's mailboxes, connected and alias, lower case, and
    the generated addresses forwarded mail reaches us at (a forwarding mailbox's support
    address is its own address: mail from it is ours, a loop). ``mailboxes``: those
    mailboxes (``tenant_mailboxes``) when the caller has them."""
    addresses = set()
    rows = ([(m.address, m.alias_addresses, m.inbound_address) for m in mailboxes]
            if mailboxes is not None else EmailConnection.objects.filter(
                tenant_id=tenant_id).values_list("address", "alias_addresses",
                                                 "inbound_address"))
    # EmailConnection.save lower-cases both.
    for address, aliases, inbound in rows:
        addresses.add(address)
        addresses.update(aliases)
        if inbound:
            addresses.add(inbound)
    return addresses


def suppressed_among(*, tenant_id: int, addresses) -> dict[str, SuppressedAddress]:
    """The suppression entries for any of ``addresses`` (case-insensitive), by address."""
    wanted = [a.lower() for a in addresses if a]
    if not wanted:
        return {}
    return {s.email: s for s in SuppressedAddress.objects.filter(tenant_id=tenant_id,
                                                                 email__in=wanted)}


def suppressions_for_tenant(*, tenant: Tenant) -> QuerySet[SuppressedAddress]:
    return SuppressedAddress.objects.filter(tenant=tenant).order_by("-created_at", "-id")


def inbound_email_log(*, tenant: Tenant, state: str = "") -> QuerySet[InboundEmail]:
    """Every InboundEmail of ``tenant`` (``state`` narrows it); no raw bytes loaded."""
    rows = InboundEmail.objects.filter(tenant=tenant).defer("details")
    return rows.filter(state=state) if state else rows


@dataclass(frozen=True)
class ForwardingOverview:
    """What a forwarding mailbox's page shows: the generated address, how to forward to it
    at the common mail services, the latest forwarding confirmation that arrived (code and
    link), and where replies go out and From which address."""

    inbound_address: str
    guides: tuple
    confirmation: dict | None
    confirmation_at: datetime | None
    sending: EmailConnection | None
    sending_is_mapped: bool
    from_address: str


def forwarding_overview(connection: EmailConnection) -> ForwardingOverview | None:
    """None for a mailbox that is not forwarded to us."""
    if not connection.receives_forwarded:
        return None
    latest = (InboundEmail.objects.filter(connection=connection,
                                          reason__startswith="forwarding_confirmation:")
              .order_by("-received_at", "-id").only("details", "received_at").first())
    confirmation = dict((latest.details or {}).get("forwarding_confirmation") or {}) \
        if latest is not None else None
    if confirmation:
        from channels_email.providers.forwarding.confirmation import shown_link

        confirmation["link"] = shown_link(str(confirmation.get("link", "")))
    sending = reply_connection_of(tenant_id=connection.tenant_id, inbound_id=connection.pk)
    mapped = sending is not None and sending.pk == connection.reply_connection_id
    from_address = reply_from(inbound=connection, sending=sending)[1] if sending else ""
    return ForwardingOverview(
        inbound_address=connection.inbound_address,
        guides=providers.get(connection.provider).setup_guides(connection),
        confirmation=confirmation or None,
        confirmation_at=latest.received_at if confirmation else None,
        sending=sending, sending_is_mapped=mapped, from_address=from_address)
