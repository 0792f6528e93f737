"""Microsoft Graph calls of the Microsoft 365 provider: one ``requests`` session, one HTTP
request per attempt, every failure mapped to the ``ProviderError`` family.

- 401 -> ``AuthError`` reason ``ACCESS_TOKEN_REFUSED`` (one forced refresh fixes it);
  403 ``ErrorAccessDenied`` (the grant no longer covers the call) -> ``AuthError``;
- 429, and 503 (Graph sends both when throttling, with ``Retry-After``) -> ``RateLimited``
  with ``retry_after``; sendMail's 429 is Exchange's 30 messages a minute;
- 410 on delta -> ``CursorExpired``; 408, 5xx other than 503, timeouts and connection
  errors -> ``TransientError``; anything else -> ``PermanentError`` with Graph's error code
  as the reason.

Links Graph returns (``@odata.nextLink``, ``@odata.deltaLink``) are followed only when
they point at ``GRAPH_BASE_URL``: the bearer token never goes anywhere else.

The mailbox's sync cursor is opaque to the channel: either a delta link, or
``since:<ISO time>`` before the first delta round (``current_cursor`` costs no request:
the round that follows returns every message received since then, then a delta link).
"""

from __future__ import annotations

import base64
import email.utils
import logging
import secrets
import threading
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from urllib.parse import quote, urlsplit

import requests
from django.conf import settings

from channels_email.mime import normalize_message_id
from channels_email.providers.base import (
    ACCESS_TOKEN_REFUSED,
    AuthError,
    CursorExpired,
    MessageRef,
    PermanentError,
    ProviderError,
    RateLimited,
    SentMessage,
    SyncPage,
    TransientError,
    WatchState,
)

logger = logging.getLogger(__name__)

INBOX = "me/mailFolders('Inbox')/messages"
DELTA_PATH = "/me/mailFolders('inbox')/messages/delta"
DELTA_SELECT = "id,conversationId,internetMessageId,receivedDateTime"
PAGE_SIZE = 100
# sendMail takes at most 4 MB per request, base64 included: the MIME may be about 3 MB.
REQUEST_MAX_BYTES = 4_000_000
SEND_MAX_BYTES = REQUEST_MAX_BYTES * 3 // 4
# Graph's clock and ours disagree a little: the first delta round of a new mailbox starts
# this much before the connect (a message of that minute may come in; none is lost).
CLOCK_MARGIN = timedelta(minutes=1)
SINCE = "since:"
_local = threading.local()


def _now() -> datetime:
    return datetime.now(UTC)


def _session() -> requests.Session:
    """One session per thread (requests sessions are not thread-safe), trusting only the
    configured CA bundle (``MS_CA_BUNDLE``; environment variables never override it)."""
    bundle = getattr(settings, "MS_CA_BUNDLE", "") or True
    session = getattr(_local, "session", None)
    if session is None or getattr(_local, "bundle", None) != bundle:
        session = requests.Session()
        session.trust_env = False
        session.verify = bundle
        _local.session, _local.bundle = session, bundle
    return session


def base_url() -> str:
    return settings.GRAPH_BASE_URL.rstrip("/")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (when - _now()).total_seconds())


