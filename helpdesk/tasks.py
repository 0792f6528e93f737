"""Thin Celery entry points for the core app."""

import logging

import redis
from celery import shared_task
from django.conf import settings

from helpdesk.services import invitations_purge_expired

logger = logging.getLogger(__name__)


@shared_task(name="maintenance.purge_expired_invitations")
def purge_expired_invitations() -> int:
    deleted = invitations_purge_expired()
    logger.info("invitations.purged count=%s", deleted)
    return deleted


@shared_task(name="maintenance.ping")
def ping(*, key: str, value: str) -> None:
    """Write ``value`` under ``key`` in Redis: proves a worker consumes our queues."""
    redis.Redis.from_url(settings.REDIS_URL).set(key, value, ex=300)


@shared_task(name="webhooks.deliver")
def deliver_webhook(*, event_id: int) -> str:
    """One attempt at an outgoing webhook event (``helpdesk.webhooks_out``); the
    service schedules the next one itself, so this task never retries."""
    from helpdesk.webhooks_out import webhook_attempt

    return webhook_attempt(event_id=event_id)


@shared_task(name="maintenance.redrive_webhooks")
def redrive_webhooks() -> int:
    from helpdesk.webhooks_out import webhooks_redrive

    queued = webhooks_redrive()
    if queued:
        logger.info("webhooks.redriven count=%s", queued)
    return queued


@shared_task(name="maintenance.purge_webhook_events")
def purge_webhook_events() -> int:
    from helpdesk.webhooks_out import webhooks_purge

    deleted = webhooks_purge()
    logger.info("webhooks.purged count=%s", deleted)
    return deleted
