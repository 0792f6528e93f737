"""What the email channel needs from a mail provider, and the errors it understands.

Gmail (history cursor, Pub/Sub push naming the mailbox) and Microsoft Graph (one
subscription per mailbox with a client state to check, notifications naming a message, a
delta link as the cursor, MIME sent through sendMail) both fit this protocol:

- connect: ``begin_sign_in`` (the sign-in URL, and a flow dict the channel keeps in the
  admin's session: PKCE verifier, nonce...) -> ``complete_sign_in`` (the flow and the
  callback's query) -> ``mailbox_address``; a refusal comes back as ``SignInRefused``, in
  words an admin can act on;
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

The seam (DESIGN.md section 10): a provider is one module declaring ``capabilities`` (the
``Capability`` values it implements, each a small Protocol below) and the facts the rest of
the channel shows or wires (label, connect button, whether it is configured, the origins
its sign-in forms post to, its webhook routes). Nothing outside ``providers/`` compares a
provider's name: it asks the registry (``providers.registry()``) and the provider.

Webhooks belong to the provider: ``handle_webhook(hook, request, lookup)`` verifies before
it parses and answers ``Handshake`` (the subscription validation a provider sends before
any notification, such as Graph's ``validationToken``), ``Accepted`` (the connections to
sync) or ``Rejected`` (an HTTP status). ``lookup`` resolves a mailbox or a subscription to
a connection; a subscription comes with (the digest of) its own secret (what
``start_watch`` returned as ``WatchState.secret``): ``SubscriptionOwner.matches`` checks a
notification's client state in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

# The ``AuthError`` reason of a bare 401 on a call: the provider no longer takes this
# access token (expired early, rotated), which one forced refresh fixes; any other
# ``AuthError`` reason means the grant itself is gone. Every provider maps its 401 to it.
ACCESS_TOKEN_REFUSED = "authError"


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


class SignInRefused(ProviderError):
    """The sign-in came back refused (declined consent, admin approval needed, wrong
    account, misconfigured app): ``message`` is what the admin reads, ``help_url`` /
    ``help_label`` a link that fixes it (the tenant-wide admin consent), ``declined`` when
    the user simply said no (not an error)."""

    def __init__(self, message: str, *, help_url: str = "", help_label: str = "",
                 declined: bool = False, **kwargs):
        super().__init__(message, **kwargs)
        self.help_url = help_url
        self.help_label = help_label
        self.declined = declined


class CursorExpired(ProviderError):
    """The sync cursor is too old (Gmail history 404, Graph delta 410): run the bounded
    full sync instead."""


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    expires_at: datetime
    refresh_token: str = ""  # "" when the provider did not return one (keep the old one)
    scopes: tuple[str, ...] = ()
    # What else the provider keeps with the credentials (msal's serialized token cache,
    # which holds the refresh token, and the account it is for); replaces the previous.
    extra: dict[str, Any] = field(default_factory=dict)

    def as_credentials(self, previous: dict | None = None) -> dict[str, Any]:
        """The JSON stored (encrypted) on the connection; a refresh that returns no new
        refresh token keeps the previous one."""
        refresh = self.refresh_token or (previous or {}).get("refresh_token", "")
        return {"access_token": self.access_token, "refresh_token": refresh,
                "expires_at": self.expires_at.isoformat(), "scopes": list(self.scopes),
                **self.extra}


@dataclass(frozen=True)
class WatchState:
    subscription_id: str  # Graph subscription id; "" for Gmail
    expires_at: datetime
    cursor: str = ""  # Gmail: the historyId the watch starts from
    # A secret of this subscription that its notifications carry back (Graph clientState),
    # stored on the connection; "" when the provider authenticates pushes otherwise.
    secret: str = ""


@dataclass(frozen=True)
class MessageRef:
    provider_message_id: str
    provider_thread_id: str = ""
    # A key that stays the same when the provider renumbers its messages (IMAP: Message-ID
    # + Date across a UIDVALIDITY change): a bounded full sync skips refs whose key a row
    # of the connection has already. "" when the provider needs no such check.
    dedupe_key: str = ""


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


@dataclass(frozen=True)
class SandboxDemo:
    """How ``make demo`` wires a provider to the local sandbox (``sandbox/``), declared
    by the provider so that the demo names none: ``env`` for the demo's processes
    (settings), ``calls`` (path, JSON body) POSTed to the sandbox once it runs (our app's
    registration with its callback, push targets, a mailbox to connect), ``mailbox`` the
    sandbox address an admin connects, and what the demo's ``--check`` needs to connect a
    new mailbox by hand: ``new_mailbox`` (the body of ``/_sandbox/mailboxes`` for an
    address, {} when sign-in creates it) and ``check_domain``."""

    env: dict[str, str]
    calls: tuple[tuple[str, dict], ...] = ()
    mailbox: str = ""
    check_domain: str = "example.com"
    new_mailbox: dict = field(default_factory=dict)


class Capability(StrEnum):
    """What a provider can do; a provider declares the ones it implements."""

    OAUTH_SIGN_IN = "oauth_sign_in"  # SignIn
    PUSH = "push"  # PushSubscription: a watch/subscription with renewal, and webhooks
    CURSOR_SYNC = "cursor_sync"  # CursorSync
    FETCH = "fetch"  # FetchRaw
    SEND = "send"  # SendMime
    FIND_SENT = "find_sent"  # FindSent
    PASSWORD_SIGN_IN = "password_sign_in"  # PasswordSignIn: IMAP/SMTP with a password
    IDLE = "idle"  # IdlePush: a long-held connection announces new mail (IMAP IDLE)
    # ForwardedInbound: the admin forwards the mailbox to an address we generate, and our
    # inbound SMTP server (manage.py inbound_smtp) receives it; such a mailbox never sends
    # (its replies go through the mailbox mapped for them, else the workspace default).
    FORWARDED = "forwarded"


# A whole mailbox behind OAuth with push (Gmail, Microsoft Graph).
OAUTH_MAILBOX = frozenset({Capability.OAUTH_SIGN_IN, Capability.PUSH, Capability.CURSOR_SYNC,
                           Capability.FETCH, Capability.SEND, Capability.FIND_SENT})


# ------------------------------------------------------------------------------ webhooks


@dataclass(frozen=True)
class WebhookRoute:
    """``/webhooks/<path>/`` (each with its trailing slash: pushes do not follow
    redirects) handled by the provider's ``handle_webhook(hook, ...)``. ``log_key`` names
    the webhook in log event keys (``webhook.<log_key>.<event>``)."""

    path: str
    hook: str
    log_key: str


@dataclass(frozen=True)
class Handshake:
    """Answer 200 ``text/plain`` with exactly ``text``, before anything else (Graph's
    subscription validation)."""

    text: str


@dataclass(frozen=True)
class Accepted:
    """A verified notification: sync each of these connections (coalesced), renew (or
    recreate) the push subscription of each of ``renew_ids`` in a task and then sync it
    (Graph's lifecycle events), then answer ``status``."""

    connection_ids: tuple[int, ...] = ()
    status: int = 204
    renew_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """Answer ``status`` with ``text``; nothing changes."""

    status: int
    text: str


@dataclass(frozen=True)
class SubscriptionOwner:
    """The connection a subscription belongs to, and the SHA-256 (hex) of its secret
    (``WatchState.secret`` as stored): caches hold the digest, never the secret."""

    connection_id: int
    secret_digest: str  # "" when the subscription has no secret

    @classmethod
    def of(cls, connection_id: int, secret: str) -> SubscriptionOwner:
        return cls(connection_id, hashlib.sha256(secret.encode()).hexdigest() if secret
                   else "")

    def matches(self, presented: object) -> bool:
        """Whether ``presented`` (a notification's client state) is the secret, compared
        in constant time; never for a subscription without one."""
        if not self.secret_digest or not isinstance(presented, str):
            return False
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
        return hmac.compare_digest(digest, self.secret_digest)


class LookupUnavailable(Exception):  # noqa: N818 - a condition, not a bug
    """The mailbox -> connection mapping cannot be read now (Redis or PostgreSQL down):
    the webhook answers 503 so that the provider retries."""


class ConnectionLookup(Protocol):
    """How a webhook handler finds the connection a notification is for (connected ones
    only). Raises ``LookupUnavailable``."""

    def by_mailbox(self, provider: str, mailbox: str) -> int | None: ...

    def by_subscriptions(self, provider: str, subscription_ids: Iterable[str]
                         ) -> dict[str, SubscriptionOwner]:
        """The owners of those of ``subscription_ids`` that belong to a connected
        connection (the unknown ones are absent), whatever their number in one read of
        each cache and at most one SQL statement."""
        ...


# -------------------------------------------------------------------------- capabilities


@runtime_checkable
class SignIn(Protocol):
    """OAuth in the browser, and token care. ``begin_sign_in`` returns the URL to send
    the admin to and a JSON-serializable flow (kept in the admin's session, never shown)
    that ``complete_sign_in`` gets back with the callback's query parameters; ``state``
    is the channel's signed state, which the provider sends out and checks coming back.
    ``callback_notice`` answers a return to the callback that is no sign-in (Microsoft's
    admin consent): the words to show, or "" when it is a sign-in."""

    def begin_sign_in(self, *, state: str, redirect_uri: str, login_hint: str = ""
                      ) -> tuple[str, dict]: ...

    def complete_sign_in(self, *, flow: dict, params: dict, redirect_uri: str) -> TokenSet: ...

    def callback_notice(self, params: dict) -> str: ...

    def missing_scopes(self, tokens: TokenSet) -> set[str]: ...

    def refresh(self, credentials: dict) -> TokenSet: ...

    def revoke(self, credentials: dict) -> None: ...

    def mailbox_address(self, credentials: dict) -> str: ...


@runtime_checkable
class PushSubscription(Protocol):
    """A watch or subscription that expires (``start_watch`` also renews it), and the
    webhooks its notifications arrive at."""

    webhook_routes: tuple[WebhookRoute, ...]

    def start_watch(self, connection) -> WatchState: ...

    def stop_watch(self, connection) -> None: ...

    def handle_webhook(self, hook: str, request, lookup: ConnectionLookup
                       ) -> Handshake | Accepted | Rejected: ...


@runtime_checkable
class CursorSync(Protocol):
    def current_cursor(self, connection) -> str: ...

    def changes_since(self, connection, cursor: str, page: str = "") -> SyncPage: ...

    def list_since(self, connection, since: datetime, page: str = "") -> SyncPage: ...


@runtime_checkable
class FetchRaw(Protocol):
    def fetch_raw(self, connection, provider_message_id: str) -> bytes: ...


@runtime_checkable
class SendMime(Protocol):
    def send(self, connection, raw_mime: bytes, thread_id: str = "") -> SentMessage: ...


@runtime_checkable
class FindSent(Protocol):
    def find_sent(self, connection, message_id_header: str) -> SentMessage | None: ...


@runtime_checkable
class PasswordSignIn(Protocol):
    """A mailbox signed in to with stored settings and a password (IMAP/SMTP):
    ``check_account`` signs in with ``credentials`` (nothing saved) and says what it found,
    or raises the ProviderError that says what failed. A refused password raises
    ``AuthError`` with reason ``sign_in_failed_reason``."""

    sign_in_failed_reason: str

    def check_account(self, credentials: dict) -> Any: ...

    def start_cursor(self) -> str:
        """The cursor a new mailbox starts from (its first sync imports the mail since
        the connection's ``sync_start_at``)."""
        ...


@runtime_checkable
class IdlePush(Protocol):
    """``idle_open(connection)`` returns a session whose ``wait(seconds) -> bool`` is True
    when the server announced new mail, and ``close()``; held by ``manage.py
    mailbox_watch``, which queues the same coalesced sync as a webhook does."""

    def idle_open(self, connection) -> Any: ...


@dataclass(frozen=True)
class SetupGuide:
    """How to forward a mailbox from one kind of mail service: a heading and its steps."""

    heading: str
    steps: tuple[str, ...]


@runtime_checkable
class ForwardedInbound(Protocol):
    """Mail forwarded to a generated address. ``generate_address(support_address)`` makes
    a new, hard to guess address on the deployment's inbound domain (the caller retries on
    a clash with an existing one); ``setup_guides(connection)`` says how to set the
    forwarding up at the common mail services; ``add_form`` is the admin's form (the
    support address forwarded from)."""

    add_form: type

    def generate_address(self, support_address: str) -> str: ...

    def setup_guides(self, connection) -> tuple[SetupGuide, ...]: ...


CAPABILITY_PROTOCOLS: dict[Capability, type] = {
    Capability.OAUTH_SIGN_IN: SignIn, Capability.PUSH: PushSubscription,
    Capability.CURSOR_SYNC: CursorSync, Capability.FETCH: FetchRaw,
    Capability.SEND: SendMime, Capability.FIND_SENT: FindSent,
    Capability.PASSWORD_SIGN_IN: PasswordSignIn, Capability.IDLE: IdlePush,
    Capability.FORWARDED: ForwardedInbound,
}


class EmailProvider(Protocol):
    """What every provider declares; the calls are those of its capabilities."""

    name: str  # the EmailConnection.provider value (stored: never change it)
    label: str  # shown beside a mailbox ("Gmail")
    connect_button: str  # the Add Email Account button ("" when not connectable)
    not_configured_hint: str  # shown instead of the button when not configured
    # Shown after Disconnect: where the admin removes what the provider still grants
    # (Microsoft has no endpoint for an app to give its permissions up); "" when none.
    disconnect_hint: str
    capabilities: frozenset[Capability]

    def is_configured(self) -> bool: ...

    def form_action_origins(self) -> tuple[str, ...]:
        """Origins outside ours that our pages' forms may lead to (the sign-in page the
        connect redirect goes to): the Content-Security-Policy's form-action."""
        ...