def _graph_code(response: requests.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return str(error), ""
    return str(error.get("code") or ""), str(error.get("message") or "")


def map_error(response: requests.Response, *, cursor_call: bool = False) -> ProviderError:
    status = response.status_code
    code, message = _graph_code(response)
    text = f"Microsoft Graph {status} {code}: {message}".strip()
    if status == 401:
        return AuthError(text, status=401, reason=ACCESS_TOKEN_REFUSED)
    if status == 403 and code in ("ErrorAccessDenied", "Authorization_RequestDenied",
                                  "AccessDenied"):
        return AuthError(text, status=403, reason=code)
    if status in (429, 503):
        return RateLimited(text, status=status, reason=code or "TooManyRequests",
                           retry_after=_retry_after(response.headers.get("Retry-After")))
    if status == 410 and cursor_call:
        return CursorExpired(text, status=410, reason=code or "SyncStateNotFound")
    if status == 408 or status >= 500:
        return TransientError(text, status=status, reason=code)
    return PermanentError(text, status=status, reason=code)


def _token(credentials: dict | None) -> str:
    token = (credentials or {}).get("access_token") or ""
    if not token:
        raise AuthError("The connection has no access token", reason="no_credentials")
    return token


def request(method: str, url: str, credentials: dict | None, *, ok=(200,),
            cursor_call: bool = False, **kwargs) -> requests.Response:
    """One request to Graph; a status outside ``ok`` raises the mapped ProviderError."""
    if not url.startswith(base_url() + "/"):
        raise PermanentError(f"Refusing to send the mailbox's token to {urlsplit(url).netloc}"
                             f" (not GRAPH_BASE_URL)", reason="foreign_link")
    headers = {"Authorization": f"Bearer {_token(credentials)}",
               "Accept": "application/json", **kwargs.pop("headers", {})}
    try:
        response = _session().request(method, url, headers=headers,
                                      timeout=float(settings.PROVIDER_HTTP_TIMEOUT_SECONDS),
                                      allow_redirects=False, **kwargs)
    except requests.Timeout:
        raise TransientError("Microsoft Graph timed out", reason="timeout") from None
    except requests.RequestException as exc:
        raise TransientError(f"Microsoft Graph unreachable: {type(exc).__name__}",
                             reason="connection") from None
    if response.status_code not in ok:
        error = map_error(response, cursor_call=cursor_call)
        logger.info("graph call failed: %s %s (%s)", method, urlsplit(url).path, error.reason)
        raise error
    return response


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        raise TransientError("Microsoft Graph answered something that is not JSON",
                             reason="malformed") from None
    if not isinstance(body, dict):
        raise TransientError("Microsoft Graph answered no object", reason="malformed")
    return body


def _own_message_id(raw_mime: bytes) -> str:
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw_mime)
    except Exception:  # noqa: BLE001 - a fallback only
        return ""
    return normalize_message_id(str(headers.get("Message-ID") or ""))


