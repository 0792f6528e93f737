"""What the email channel needs from a mail provider, and the errors it understands.

Gmail (history cursor, Pub/Sub push naming the mailbox) and Microsoft Graph (one
subscription per mailbox with a client state to check, notifications naming a message, a
delta link as the cursor, MIME sent through sendMail) both fit this protocol:

- connect: ``authorization_url`` -> ``exchange_code`` -> ``mailbox_address``;
- tokens: ``refresh`` (may return a rotated refresh token, which must be saved), ``revoke``;
- push: ``start_watch`` / ``stop_watch`` (Gmail watch, Graph subscription), and
  ``parse_notification`` for the provider's webhook body;
- sync: ``changes_since(cursor)`` pages new inbox messages from an opaque cursor
  (historyId / delta link) and raises ``CursorExpired`` when the provider no longer has
  it, then ``list_since(datetime)`` is the bounded full sync;
- fetch and send: ``fetch_raw`` (RFC 5322 bytes), ``send`` (with the conversation's
  thread id where the provider has one), ``find_sent`` (by our Message-ID, so a retry after
  a crash never sends twice).

Every provider call raises only the ``ProviderError`` family below, never a library's own
exception, and makes exactly one HTTP request per attempt (no library retries): tasks see
every throttling answer, count attempts, and decide on backoff through ``health.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class ProviderError(Exception):
    """Base of every error a provider call may raise. ``status`` is the HTTP status when
    there was one; ``reason`` the provider's machine-readable reason."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


class AuthError(ProviderError):
    """The grant is gone (revoked, expired, password changed, scopes withdrawn): the
    connection is Token Expired until an admin reconnects. Nothing is fetched or sent."""


class RateLimited(ProviderError):
    """Throttled (HTTP 429, Gmail 403 rateLimitExceeded/userRateLimitExceeded, Graph 429 /
    503 with Retry-After). ``retry_after`` in seconds when the provider said."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TransientError(ProviderError):
    """5xx, timeouts, connection resets: retry with backoff."""

    retryable = True


class PermanentError(ProviderError):
    """A request the provider will never accept as sent (bad recipient, message too
    large, not found): do not retry."""


class CursorExpired(ProviderError):
    """The sync cursor is too old (Gmail history 404, Graph delta 410): run the bounded
    full sync instead."""


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    expires_at: datetime
    refresh_token: str = ""  # "" when the provider did not return one (keep the old one)
    scopes: tuple[str, ...] = ()

    def as_credentials(self, previous: dict | None = None) -> dict[str, Any]:
        """The JSON stored (encrypted) on the connection; a refresh that returns no new
        refresh token keeps the previous one."""
        refresh = self.refresh_token or (previous or {}).get("refresh_token", "")
        return {"access_token": self.access_token, "refresh_token": refresh,
                "expires_at": self.expires_at.isoformat(), "scopes": list(self.scopes)}


@dataclass(frozen=True)
class WatchState:
    subscription_id: str  # Graph subscription id; "" for Gmail
    expires_at: datetime
    cursor: str = ""  # Gmail: the historyId the watch starts from


@dataclass(frozen=True)
class MessageRef:
    provider_message_id: str
    provider_thread_id: str = ""


@dataclass
class SyncPage:
    messages: list[MessageRef] = field(default_factory=list)
    next_page: str = ""  # "" on the last page
    cursor: str = ""  # the cursor to store once the last page is done


@dataclass(frozen=True)
class Notification:
    """What a webhook body says: which mailbox (address or subscription id), and for
    providers that name it, which message."""

    mailbox: str = ""
    subscription_id: str = ""
    client_state: str = ""
    provider_message_id: str = ""
    cursor_hint: str = ""


@dataclass(frozen=True)
class SentMessage:
    provider_message_id: str
    provider_thread_id: str = ""
    message_id_header: str = ""  # the Message-ID the provider stored (read back)


class EmailProvider(Protocol):
    name: str

    def authorization_url(self, *, state: str, code_challenge: str, redirect_uri: str,
                          login_hint: str = "") -> str: ...

    def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str) -> TokenSet: ...

    def refresh(self, credentials: dict) -> TokenSet: ...

    def revoke(self, credentials: dict) -> None: ...

    def mailbox_address(self, credentials: dict) -> str: ...

    def start_watch(self, connection) -> WatchState: ...

    def stop_watch(self, connection) -> None: ...

    def parse_notification(self, body: bytes, headers: dict[str, str]) -> list[Notification]: ...

    def current_cursor(self, connection) -> str: ...

    def changes_since(self, connection, cursor: str, page: str = "") -> SyncPage: ...

    def list_since(self, connection, since: datetime, page: str = "") -> SyncPage: ...

    def fetch_raw(self, connection, provider_message_id: str) -> bytes: ...

    def send(self, connection, raw_mime: bytes, thread_id: str = "") -> SentMessage: ...

    def find_sent(self, connection, message_id_header: str) -> SentMessage | None: ...
