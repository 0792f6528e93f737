"""Outgoing webhooks (DESIGN.md section 11): a workspace's endpoints, the outbox of
events for them, and the delivery of each event, signed the Standard Webhooks way
(https://www.standardwebhooks.com/).

Contract:
- ``event_emit(tenant_id=, type=, data=)`` writes one ``WebhookEvent`` (the outbox row)
  per active endpoint of the tenant subscribed to ``type``, in ONE statement inside the
  caller's transaction, and queues their delivery on commit: a change that rolls back
  sends nothing, a change that commits is delivered even if the queue was down (the
  redrive sweep finds the row). Services call it where the change happens; the hooks are
  one line each. The scope's tenant (loaded once per request or task) says which types
  some endpoint wants (``Tenant.webhook_events``): a workspace without webhooks pays no
  query, and an endpoint added mid-request is seen from the next request or task on.
- ``webhook_attempt(event_id=)`` (the ``webhooks.deliver`` task) makes one attempt: POST
  of the stored body with ``webhook-id`` (the same on every attempt), ``webhook-timestamp``
  and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` with
  each live secret, space-separated), through ``webhook_transport.guarded_session``
  (public addresses only, checked at connect; no redirects). Any 2xx delivers. Every
  attempt is a ``WebhookAttempt`` row. A failure waits ``WEBHOOK_RETRY_SCHEDULE_SECONDS``
  (jittered) and tries again; after the last one (about 27 h) the event is Failed, and an
  endpoint that has not had one success since that event was written is disabled, audited
  and its workspace's admins are emailed. Two copies of the task never both send an
  attempt: the attempt is claimed by an UPDATE on the attempt count.
- Endpoint writes (create, update, delete, rotate, test) are admin actions, audited.
  Secrets are stored encrypted (``EncryptedJSONField``) and shown to admins only.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import random
import secrets as secrets_lib
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F, QuerySet
from django.urls import reverse
from django.utils import timezone

from helpdesk.errors import ApplicationError
from helpdesk.models import (
    Membership,
    Role,
    Tenant,
    User,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookEvent,
    WebhookEventState,
    WebhookEventType,
)
from helpdesk.tenancy import active_tenant, tenant_scope, unscoped
from helpdesk.webhook_transport import AddressRefused, guarded_session, url_refusal

logger = logging.getLogger(__name__)

TEST_EVENT_TYPE = "webhook.test"
SECRET_PREFIX = "whsec_"
CLAIM_LEASE = timedelta(minutes=5)  # a worker that died mid-attempt: retried after this
ERROR_TEXT_MAX = 500


# ------------------------------------------------------------------------ signing


def secret_generate() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets_lib.token_bytes(32)).decode()


def signature(*, secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``; the key is the
    base64-decoded part of the secret after ``whsec_``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def secret_entries(endpoint: WebhookEndpoint, *, now: datetime | None = None) -> list[dict]:
    """The secrets that sign now, as {"secret", "expires_at" (datetime or None)}: the
    current one first, then any rotated-out one still within its overlap window."""
    now = now or timezone.now()
    entries = []
    for entry in endpoint.secrets or []:
        expires = datetime.fromisoformat(entry["expires_at"]) if entry.get("expires_at") \
            else None
        if expires is None or expires > now:
            entries.append({"secret": entry["secret"], "expires_at": expires})
    return entries


def live_secrets(endpoint: WebhookEndpoint) -> list[str]:
    return [entry["secret"] for entry in secret_entries(endpoint)]


def signed_headers(*, endpoint: WebhookEndpoint, webhook_id: str, body: bytes,
                   timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(signature(secret=s, webhook_id=webhook_id, timestamp=timestamp,
                                    body=body) for s in live_secrets(endpoint))
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures, "content-type": "application/json",
            "user-agent": "Helpdesk-Webhooks/1"}


def event_body(event: WebhookEvent) -> bytes:
    """The bytes sent (and signed) for ``event``: its payload, serialised the same way on
    every attempt."""
    return json.dumps(event.payload, separators=(",", ":"), sort_keys=True).encode()


# ------------------------------------------------------------------------ emitting


def _envelope(type_: str, data: dict) -> dict:
    return {"type": type_, "timestamp": timezone.now().isoformat(), "data": data}


def _wanted(tenant_id: int, type_: str) -> bool:
    """False when the scope's tenant says no endpoint wants ``type_`` (no query); True
    otherwise, also when there is no scope to ask (the INSERT then decides)."""
    tenant = active_tenant()
    if tenant is None or tenant.pk != tenant_id:
        return True
    return type_ in (tenant.webhook_events or [])


def _subscriptions_sync(tenant: Tenant) -> None:
    """Recompute ``Tenant.webhook_events`` from the active endpoints (in the caller's
    transaction, holding the tenant row's lock so concurrent endpoint changes take turns),
    also on the tenant objects at hand."""
    list(Tenant.objects.select_for_update().filter(pk=tenant.pk).values_list("pk"))
    types = sorted({t for events in WebhookEndpoint.objects.filter(tenant=tenant, is_active=True)
                    .values_list("events", flat=True) for t in events})
    Tenant.objects.filter(pk=tenant.pk).update(webhook_events=types)
    for held in (tenant, active_tenant()):
        if held is not None and held.pk == tenant.pk:
            held.webhook_events = types


def event_emit(*, tenant_id: int, type: str,  # noqa: A002 - the spec's word
               data: dict | Callable[[], dict]) -> int:
    """Outbox rows for every active endpoint of the tenant that wants ``type`` (see the
    module). Returns how many. Costs nothing when the scope's tenant has no endpoint for
    ``type`` (``Tenant.webhook_events``), else one INSERT ... SELECT. ``data`` may be a
    function that builds it, called only then (the ingest path makes none)."""
    if not _wanted(tenant_id, type):
        return 0
    if callable(data):
        data = data()
    endpoint_table = WebhookEndpoint._meta.db_table
    event_table = WebhookEvent._meta.db_table
    query = (
        f"INSERT INTO {event_table} (tenant_id, endpoint_id, webhook_id, type, payload, "  # noqa: S608
        "state, attempts, next_attempt_at, created_at) "
        "SELECT e.tenant_id, e.id, 'msg_' || replace(gen_random_uuid()::text, '-', ''), %s, "
        "%s::jsonb, %s, 0, now(), now() "
        f"FROM {endpoint_table} e WHERE e.tenant_id = %s AND e.is_active AND %s = ANY(e.events) "
        "RETURNING id"
    )
    payload = json.dumps(_envelope(type, data), default=str)
    with db_connection.cursor() as cursor:
        cursor.execute(query, [type, payload, WebhookEventState.PENDING, tenant_id, type])
        ids = [row[0] for row in cursor.fetchall()]
    if ids:
        transaction.on_commit(lambda: _queue(ids))
    return len(ids)


def _queue(ids: Iterable[int], countdown: float = 0) -> None:
    from helpdesk.tasks import deliver_webhook

    for event_id in ids:
        deliver_webhook.apply_async(kwargs={"event_id": event_id},
                                    countdown=countdown or None)


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def ticket_data(ticket) -> dict:
    return {"id": ticket.pk, "number": ticket.number, "title": ticket.title,
            "status": ticket.status, "priority": ticket.priority, "team": ticket.team_id,
            "assignee": ticket.assignee_id, "contact": ticket.contact_id,
            "tags": list(ticket.tags or []), "merged_into": ticket.merged_into_id,
            "created_at": _iso(ticket.created_at), "updated_at": _iso(ticket.updated_at)}


def ticket_created(ticket):
    """``ticket.created`` for the new ``ticket``; returns it (for ``return`` lines)."""
    event_emit(tenant_id=ticket.tenant_id, type=WebhookEventType.TICKET_CREATED,
               data=functools.partial(ticket_data, ticket))
    return ticket


def tickets_updated(*, tickets) -> int:
    """``ticket.updated`` for each ticket, as the caller holds it now."""
    return sum(event_emit(tenant_id=t.tenant_id, type=WebhookEventType.TICKET_UPDATED,
                          data=functools.partial(ticket_data, t)) for t in tickets)


def message_data(message) -> dict:
    """A message event's ``data``: ``ticket`` is the ticket's id, ``ticket_number`` the
    number the API and the pages name it by (``/api/v1/tickets/<number>/``)."""
    return {"id": message.pk, "ticket": message.ticket_id,
            "ticket_number": message.ticket.number, "kind": message.kind,
            "delivery_status": message.delivery_status or None,
            "delivery_error": message.delivery_error or "",
            "author_user": message.author_user_id, "author_contact": message.author_contact_id,
            "created_at": _iso(message.created_at)}


def message_created_emit(*, message) -> int:
    # Built only when wanted: message_data may read the ticket's number.
    return event_emit(tenant_id=message.tenant_id, type=WebhookEventType.MESSAGE_CREATED,
                      data=functools.partial(message_data, message))


def message_delivery_status_emit(*, tenant_id: int, message_ids: Iterable[int]) -> int:
    """``message.delivery_status_changed`` for each message, with its status as stored
    now (read here: the callers change it with UPDATEs)."""
    from tickets.models import Message

    if not _wanted(tenant_id, WebhookEventType.MESSAGE_DELIVERY_STATUS_CHANGED):
        return 0
    sent = 0
    for message in Message.objects.filter(pk__in=list(message_ids)).select_related("ticket"):
        sent += event_emit(tenant_id=message.tenant_id,
                           type=WebhookEventType.MESSAGE_DELIVERY_STATUS_CHANGED,
                           data=message_data(message))
    return sent


def connection_status_emit(*, connection, previous: str) -> int:
    """``connection.status_changed`` when ``connection.status`` differs from ``previous``."""
    if connection.status == previous:
        return 0
    return event_emit(tenant_id=connection.tenant_id,
                      type=WebhookEventType.CONNECTION_STATUS_CHANGED,
                      data={"id": connection.pk, "address": connection.address,
                            "provider": connection.provider, "status": connection.status,
                            "previous_status": previous,
                            "last_error": connection.last_error or ""})


# ------------------------------------------------------------------------ endpoints


def _clean(*, url: str, events: Iterable[str]) -> tuple[str, list[str]]:
    return _clean_url(url), _clean_events(events)


def _clean_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise ApplicationError("url_required", "Give the endpoint's URL.", field="url")
    if len(url) > 2000:
        raise ApplicationError("url_too_long", "At most 2000 characters.", field="url")
    refusal = url_refusal(url)
    if refusal:
        raise ApplicationError("url_refused", refusal, field="url")
    return url


def _clean_events(events: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(events or []))
    unknown = [e for e in wanted if e not in WebhookEventType.values]
    if unknown:
        raise ApplicationError("unknown_event", f"Unknown event type(s): {', '.join(unknown)}.",
                               field="events")
    if not wanted:
        raise ApplicationError("events_required", "Choose at least one event.", field="events")
    return wanted


def webhook_endpoint_create(*, tenant: Tenant, actor: User | None, url: str,
                            events: Iterable[str], description: str = "") -> WebhookEndpoint:
    """A new active endpoint with a fresh secret. Raises ApplicationError for a URL that
    is not http(s), does not resolve or leads to a refused address, and for events that
    are unknown or none."""
    url, wanted = _clean(url=url, events=events)
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            tenant=tenant, url=url, events=wanted, description=(description or "")[:200],
            secrets=[{"secret": secret_generate(), "expires_at": None}], created_by=actor)
        _audit(endpoint, actor, "webhook_endpoint.created", {"url": url, "events": wanted})
        _subscriptions_sync(tenant)
    return endpoint


def webhook_endpoint_update(*, endpoint: WebhookEndpoint, actor: User | None,
                            url: str | None = None, events: Iterable[str] | None = None,
                            description: str | None = None,
                            is_active: bool | None = None) -> WebhookEndpoint:
    """Change what is given (a changed URL is checked as on create). Enabling a
    disabled endpoint clears its failure record and sends its still pending events now."""
    new_url = endpoint.url if url is None or url.strip() == endpoint.url else _clean_url(url)
    wanted = endpoint.events if events is None else _clean_events(events)
    enabling = is_active is True and not endpoint.is_active
    with transaction.atomic():
        endpoint.url, endpoint.events = new_url, wanted
        if description is not None:
            endpoint.description = description[:200]
        if is_active is not None:
            endpoint.is_active = is_active
            if is_active:
                endpoint.disabled_reason, endpoint.disabled_at = "", None
                endpoint.consecutive_failures = 0
            elif not endpoint.disabled_at:
                endpoint.disabled_at = timezone.now()
                endpoint.disabled_reason = "Disabled by an admin."
        endpoint.save()
        _audit(endpoint, actor, "webhook_endpoint.updated",
               {"url": new_url, "events": wanted, "is_active": endpoint.is_active})
        _subscriptions_sync(endpoint.tenant)
        if enabling:
            due = list(WebhookEvent.objects.filter(
                endpoint=endpoint, state=WebhookEventState.PENDING).values_list("pk", flat=True))
            WebhookEvent.objects.filter(pk__in=due).update(next_attempt_at=timezone.now())
            transaction.on_commit(lambda: _queue(due))
    return endpoint


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor: User | None) -> None:
    """Delete the endpoint with its events and attempts (audited)."""
    with transaction.atomic():
        _audit(endpoint, actor, "webhook_endpoint.deleted", {"url": endpoint.url})
        endpoint.delete()
        _subscriptions_sync(endpoint.tenant)


def webhook_secret_rotate(*, endpoint: WebhookEndpoint, actor: User | None) -> str:
    """A new current secret; the previous one keeps signing alongside for
    ``WEBHOOK_SECRET_OVERLAP`` (receivers accept either while they switch), older ones
    stop. Returns the new secret."""
    now = timezone.now()
    fresh = secret_generate()
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        kept = [{"secret": entry["secret"],
                 "expires_at": entry.get("expires_at")
                 or (now + settings.WEBHOOK_SECRET_OVERLAP).isoformat()}
                for entry in (locked.secrets or [])[:1]]
        endpoint.secrets = [{"secret": fresh, "expires_at": None}, *kept]
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(secrets=endpoint.secrets,
                                                              updated_at=now)
        _audit(endpoint, actor, "webhook_endpoint.secret_rotated", {})
    return fresh


def webhook_endpoint_test(*, endpoint: WebhookEndpoint, actor: User | None) -> WebhookEvent:
    """Queue a ``webhook.test`` event for this endpoint alone (the "Send test event"
    button); delivered and retried like any other. Raises ApplicationError (409) for a
    disabled endpoint."""
    if not endpoint.is_active:
        raise ApplicationError("endpoint_disabled", "Enable the endpoint to send it events.",
                               status=409)
    with transaction.atomic():
        event = WebhookEvent.objects.create(
            tenant_id=endpoint.tenant_id, endpoint=endpoint,
            webhook_id="msg_" + uuid.uuid4().hex, type=TEST_EVENT_TYPE,
            payload=json.loads(json.dumps(_envelope(TEST_EVENT_TYPE, {
                "endpoint": endpoint.pk, "message": "A test event from your helpdesk."}))))
        _audit(endpoint, actor, "webhook_endpoint.tested", {"webhook_id": event.webhook_id})
        transaction.on_commit(lambda: _queue([event.pk]))
    return event


def _audit(endpoint: WebhookEndpoint, actor: User | None, action: str, details: dict) -> None:
    from helpdesk.services import audit_record

    audit_record(tenant=endpoint.tenant, actor=actor, action=action, target=endpoint,
                 details=details)


# ------------------------------------------------------------------------ selectors


def webhook_endpoints_for(*, tenant: Tenant) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(tenant=tenant).order_by("-created_at", "-id")


def webhook_endpoint_get(*, tenant: Tenant, endpoint_id: int) -> WebhookEndpoint:
    """The tenant's endpoint; WebhookEndpoint.DoesNotExist for another tenant's too."""
    return WebhookEndpoint.objects.get(tenant=tenant, pk=endpoint_id)


def webhook_attempts_for(*, endpoint: WebhookEndpoint) -> QuerySet[WebhookAttempt]:
    """The endpoint's attempts with their events, newest first."""
    return (WebhookAttempt.objects.filter(tenant_id=endpoint.tenant_id, endpoint=endpoint)
            .select_related("event").order_by("-attempted_at", "-id"))


# ------------------------------------------------------------------------ delivery


def retry_delay(attempts: int) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones (+-10% jitter);
    None when the schedule is used up."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE_SECONDS
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(0.9, 1.1)


def webhook_attempt(*, event_id: int) -> str:
    """One delivery attempt of the event, if it is due (see the module). Returns the
    event's state afterwards, or why nothing was tried ("missing", "paused", "not_due",
    "claimed")."""
    with unscoped():  # the id names the event; everything after runs in its tenant
        event = (WebhookEvent.objects.select_related("tenant", "endpoint")
                 .filter(pk=event_id).first())
    if event is None:
        return "missing"
    if event.state != WebhookEventState.PENDING:
        return event.state
    with tenant_scope(event.tenant):
        endpoint = event.endpoint
        if not endpoint.is_active:
            return "paused"
        now = timezone.now()
        if event.next_attempt_at > now + timedelta(seconds=1):
            return "not_due"
        claimed = WebhookEvent.objects.filter(
            pk=event.pk, state=WebhookEventState.PENDING, attempts=event.attempts,
        ).update(attempts=F("attempts") + 1, next_attempt_at=now + CLAIM_LEASE)
        if not claimed:
            return "claimed"
        attempts = event.attempts + 1
        status_code, error, took = _post(endpoint, event)
        succeeded = status_code is not None and 200 <= status_code < 300
        return _record(event, endpoint, attempts=attempts, succeeded=succeeded,
                       status_code=status_code, error=error, took=took)


def _post(endpoint: WebhookEndpoint, event: WebhookEvent) -> tuple[int | None, str, int]:
    """POST the event; (HTTP status or None, why it failed, milliseconds)."""
    body = event_body(event)
    headers = signed_headers(endpoint=endpoint, webhook_id=event.webhook_id, body=body)
    started = time.monotonic()
    error = ""
    status_code = None
    try:
        with guarded_session() as session:
            answer = session.post(endpoint.url, data=body, headers=headers,
                                  timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
                                  allow_redirects=False, stream=True)
            status_code = answer.status_code
            answer.close()
        if 300 <= status_code < 400:
            error = "Redirects are not followed: point the endpoint at the final URL."
        elif not 200 <= status_code < 300:
            error = f"The receiver answered HTTP {status_code}."
    except AddressRefused as exc:
        error = f"Refused: {exc}."
    except requests.Timeout:
        error = "No answer within the timeout."
    except requests.RequestException as exc:
        error = f"Could not connect ({type(exc).__name__})."
    took = int((time.monotonic() - started) * 1000)
    return status_code, error[:ERROR_TEXT_MAX], took


def _record(event: WebhookEvent, endpoint: WebhookEndpoint, *, attempts: int,
            succeeded: bool, status_code: int | None, error: str, took: int) -> str:
    now = timezone.now()
    with transaction.atomic():
        WebhookAttempt.objects.create(tenant_id=event.tenant_id, event=event,
                                      endpoint=endpoint, attempted_at=now,
                                      status_code=status_code, succeeded=succeeded,
                                      error=error, duration_ms=took)
        if succeeded:
            WebhookEvent.objects.filter(pk=event.pk).update(
                state=WebhookEventState.DELIVERED, finished_at=now)
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
                consecutive_failures=0, last_success_at=now)
            logger.info("webhook.delivered event=%s endpoint=%s attempts=%s", event.pk,
                        endpoint.pk, attempts)
            return WebhookEventState.DELIVERED
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
            consecutive_failures=F("consecutive_failures") + 1, last_failure_at=now)
        delay = retry_delay(attempts)
        logger.info("webhook.attempt_failed event=%s endpoint=%s attempts=%s status=%s",
                    event.pk, endpoint.pk, attempts, status_code)
        if delay is not None:
            WebhookEvent.objects.filter(pk=event.pk).update(
                next_attempt_at=now + timedelta(seconds=delay))
            if delay <= settings.CELERY_MAX_COUNTDOWN_SECONDS:
                transaction.on_commit(lambda: _queue([event.pk], countdown=delay))
            return WebhookEventState.PENDING
        WebhookEvent.objects.filter(pk=event.pk).update(state=WebhookEventState.FAILED,
                                                        finished_at=now)
        endpoint.refresh_from_db(fields=["last_success_at", "is_active"])
        if endpoint.is_active and (endpoint.last_success_at is None
                                   or endpoint.last_success_at < event.created_at):
            _disable(endpoint, attempts=attempts, since=event.created_at)
        return WebhookEventState.FAILED