class GraphMailbox:
    """The Graph half of ``MicrosoftProvider``: subscriptions, delta sync, fetch, send and
    find-sent for one mailbox (``connection.credentials["access_token"]``)."""

    page_size = PAGE_SIZE
    max_send_bytes = SEND_MAX_BYTES

    # -- push ------------------------------------------------------------------------------
    @staticmethod
    def _expiration() -> datetime:
        return _now() + timedelta(minutes=int(settings.GRAPH_SUBSCRIPTION_MINUTES))

    @staticmethod
    def _watch(body: dict, secret: str) -> WatchState:
        expires = parse_time(str(body.get("expirationDateTime") or ""))
        if not body.get("id") or expires is None:
            raise PermanentError("Graph answered a subscription without id or expiry",
                                 reason="malformed")
        return WatchState(subscription_id=str(body["id"]), expires_at=expires, secret=secret)

    def start_watch(self, connection) -> WatchState:
        """Renew the connection's subscription (PATCH a new expiry), or create one when it
        has none or Graph no longer knows it (404): a fresh ``clientState`` secret per
        subscription, both webhook URLs validated by Graph while we wait."""
        credentials = connection.credentials
        current = connection.subscription_id
        if current:
            try:
                answer = request("PATCH", f"{base_url()}/subscriptions/{quote(current)}",
                                 credentials,
                                 json={"expirationDateTime": iso(self._expiration())})
            except PermanentError as exc:
                if exc.status != 404:
                    raise
                logger.warning("graph subscription %s is gone: creating a new one", current)
            else:
                return self._watch(_json(answer), connection.subscription_secret or "")
        secret = secrets.token_urlsafe(48)
        answer = request("POST", base_url() + "/subscriptions", credentials, ok=(201,), json={
            "changeType": "created",
            "notificationUrl": settings.GRAPH_NOTIFICATION_URL,
            "lifecycleNotificationUrl": settings.GRAPH_LIFECYCLE_URL,
            "resource": INBOX,
            "expirationDateTime": iso(self._expiration()),
            "clientState": secret,
        })
        return self._watch(_json(answer), secret)

    def stop_watch(self, connection) -> None:
        if not connection.subscription_id:
            return
        try:
            request("DELETE", f"{base_url()}/subscriptions/{quote(connection.subscription_id)}",
                    connection.credentials, ok=(204, 200))
        except PermanentError as exc:
            if exc.status != 404:  # gone already: nothing to stop
                raise

    # -- sync ------------------------------------------------------------------------------
    def current_cursor(self, connection) -> str:
        """Where a new mailbox's sync starts: no request, the first delta round does it."""
        start = _now() - CLOCK_MARGIN
        sync_start = getattr(connection, "sync_start_at", None)
        if sync_start is not None:
            start = max(start, sync_start - CLOCK_MARGIN)
        return SINCE + iso(start)

    def _delta_page(self, connection, url: str, params: dict | None) -> SyncPage:
        answer = _json(request("GET", url, connection.credentials, params=params,
                               cursor_call=True,
                               headers={"Prefer": f"odata.maxpagesize={self.page_size}"}))
        refs = [MessageRef(str(item["id"]), str(item.get("conversationId") or ""))
                for item in answer.get("value") or []
                if isinstance(item, dict) and item.get("id") and "@removed" not in item]
        next_link = str(answer.get("@odata.nextLink") or "")
        delta_link = str(answer.get("@odata.deltaLink") or "")
        if not next_link and not delta_link:
            raise TransientError("Graph delta answered neither a next nor a delta link",
                                 reason="malformed")
        return SyncPage(messages=refs, next_page=next_link, cursor=delta_link)

    def _fresh_delta(self, connection, since: datetime) -> SyncPage:
        return self._delta_page(connection, base_url() + DELTA_PATH, {
            "$select": DELTA_SELECT, "$filter": f"receivedDateTime ge {iso(since)}"})

    def changes_since(self, connection, cursor: str, page: str = "") -> SyncPage:
        if page:
            return self._delta_page(connection, page, None)
        cursor = str(cursor or "")
        if cursor.startswith(SINCE):
            since = parse_time(cursor[len(SINCE):])
            if since is None:
                raise CursorExpired("Unreadable start time in the cursor", reason="invalid_cursor")
            return self._fresh_delta(connection, since)
        if not cursor.startswith(base_url() + "/"):
            raise CursorExpired("No usable delta link", reason="invalid_cursor")
        return self._delta_page(connection, cursor, None)

    def list_since(self, connection, since: datetime, page: str = "") -> SyncPage:
        """The bounded fresh delta after an expired link: every inbox message received
        since ``since``."""
        if page:
            return self._delta_page(connection, page, None)
        return self._fresh_delta(connection, since)

    def fetch_raw(self, connection, provider_message_id: str) -> bytes:
        answer = request("GET", f"{base_url()}/me/messages/{quote(provider_message_id, '')}"
                                "/$value", connection.credentials,
                         headers={"Accept": "*/*"})
        return answer.content

    # -- send ------------------------------------------------------------------------------
    def send(self, connection, raw_mime: bytes, thread_id: str = "") -> SentMessage:
        """sendMail with the whole MIME (base64, ``text/plain``), so our Message-ID,
        In-Reply-To and References travel as written; Graph answers 202 without an id, so
        the copy in Sent Items is read back (a failure there never fails the send)."""
        body = base64.b64encode(raw_mime)
        if len(body) > REQUEST_MAX_BYTES:
            raise PermanentError(
                f"The message is {len(raw_mime) / 1e6:.1f} MB; Microsoft 365 sends at most "
                f"about {SEND_MAX_BYTES / 1e6:.1f} MB through Graph (4 MB per request, base64 "
                "included). Remove attachments or send a link instead.",
                reason="messageTooLarge")
        request("POST", base_url() + "/me/sendMail", connection.credentials, ok=(202,),
                data=body, headers={"Content-Type": "text/plain"})
        own = _own_message_id(raw_mime)
        try:
            found = self.find_sent(connection, own) if own else None
        except ProviderError as exc:
            logger.warning("graph: could not read back a sent message (%s %s)",
                           type(exc).__name__, exc.reason)
            found = None
        if found is not None:
            return found
        # Sent Items may lag behind the 202: the Message-ID stands in for the id.
        return SentMessage(f"<{own}>" if own else "", "", own)

    def find_sent(self, connection, message_id_header: str) -> SentMessage | None:
        wanted = normalize_message_id(message_id_header)
        if not wanted:
            return None
        quoted = f"<{wanted}>".replace("'", "''")
        # Every folder, not only Sent Items: Exchange answers sendMail's 202 with the
        # message saved in Drafts, and its transport moves it to Sent Items later. A retry
        # in that window must find it there too, or the customer gets it twice.
        answer = _json(request(
            "GET", f"{base_url()}/me/messages", connection.credentials,
            params={"$filter": f"internetMessageId eq '{quoted}'",
                    "$select": "id,conversationId,internetMessageId", "$top": "5"}))
        for item in answer.get("value") or []:
            if isinstance(item, dict) and item.get("id") and normalize_message_id(
                    str(item.get("internetMessageId") or "")) == wanted:
                return SentMessage(str(item["id"]), str(item.get("conversationId") or ""),
                                   wanted)
        return None

