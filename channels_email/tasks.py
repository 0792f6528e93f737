"""Thin Celery entry points for the email channel."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from channels_email.ingest import inbound_email_ingest
from channels_email.models import InboundEmail, InboundState
from helpdesk.tenancy import unscoped

logger = logging.getLogger(__name__)


@shared_task(
    name="ingest.process_inbound_email",
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5, retry_backoff_max=600, retry_jitter=True, max_retries=8,
)
def process_inbound_email(*, inbound_email_id: int) -> str:
    """Ingest one stored email. Idempotent: a processed row is left alone."""
    outcome = inbound_email_ingest(inbound_email_id=inbound_email_id)
    logger.info("ingest.done inbound_email=%s state=%s", inbound_email_id, outcome.state)
    return outcome.state


@shared_task(name="maintenance.redrive_stuck_inbound")
def redrive_stuck_inbound(*, older_than_minutes: int = 5, limit: int = 500) -> int:
    """Re-enqueue rows still ``received`` after a while (their task was lost)."""
    cutoff = timezone.now() - timedelta(minutes=older_than_minutes)
    # Unscoped: a sweep over every tenant; each task enters its row's scope.
    with unscoped():
        ids = list(InboundEmail.objects.filter(state=InboundState.RECEIVED,
                                               received_at__lt=cutoff)
                   .order_by("received_at").values_list("pk", flat=True)[:limit])
    for pk in ids:
        process_inbound_email.delay(inbound_email_id=pk)
    if ids:
        logger.info("ingest.redrive count=%s", len(ids))
    return len(ids)
