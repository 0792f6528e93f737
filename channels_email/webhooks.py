"""Provider webhooks: verify, coalesce per connection in Redis, enqueue, answer.

Contract of ``google_pubsub`` (``POST /webhooks/google/pubsub/``):
- No or unverifiable OIDC token: 401 (missing) or 403 (bad signature, expired, wrong
  audience, issuer or service account); nothing changes. Google's certs unreachable: 503.
- Malformed body (bad JSON, nesting too deep to parse, an address with control
  characters such as NUL): 400. Unknown or disconnected mailbox: 204 and a log line
  (Pub/Sub would otherwise retry for days).
- Otherwise mark "sync wanted" for the connection in Redis and, when no sync was pending,
  enqueue one; 204. Writes no database row (it reads the mailbox -> connection mapping,
  cached). If Redis cannot be reached (the mapping's cache, the coalescing mark) or the
  task cannot be enqueued: 503, so that Pub/Sub retries the push.
"""

from __future__ import annotations

import logging
import time

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from channels_email import providers
from channels_email.models import ConnectionStatus, EmailConnection
from helpdesk.tenancy import unscoped

logger = logging.getLogger(__name__)
CONNECTION_CACHE_SECONDS = 60


_LOCAL: dict[str, tuple[float, int]] = {}
LOCAL_CACHE_SECONDS = 10


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


@csrf_exempt
@require_POST
def google_pubsub(request: HttpRequest) -> HttpResponse:
    gmail = providers.get("gmail")
    authorization = request.headers.get("Authorization", "")
    if not authorization:
        return HttpResponse("missing bearer token", status=401, content_type="text/plain")
    try:
        gmail.verify_push(authorization)
    except providers.AuthError as exc:
        logger.warning("webhook.google.rejected reason=%s", exc.reason or exc)
        return HttpResponse("forbidden", status=403, content_type="text/plain")
    except providers.ProviderError as exc:  # Google's certs unreachable: Pub/Sub retries
        logger.warning("webhook.google.cannot_verify reason=%s", exc.reason or exc)
        return HttpResponse("try again", status=503, content_type="text/plain")
    try:
        notifications = gmail.parse_notification(request.body, dict(request.headers))
    except providers.PermanentError:
        return HttpResponse("malformed push body", status=400, content_type="text/plain")
    from channels_email.sync import sync_request

    for note in notifications:
        try:
            connection_id = connection_id_for("gmail", note.mailbox)
        except RedisError:  # the mapping's cache is in Redis: let Pub/Sub retry
            logger.warning("webhook.google.lookup_failed reason=redis_unavailable")
            return HttpResponse("try again", status=503, content_type="text/plain")
        if connection_id is None:
            logger.info("webhook.google.unknown_mailbox mailbox=%s", note.mailbox)
            continue
        try:
            sync_request(connection_id)
        except Exception:  # noqa: BLE001 - broker or Redis down: let Pub/Sub retry
            logger.exception("webhook.google.enqueue_failed connection=%s", connection_id)
            return HttpResponse("try again", status=503, content_type="text/plain")
    return HttpResponse(status=204)
