"""Reads on the email channel shared by pages, commands and (later) the API."""

from __future__ import annotations

from django.db.models import QuerySet

from channels_email.models import (
    ConnectionStatus,
    EmailConnection,
    InboundEmail,
    InboundState,
    SuppressedAddress,
)
from helpdesk.models import Tenant

ATTENTION_STATES = (InboundState.QUARANTINED, InboundState.FAILED)


def inbound_emails_needing_attention(*, tenant: Tenant, state: str = "") -> QuerySet:
    states = [state] if state in InboundState.values else list(ATTENTION_STATES)
    return (InboundEmail.objects.filter(tenant=tenant, state__in=states)
            .select_related("connection").order_by("-received_at"))


def inbound_email_get(*, tenant: Tenant, inbound_email_id: int) -> InboundEmail:
    """Raises InboundEmail.DoesNotExist for an unknown id or another tenant's row."""
    return InboundEmail.objects.select_related("connection").get(tenant=tenant,
                                                                 pk=inbound_email_id)


def addresses_needing_reconnect(*, tenant: Tenant) -> list[str]:
    """The tenant's mailboxes that lost their sign-in (Token Expired): nothing is fetched
    or sent for them until an admin reconnects."""
    return list(EmailConnection.objects.filter(
        tenant=tenant, status=ConnectionStatus.TOKEN_EXPIRED)
        .order_by("address").values_list("address", flat=True))


def connections_for_tenant(*, tenant: Tenant) -> QuerySet[EmailConnection]:
    return EmailConnection.objects.filter(tenant=tenant).order_by("address")


def reply_connection_for(*, ticket) -> EmailConnection | None:
    """The mailbox replies on ``ticket`` go out through: the one mapped for replies from the
    ticket's own mailbox (default: that mailbox), else the workspace's default mailbox
    (tickets that did not come by email). None when there is neither."""
    inbound = ticket.email_connection
    if inbound is not None:
        if inbound.reply_connection_id:
            # A mapped mailbox that was disconnected since falls back to the ticket's own.
            mapped = (EmailConnection.objects.filter(tenant_id=ticket.tenant_id,
                                                     pk=inbound.reply_connection_id)
                      .exclude(status=ConnectionStatus.DISCONNECTED).first())
            if mapped is not None:
                return mapped
        return inbound
    return (EmailConnection.objects.filter(tenant_id=ticket.tenant_id, is_default=True)
            .exclude(status=ConnectionStatus.DISCONNECTED).first())


def latest_inbound_email(*, ticket_id: int) -> InboundEmail | None:
    """The InboundEmail of the ticket's latest customer mail by arrival: what a reply
    answers (its Reply-To and sender, subject, Message-ID and provider thread)."""
    from tickets.models import MessageKind

    return (InboundEmail.objects.filter(ticket_id=ticket_id, message__isnull=False,
                                        message__kind=MessageKind.INBOUND)
            .order_by("-received_at", "-id").first())


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


def tenant_addresses(*, tenant_id: int) -> set[str]:
    """Every address of the workspace's mailboxes, connected and alias, lower case."""
    addresses = set()
    # EmailConnection.save lower-cases both.
    for address, aliases in EmailConnection.objects.filter(tenant_id=tenant_id).values_list(
            "address", "alias_addresses"):
        addresses.add(address)
        addresses.update(aliases)
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
