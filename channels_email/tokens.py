"""Access-token care: refresh well before expiry, one worker at a time per connection,
keep every rotated refresh token, and recover from an access token the provider refuses.

Contract of ``ensure_fresh_token(connection, margin=..., rejected_token=...)``:
- Does nothing when the stored access token is valid for longer than ``margin`` (and is
  not ``rejected_token``, the one a provider call just answered 401 to).
- Otherwise takes a per-connection Redis lock (waiting for a worker that is refreshing
  it already), re-reads the credentials (that worker may have done the job), refreshes
  through the provider, and saves the new access token, expiry and any new refresh token
  or token cache (msal's, holding the rotated refresh token), encrypted at rest by the
  model field. Where the refresh token lives is the provider's business: one it does not
  find is its ``AuthError``.
- Raises the provider's error; it records nothing itself: the caller reports the outcome
  to ``health`` (``invalid_grant`` -> Token Expired, and nothing further is fetched or
  sent until Reconnect).

Contract of ``authorized(connection)``: the connection's provider, whose calls that take
the connection run with a fresh token, and where a 401 on a call (the provider no longer
takes the access token: ``AuthError`` with reason ``base.ACCESS_TOKEN_REFUSED``) forces
one refresh under the same lock and retries that call once (DESIGN.md section 10). A
refresh refused for auth reasons raises its ``AuthError`` (Token Expired for
``health``); a call still answered 401 with the refreshed token raises ``AuthError``
reason ``unauthorized_after_refresh``, which ``health`` also takes for a grant that is gone.
Retrying is safe because a 401 means the provider did nothing with the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.utils import timezone

from channels_email import providers
from channels_email.models import EmailConnection
from channels_email.providers.base import ACCESS_TOKEN_REFUSED, Capability
from helpdesk.coordination import redis_client, redis_key

logger = logging.getLogger(__name__)

DEFAULT_MARGIN = timedelta(minutes=5)
BEAT_MARGIN = timedelta(minutes=15)
# Provider methods whose first argument is the connection (so they use its access token).
CONNECTION_CALLS = frozenset({"current_cursor", "changes_since", "list_since", "fetch_raw",
                              "send", "find_sent", "start_watch", "stop_watch"})
EXPIRED_ACCESS = ACCESS_TOKEN_REFUSED  # base.AuthError reason of a bare 401 on a call
T = TypeVar("T")


def expires_at(connection: EmailConnection) -> datetime | None:
    value = (connection.credentials or {}).get("expires_at")
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def needs_refresh(connection: EmailConnection, margin: timedelta = DEFAULT_MARGIN,
                  rejected_token: str = "") -> bool:
    if rejected_token and (connection.credentials or {}).get("access_token") == rejected_token:
        return True
    expiry = expires_at(connection)
    return expiry is None or expiry - timezone.now() < margin


def ensure_fresh_token(connection: EmailConnection, margin: timedelta = DEFAULT_MARGIN, *,
                       rejected_token: str = "") -> bool:
    """Refresh the access token when it expires within ``margin`` or is the one just
    refused; True when refreshed."""
    if not providers.can(connection.provider, Capability.OAUTH_SIGN_IN) or not needs_refresh(
            connection, margin, rejected_token):
        return False
    if not connection.credentials:
        raise providers.AuthError("no credentials stored", reason="no_refresh_token")
    with redis_client().lock(redis_key("token-lock", connection.pk), timeout=60,
                             blocking_timeout=30):
        connection.refresh_from_db(fields=["credentials", "status"])
        if not needs_refresh(connection, margin, rejected_token):
            return False  # another worker refreshed it while we waited
        tokens = providers.get(connection.provider).refresh(connection.credentials)
        connection.credentials = tokens.as_credentials(previous=connection.credentials)
        connection.save(update_fields=["credentials", "updated_at"])
    logger.info("tokens.refreshed connection=%s forced=%s", connection.pk, bool(rejected_token))
    return True


def call_with_token(connection: EmailConnection, call: Callable[[], T]) -> T:
    """Run ``call`` (a provider call reading ``connection.credentials``) with a fresh
    access token; on a 401, one forced refresh and one retry (see the module contract)."""
    ensure_fresh_token(connection)
    used = (connection.credentials or {}).get("access_token", "")
    try:
        return call()
    except providers.AuthError as exc:
        if exc.reason != EXPIRED_ACCESS:
            raise
        logger.info("tokens.refused connection=%s: refreshing once", connection.pk)
    ensure_fresh_token(connection, rejected_token=used)
    try:
        return call()
    except providers.AuthError as exc:
        if exc.reason != EXPIRED_ACCESS:
            raise
        raise providers.AuthError(f"Refused even with a newly refreshed token: {exc}",
                                  status=exc.status,
                                  reason="unauthorized_after_refresh") from None


class AuthorizedProvider:
    """``providers.get(connection.provider)`` bound to ``connection``: ``send(raw)`` for
    ``send(connection, raw)``, each such call through ``call_with_token``. Other provider
    attributes pass through unchanged."""

    def __init__(self, connection: EmailConnection):
        self.connection = connection
        self.provider = providers.get(connection.provider)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.provider, name)
        if name not in CONNECTION_CALLS:
            return attribute

        def bound(*args, **kwargs):
            return call_with_token(self.connection,
                                   lambda: attribute(self.connection, *args, **kwargs))

        return bound


def authorized(connection: EmailConnection) -> AuthorizedProvider:
    return AuthorizedProvider(connection)
