"""Reads on the email channel shared by pages, commands and (later) the API."""

from __future__ import annotations

from django.db.models import QuerySet

from channels_email.models import EmailConnection, InboundEmail, InboundState
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


def connections_for_tenant(*, tenant: Tenant) -> QuerySet[EmailConnection]:
    return EmailConnection.objects.filter(tenant=tenant).order_by("address")