def _disable(endpoint: WebhookEndpoint, *, attempts: int, since: datetime) -> None:
    """Persistent failure: no success since ``since`` and an event gave up. Disabled,
    audited, and the workspace's admins get an email (on commit)."""
    reason = (f"Disabled automatically on {timezone.now():%Y-%m-%d %H:%M} UTC: no delivery "
              f"has succeeded since {since:%Y-%m-%d %H:%M} UTC and an event failed all "
              f"{attempts} attempts.")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        is_active=False, disabled_reason=reason, disabled_at=timezone.now())
    _audit(endpoint, None, "webhook_endpoint.disabled", {"reason": reason})
    _subscriptions_sync(endpoint.tenant)
    logger.warning("webhook.endpoint_disabled endpoint=%s tenant=%s", endpoint.pk,
                   endpoint.tenant_id)
    admins = list(Membership.objects.filter(tenant_id=endpoint.tenant_id, role=Role.ADMIN,
                                            user__is_active=True)
                  .values_list("user__email", flat=True))
    page = settings.PUBLIC_BASE_URL.rstrip("/") + reverse(
        "tenant:webhook_detail", kwargs={"tenant_slug": endpoint.tenant.slug,
                                         "endpoint_id": endpoint.pk})
    body = (f"The webhook endpoint {endpoint.url} of {endpoint.tenant.name} was disabled.\n\n"
            f"{reason}\n\nIts attempts and the Enable button: {page}\n")
    if admins:
        transaction.on_commit(lambda: send_mail(
            f"Webhook endpoint disabled: {endpoint.url}"[:200], body,
            settings.DEFAULT_FROM_EMAIL, admins))


def webhooks_redrive(*, limit: int = 500) -> int:
    """Queue every pending event that is due (a lost task, a wait longer than a task's
    countdown, a worker that died mid-attempt) for an active endpoint. Returns how many."""
    # Unscoped: a maintenance sweep over all tenants; each task enters its event's tenant.
    with unscoped():
        due = list(WebhookEvent.objects.filter(
            state=WebhookEventState.PENDING, next_attempt_at__lte=timezone.now(),
            endpoint__is_active=True).order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit])
    _queue(due)
    return len(due)


def webhooks_purge(*, older_than: timedelta | None = None) -> int:
    """Delete delivered and failed events (with their attempts) finished more than
    ``WEBHOOK_RETENTION_DAYS`` ago, in every tenant; pending ones stay. Returns how many."""
    older_than = older_than or timedelta(days=settings.WEBHOOK_RETENTION_DAYS)
    # Unscoped: a maintenance sweep over all tenants, deleting only finished old rows.
    with unscoped():
        deleted, _ = WebhookEvent.objects.filter(
            finished_at__lt=timezone.now() - older_than,
            state__in=[WebhookEventState.DELIVERED, WebhookEventState.FAILED]).delete()
    return deleted
