"""Connection health (DESIGN.md section 6): the one place that moves a connection between
Active, Token Expired, Rate Limited and Disconnected, and keeps last sync, consecutive
errors and the last error.

Contract:
- Every provider call site reports its outcome here: ``record_success`` after a call that
  worked, ``record_error`` with the ``ProviderError`` it raised. Both are single UPDATEs
  that never resurrect a Disconnected connection (a disconnect always wins a race).
- ``record_error`` decides: ``AuthError`` (the grant is gone) -> Token Expired, nothing is
  fetched or sent until Reconnect; ``RateLimited`` -> Rate Limited until the provider's
  Retry-After, else exponential backoff with full jitter; anything else counts an error
  and keeps the status. The error text is stored without credentials.
- ``may_call`` tells tasks whether to touch the provider now; ``wait_seconds`` how long to
  wait when they may not (for a Rate Limited connection).
- A Rate Limited connection whose wait is over becomes Active again with its next
  successful call.
"""

from __future__ import annotations

import random
import re
from datetime import timedelta

from django.db.models import F
from django.utils import timezone

from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.providers.base import (
    ACCESS_TOKEN_REFUSED,
    AuthError,
    ProviderError,
    RateLimited,
)
from helpdesk import webhooks_out

BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 3600

_SECRETS = re.compile(
    r"(ya29\.[\w.-]+|1//[\w.-]+|4/[\w.-]{10,}|eyJ[\w-]+\.[\w-]+\.[\w-]*|\b[01]\.A[\w.-]{20,}"
    r"|(?i:bearer)\s+[\w.~+/=-]+"
    r"|(?i:(?:access|refresh|id)_token|client_secret|code_verifier|code)[\"']?\s*[:=]\s*[\"']?[^\s\"'&,}]+)"
)


def redact(text: str) -> str:
    """``text`` with anything token-shaped replaced, for storing and showing errors."""
    return _SECRETS.sub("[redacted]", text or "")


def backoff_seconds(attempt: int, *, base: float = BACKOFF_BASE_SECONDS,
                    cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Full-jitter exponential backoff for the ``attempt``-th consecutive failure (1-based)."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return random.uniform(ceiling / 2, ceiling)


def _live(connection: EmailConnection):
    return (EmailConnection.objects.filter(pk=connection.pk)
            .exclude(status=ConnectionStatus.DISCONNECTED))


def record_success(connection: EmailConnection, *, synced: bool = False) -> None:
    """A provider call worked: Active (from Token Expired only through Reconnect, which
    calls ``reactivate``), errors reset, ``last_sync_at`` when it was a sync. Costs
    nothing when the connection is healthy already and this was not a sync (the common
    case on the ingest and send paths)."""
    if not synced and connection.status == ConnectionStatus.ACTIVE \
            and not connection.consecutive_errors and connection.rate_limited_until is None:
        return
    now = timezone.now()
    fields = {"consecutive_errors": 0, "rate_limited_until": None, "updated_at": now}
    if synced:
        fields["last_sync_at"] = now
    _live(connection).exclude(status=ConnectionStatus.TOKEN_EXPIRED).update(
        status=ConnectionStatus.ACTIVE, **fields)
    _refresh(connection)


def reactivate(connection: EmailConnection, *, credentials: dict | None = None) -> None:
    """After a Reconnect (from any status, Disconnected included): the fresh
    ``credentials`` stored (when given), Active again, errors cleared, in one UPDATE.
    Raises IntegrityError when the mailbox is connected in another workspace meanwhile
    (run it in a transaction)."""
    fields = {"credentials": credentials} if credentials is not None else {}
    EmailConnection.objects.filter(pk=connection.pk).update(
        status=ConnectionStatus.ACTIVE, consecutive_errors=0, rate_limited_until=None,
        updated_at=timezone.now(), **fields)
    _refresh(connection)


def record_error(connection: EmailConnection, error: BaseException) -> str:
    """Count a failed provider call and move the status as its kind says; returns the
    status the connection has now."""
    now = timezone.now()
    message = redact(f"{type(error).__name__}: {error}")[:1000]
    fields = {"consecutive_errors": F("consecutive_errors") + 1, "last_error": message,
              "last_error_at": now, "updated_at": now}
    if isinstance(error, AuthError) and error.reason != ACCESS_TOKEN_REFUSED:
        # The grant itself is gone (invalid_grant, revoked): only Reconnect helps. A bare
        # 401 on a call is an expired access token, which a refresh fixes.
        fields["status"] = ConnectionStatus.TOKEN_EXPIRED
    elif isinstance(error, RateLimited):
        attempt = connection.consecutive_errors + 1
        wait = error.retry_after if error.retry_after else backoff_seconds(attempt)
        fields["status"] = ConnectionStatus.RATE_LIMITED
        fields["rate_limited_until"] = now + timedelta(seconds=wait)
    _live(connection).update(**fields)
    _refresh(connection)
    return connection.status


def record_disconnected(connection: EmailConnection) -> None:
    EmailConnection.objects.filter(pk=connection.pk).update(
        status=ConnectionStatus.DISCONNECTED, credentials=None, subscription_id="",
        subscription_expires_at=None, subscription_secret=None, rate_limited_until=None,
        updated_at=timezone.now())
    _refresh(connection)


def may_call(connection: EmailConnection) -> bool:
    """Whether tasks may call the provider for ``connection`` now."""
    if connection.status in (ConnectionStatus.DISCONNECTED, ConnectionStatus.TOKEN_EXPIRED):
        return False
    return wait_seconds(connection) == 0


def wait_seconds(connection: EmailConnection) -> float:
    """Seconds until the connection may be called again (0: now): a Rate Limited one's
    wait, or what its own connection settings say (skip times, cool-off after
    ``max_tries`` failures: ``connection_options``)."""
    from channels_email import connection_options

    own = connection_options.wait_seconds(connection)
    until = connection.rate_limited_until
    if connection.status != ConnectionStatus.RATE_LIMITED or until is None:
        return own
    return max(own, (until - timezone.now()).total_seconds())


def _refresh(connection: EmailConnection) -> None:
    previous = connection.status
    connection.refresh_from_db(fields=["status", "consecutive_errors", "last_error",
                                       "last_error_at", "last_sync_at", "rate_limited_until",
                                       "credentials", "subscription_id",
                                       "subscription_expires_at", "updated_at"])
    webhooks_out.connection_status_emit(connection=connection, previous=previous)


__all__ = [
    "ProviderError",
    "backoff_seconds",
    "may_call",
    "reactivate",
    "record_disconnected",
    "record_error",
    "record_success",
    "redact",
    "wait_seconds",
]
