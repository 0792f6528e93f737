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
