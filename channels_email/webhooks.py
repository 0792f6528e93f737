"""Provider webhooks: the provider verifies and parses, we coalesce per connection in
Redis, enqueue, answer.

Contract of ``provider_webhook`` (every ``/webhooks/<path>/`` a provider declares, see
``urlpatterns``):
- The provider's ``handle_webhook`` runs first, and verifies before it parses. Its
  ``Handshake`` is answered 200 ``text/plain`` with exactly the text; its ``Rejected``
  with its status; nothing changes for either.
- ``Accepted``: mark "sync wanted" for each connection in Redis and, when no sync was
  pending, enqueue one; for each of its ``renew_ids``, enqueue the task that renews (or
  recreates) the subscription and then syncs; answer the accepted status. Writes no
  database row (it reads the mailbox -> connection mapping, or a subscription's
  connection and the digest of its secret, both cached). If Redis cannot be reached (the
  caches, the coalescing mark), PostgreSQL cannot be reached for a lookup the caches do
  not answer, or the task cannot be enqueued: 503,
  so that the provider retries the push.
- A provider that is not enabled (the route was built under other settings): 404.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from channels_email import providers
from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.providers.base import (
    Accepted,
    Handshake,
    LookupUnavailable,
    Rejected,
    SubscriptionOwner,
)
from helpdesk.tenancy import unscoped

logger = logging.getLogger(__name__)
CONNECTION_CACHE_SECONDS = 60


_LOCAL: dict[str, tuple[float, int]] = {}
_SUBSCRIPTIONS: dict[str, tuple[float, SubscriptionOwner]] = {}
LOCAL_CACHE_SECONDS = 10
SUBSCRIPTION_CACHE_SECONDS = 300


def connection_id_for(provider: str, mailbox: str) -> int | None:
    """The connected (not disconnected) connection of ``mailbox``, cached briefly in this
    process and in Redis; ``forget_mailbox`` drops the entries on connect and disconnect.
    A stale answer for a just-disconnected mailbox only queues a sync that skips it."""
    key = f"mailbox-connection:{provider}:{mailbox}"
    local = _LOCAL.get(key)
    if local is not None and local[0] > time.monotonic():
        return local[1] or None
    cached = cache.get(key)
    if cached is not None:
        if len(_LOCAL) > 50_000:
            _LOCAL.clear()
        _LOCAL[key] = (time.monotonic() + LOCAL_CACHE_SECONDS, cached)
        return cached or None
    # Unscoped: a push names only the mailbox; the constraint makes it one tenant's.
    with unscoped():
        found = (EmailConnection.objects.filter(provider=provider, address=mailbox)
                 .exclude(status=ConnectionStatus.DISCONNECTED)
                 .values_list("pk", flat=True).first())
    cache.set(key, found or 0, CONNECTION_CACHE_SECONDS)
    return found


def forget_mailbox(provider: str, mailbox: str) -> None:
    key = f"mailbox-connection:{provider}:{mailbox}"
    _LOCAL.pop(key, None)
    cache.delete(key)


class CachedLookup:
    """``base.ConnectionLookup`` over the caches above; Redis errors become
    ``LookupUnavailable``."""

    def by_mailbox(self, provider: str, mailbox: str) -> int | None:
        try:
            return connection_id_for(provider, mailbox)
        except RedisError as exc:
            raise LookupUnavailable("redis_unavailable") from exc
        except (OperationalError, InterfaceError) as exc:  # PostgreSQL cannot be reached
            raise LookupUnavailable("database_unavailable") from exc

    def by_subscriptions(self, provider: str, subscription_ids: Iterable[str]
                         ) -> dict[str, SubscriptionOwner]:
        """The connection of each subscription and the digest of its secret: from this
        process's cache (a few seconds), else one Redis read for all the rest
        (``SUBSCRIPTION_CACHE_SECONDS``), else one SQL statement for what Redis did not
        have, whose answers are cached in one Redis round trip. A subscription's secret
        never changes and a new subscription has a new id; a notification for a
        connection disconnected meanwhile only queues a sync that skips it. An unknown id
        is not cached: the first notifications of a new subscription may arrive before
        its id is stored."""
        now = time.monotonic()
        owners: dict[str, SubscriptionOwner] = {}
        missing: dict[str, str] = {}  # cache key -> subscription id
        for subscription_id in subscription_ids:
            key = _owner_key(provider, subscription_id)
            local = _SUBSCRIPTIONS.get(key)
            if local is not None and local[0] > now:
                owners[subscription_id] = local[1]
            else:
                missing[key] = subscription_id
        if not missing:
            return owners
        try:
            cached = cache.get_many(list(missing))
        except RedisError as exc:
            raise LookupUnavailable("redis_unavailable") from exc
        found: dict[str, SubscriptionOwner] = {}
        for key, (connection_id, digest) in cached.items():
            found[missing.pop(key)] = SubscriptionOwner(int(connection_id), str(digest))
        if missing:
            try:
                # Unscoped: a notification names only the subscription (unique per provider).
                with unscoped():
                    rows = list(EmailConnection.objects
                                .filter(provider=provider,
                                        subscription_id__in=list(missing.values()))
                                .exclude(status=ConnectionStatus.DISCONNECTED)
                                .exclude(subscription_id="")
                                .values_list("subscription_id", "pk", "subscription_secret"))
            except (OperationalError, InterfaceError) as exc:
                raise LookupUnavailable("database_unavailable") from exc
            stored = {}
            for subscription_id, pk, secret in rows:
                owner = SubscriptionOwner.of(pk, secret or "")
                found[subscription_id] = owner
                stored[_owner_key(provider, subscription_id)] = (
                    owner.connection_id, owner.secret_digest)
            if stored:
                try:
                    cache.set_many(stored, SUBSCRIPTION_CACHE_SECONDS)
                except RedisError as exc:
                    raise LookupUnavailable("redis_unavailable") from exc
        if len(_SUBSCRIPTIONS) + len(found) > 50_000:
            _SUBSCRIPTIONS.clear()
        until = time.monotonic() + LOCAL_CACHE_SECONDS
        for subscription_id, owner in found.items():
            _SUBSCRIPTIONS[_owner_key(provider, subscription_id)] = (until, owner)
        owners.update(found)
        return owners


def _owner_key(provider: str, subscription_id: str) -> str:
    """The cache key (Redis and this process) of a subscription's owner."""
    return f"subscription-owner:{provider}:{subscription_id}"


