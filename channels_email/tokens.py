"""Access-token care: refresh well before expiry, one worker at a time per connection,
and keep every rotated refresh token.

Contract of ``ensure_fresh_token(connection, margin=...)``:
- Does nothing when the stored access token is valid for longer than ``margin``.
- Otherwise takes a per-connection Redis lock (waiting for a worker that is refreshing
  it already), re-reads the credentials (that worker may have done the job), refreshes
  through the provider, and saves the new access token, expiry and any new refresh token
  (encrypted at rest by the model field).
- ``invalid_grant`` (the grant is gone) is recorded by ``health`` (Token Expired) and
  re-raised as ``AuthError``; nothing further is fetched or sent until Reconnect.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from channels_email import health, providers
from channels_email.models import EmailConnection
from helpdesk.coordination import redis_client, redis_key

DEFAULT_MARGIN = timedelta(minutes=5)
BEAT_MARGIN = timedelta(minutes=15)


def expires_at(connection: EmailConnection) -> datetime | None:
    value = (connection.credentials or {}).get("expires_at")
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def needs_refresh(connection: EmailConnection, margin: timedelta = DEFAULT_MARGIN) -> bool:
    expiry = expires_at(connection)
    return expiry is None or expiry - timezone.now() < margin


def ensure_fresh_token(connection: EmailConnection,
                       margin: timedelta = DEFAULT_MARGIN) -> bool:
    """Refresh the access token when it expires within ``margin``; True when refreshed."""
    if connection.provider == "manual" or not needs_refresh(connection, margin):
        return False
    if not (connection.credentials or {}).get("refresh_token"):
        error = providers.AuthError("no refresh token stored", reason="no_refresh_token")
        health.record_error(connection, error)
        raise error
    with redis_client().lock(redis_key("token-lock", connection.pk), timeout=60,
                             blocking_timeout=30):
        connection.refresh_from_db(fields=["credentials", "status"])
        if not needs_refresh(connection, margin):
            return False  # another worker refreshed it while we waited
        try:
            tokens = providers.get(connection.provider).refresh(connection.credentials)
        except providers.ProviderError as exc:
            health.record_error(connection, exc)
            raise
        connection.credentials = tokens.as_credentials(previous=connection.credentials)
        connection.save(update_fields=["credentials", "updated_at"])
    return True
