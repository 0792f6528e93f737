"""Thin Celery entry points for the email channel."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models.functions import Coalesce
from django.utils import timezone

from channels_email.ingest import FetchDeferred, inbound_email_ingest
from channels_email.models import ConnectionStatus, InboundEmail, InboundState
from helpdesk.tenancy import unscoped

logger = logging.getLogger(__name__)


DEFERRED_RETRIES = 10


@shared_task(bind=True, name="ingest.process_inbound_email",
             autoretry_for=(OperationalError, InterfaceError),
             retry_backoff=5, retry_backoff_max=600, retry_jitter=True, max_retries=8)
def process_inbound_email(self, *, inbound_email_id: int) -> str:
    """Ingest one stored email. Idempotent: a processed row is left alone. When the
    provider cannot be asked now, retry later, a bounded number of times: the row stays
    received, and beat's redrive sweep picks it up once the retries run out (so copies of
    this task cannot pile up while a mailbox waits)."""
    try:
        outcome = inbound_email_ingest(inbound_email_id=inbound_email_id)
    except FetchDeferred as deferred:
        logger.info("ingest.deferred inbound_email=%s reason=%s", inbound_email_id, deferred)
        if self.request.retries >= DEFERRED_RETRIES:
            return "deferred"
        countdown = min(deferred.wait, settings.CELERY_MAX_COUNTDOWN_SECONDS)
        raise self.retry(countdown=countdown, max_retries=None) from deferred
    logger.info("ingest.done inbound_email=%s state=%s", inbound_email_id, outcome.state)
    return outcome.state


@shared_task(name="maintenance.redrive_stuck_inbound")
def redrive_stuck_inbound(*, older_than_minutes: int = 5, limit: int = 500) -> int:
    """Re-enqueue rows still ``received`` after a while (their task was lost or gave up).
    Rows of a mailbox whose sign-in expired wait for Reconnect instead of re-polling."""
    cutoff = timezone.now() - timedelta(minutes=older_than_minutes)
    # Unscoped: a sweep over every tenant; each task enters its row's scope.
    with unscoped():
        ids = list(InboundEmail.objects.filter(state=InboundState.RECEIVED,
                                               received_at__lt=cutoff)
                   .exclude(connection__status=ConnectionStatus.TOKEN_EXPIRED)
                   .order_by("received_at").values_list("pk", flat=True)[:limit])
    for pk in ids:
        process_inbound_email.delay(inbound_email_id=pk)
    if ids:
        logger.info("ingest.redrive count=%s", len(ids))
    return len(ids)


@shared_task(bind=True, name="ingest.sync_connection", max_retries=None,
             autoretry_for=(OperationalError, InterfaceError),
             retry_backoff=5, retry_backoff_max=600, retry_jitter=True)
def sync_connection(self, *, connection_id: int, trigger: str = "push") -> str:
    """Walk a mailbox's new messages into InboundEmail rows (see ``sync.py``). A database
    that cannot be reached is retried with backoff: the push's coalescing mark stays set
    until this sync runs, so giving up would leave later pushes coalesced into nothing."""
    from channels_email import health, providers
    from channels_email.sync import SyncBusy, connection_sync

    try:
        result = connection_sync(connection_id, trigger)
    except SyncBusy as busy:
        # One more sync is wanted (a push came in during the running one).
        raise self.retry(countdown=5) from busy
    except providers.AuthError:
        return "token_expired"  # health recorded it; Reconnect runs the catch-up
    except providers.ProviderError as exc:
        if self.request.retries >= 10:
            return "gave_up"  # the reconciliation sweep tries again in a few minutes
        wait = getattr(exc, "retry_after", None) or health.backoff_seconds(
            self.request.retries + 1, base=10, cap=900)
        raise self.retry(countdown=wait) from exc
    return result.state


@shared_task(name="maintenance.reconcile_connections")
def reconcile_connections() -> int:
    """The safety net behind pushes: queue a (coalesced) sync of every connected mailbox,
    so a lost push delays a ticket but never loses it."""
    from channels_email import providers
    from channels_email.models import ConnectionStatus, EmailConnection
    from channels_email.sync import sync_request

    # Unscoped: a sweep over every tenant; each sync enters its connection's scope.
    with unscoped():
        ids = list(EmailConnection.objects.filter(
            status__in=[ConnectionStatus.ACTIVE, ConnectionStatus.RATE_LIMITED],
            provider__in=providers.names_with(providers.Capability.CURSOR_SYNC),
        ).values_list("pk", flat=True))
    return sum(sync_request(pk, "reconcile") for pk in ids)


@shared_task(name="maintenance.refresh_tokens")
def refresh_tokens() -> int:
    """Refresh every access token that expires within the next quarter hour."""
    from channels_email import health, providers
    from channels_email.models import ConnectionStatus, EmailConnection
    from channels_email.tokens import BEAT_MARGIN, ensure_fresh_token
    from helpdesk.tenancy import tenant_scope

    refreshed = 0
    # Unscoped: a sweep over every tenant; each refresh runs in its connection's scope.
    with unscoped():
        connections = list(EmailConnection.objects.select_related("tenant").filter(
            status__in=[ConnectionStatus.ACTIVE, ConnectionStatus.RATE_LIMITED],
            provider__in=providers.names_with(providers.Capability.OAUTH_SIGN_IN)))
    for conn in connections:
        with tenant_scope(conn.tenant):
            try:
                refreshed += ensure_fresh_token(conn, BEAT_MARGIN)
            except providers.ProviderError as exc:
                # invalid_grant: Token Expired now, not at the next fetch.
                status = health.record_error(conn, exc)
                logger.warning("tokens.refresh_failed connection=%s status=%s", conn.pk,
                               status)
    return refreshed


@shared_task(name="maintenance.renew_watches")
def renew_watches(*, within_hours: int = 36) -> int:
    """Renew every watch that expires within ``within_hours`` (a provider's watch or
    subscription: Gmail's last 7 days, and Google asks for a daily renewal). A failure is
    recorded on the connection's health, so a watch that could not be renewed shows on
    the Email channels page."""
    from channels_email import providers
    from channels_email.connect import watch_renew
    from channels_email.models import ConnectionStatus, EmailConnection
    from helpdesk.tenancy import tenant_scope

    horizon = timezone.now() + timedelta(hours=within_hours)
    # Unscoped: a sweep over every tenant; each renewal runs in its connection's scope.
    with unscoped():
        due = list(EmailConnection.objects.select_related("tenant").filter(
            status__in=[ConnectionStatus.ACTIVE, ConnectionStatus.RATE_LIMITED],
            provider__in=providers.names_with(providers.Capability.PUSH),
        ).exclude(subscription_expires_at__gt=horizon))
    renewed = 0
    for conn in due:
        with tenant_scope(conn.tenant):
            renewed += watch_renew(conn)
    return renewed


@shared_task(name="ingest.start_watch")
def start_watch(*, connection_id: int, fresh_token: bool = False) -> bool:
    """Start (or renew, with a fresh token first when ``fresh_token``) the push watch of
    a mailbox (``connect.connection_watch_start``): in a task, never in the OAuth callback
    request, nor in the webhook request a provider's lifecycle event arrived in."""
    from channels_email.connect import connection_watch_start

    return connection_watch_start(connection_id=connection_id, fresh_token=fresh_token)


@shared_task(bind=True, name="outbound.send_reply", max_retries=None,
             autoretry_for=(OperationalError, InterfaceError), retry_backoff=5)
def send_reply(self, *, message_id: int) -> str:
    """Deliver one outbound reply (see ``outbound.deliver``)."""
    from channels_email.outbound import SendDeferred, deliver

    try:
        return deliver(message_id)
    except SendDeferred as deferred:
        countdown = min(deferred.wait, settings.CELERY_MAX_COUNTDOWN_SECONDS)
        raise self.retry(countdown=countdown) from deferred


@shared_task(name="maintenance.redrive_pending_replies")
def redrive_pending_replies(*, older_than_minutes: int = 10, limit: int = 500) -> int:
    """Re-queue outbound messages still Pending after a while (their task was lost). A
    re-sent task checks the provider for our Message-ID first, so nothing goes twice."""
    from tickets.models import DeliveryStatus, Message, MessageKind

    cutoff = timezone.now() - timedelta(minutes=older_than_minutes)
    # Unscoped: a sweep over every tenant; each send enters its message's scope.
    with unscoped():
        ids = list(Message.objects.filter(kind=MessageKind.OUTBOUND,
                                          delivery_status=DeliveryStatus.PENDING)
                   .alias(queued_at=Coalesce("retried_at", "created_at"))
                   .filter(queued_at__lt=cutoff)
                   .order_by("created_at").values_list("pk", flat=True)[:limit])
    for pk in ids:
        send_reply.delay(message_id=pk)
    return len(ids)