def forget_subscription(provider: str, subscription_id: str) -> None:
    """Drop the cached owner of a subscription (on disconnect)."""
    if subscription_id:
        key = _owner_key(provider, subscription_id)
        _SUBSCRIPTIONS.pop(key, None)
        cache.delete(key)


def _text(status: int, text: str) -> HttpResponse:
    return HttpResponse(text, status=status, content_type="text/plain")


@csrf_exempt
@require_POST
def provider_webhook(request: HttpRequest, provider: str, hook: str,
                     log_key: str) -> HttpResponse:
    if not providers.is_enabled(provider):
        raise Http404("No such webhook")
    try:
        outcome = providers.get(provider).handle_webhook(hook, request, CachedLookup())
    except LookupUnavailable as exc:  # Redis or PostgreSQL down: let the provider retry
        logger.warning("webhook.%s.lookup_failed reason=%s", log_key, exc)
        return _text(503, "try again")
    if isinstance(outcome, Handshake):
        return _text(200, outcome.text)
    if isinstance(outcome, Rejected):
        return _text(outcome.status, outcome.text)
    if not isinstance(outcome, Accepted):
        raise TypeError(f"{provider}.handle_webhook answered {outcome!r}")
    from channels_email.sync import sync_request_many
    from channels_email.tasks import start_watch

    try:  # the marks in one Redis round trip, a task for each connection not pending
        sync_request_many(outcome.connection_ids)
    except Exception:  # noqa: BLE001 - broker or Redis down: let the provider retry
        logger.exception("webhook.%s.enqueue_failed connections=%s", log_key,
                         ",".join(map(str, outcome.connection_ids)))
        return _text(503, "try again")
    for connection_id in outcome.renew_ids:
        try:  # renews (or recreates) the subscription, then queues a catch-up sync
            start_watch.delay(connection_id=connection_id, fresh_token=True)
        except Exception:  # noqa: BLE001 - broker down: let the provider retry
            logger.exception("webhook.%s.enqueue_failed connection=%s", log_key,
                             connection_id)
            return _text(503, "try again")
    return HttpResponse(status=outcome.status)


def urlpatterns() -> list:
    """One URL per webhook route of every enabled provider, named
    ``webhook_<path with _ for />`` (``/webhooks/google/pubsub/`` is
    ``webhook_google_pubsub``)."""
    return [path(f"webhooks/{route.path}/", provider_webhook,
                 {"provider": name, "hook": route.hook, "log_key": route.log_key},
                 name="webhook_" + route.path.replace("/", "_"))
            for name, route in providers.webhook_routes()]
