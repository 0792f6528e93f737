"""Outbound email and delivery tracking (DESIGN.md section 5).

For now this module holds the delivery-status hook that inbound bounces are handed to;
sending replies arrives with the outbound issue.
"""

from __future__ import annotations

from channels_email.mime import BounceInfo
from channels_email.models import EmailThreadRef
from helpdesk.models import Tenant
from tickets.models import DeliveryStatus, Message, MessageKind


def delivery_bounce_record(*, tenant: Tenant, bounce: BounceInfo) -> list[int]:
    """Mark our outbound messages that ``bounce`` refers to as Bounced.

    Matches every Message-ID the report carries (the original message's, and those of
    its In-Reply-To / References) against the ids we registered for outbound messages.
    Runs inside the caller's transaction and tenant scope. Returns the message ids marked.
    """
    ids = [i for i in dict.fromkeys([bounce.original_message_id,
                                     *bounce.referenced_message_ids]) if i]
    if not ids:
        return []
    message_ids = list(
        EmailThreadRef.objects.filter(tenant=tenant, message_id_header__in=ids,
                                      message__kind=MessageKind.OUTBOUND)
        .values_list("message_id", flat=True)
    )
    if not message_ids:
        return []
    details = "; ".join(
        " ".join(p for p in (r.recipient, r.status, r.diagnostic) if p)
        for r in bounce.recipients
    ) or "the receiving mail server rejected the message"
    Message.objects.filter(pk__in=message_ids).update(
        delivery_status=DeliveryStatus.BOUNCED, delivery_error=f"Bounced: {details}"[:2000],
    )
    return message_ids
