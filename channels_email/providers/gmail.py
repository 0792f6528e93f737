"""Gmail behind ``EmailProvider``: OAuth by hand (plain ``requests`` to the token endpoint),
the Gmail API through google-api-python-client, and Pub/Sub push verification.

Rules kept here:

- the API client gets an access token only (no refresh token), so the library never
  refreshes on its own: refreshing is the beat task's job, and it must save a rotated
  refresh token;
- one HTTP request per attempt (``execute(num_retries=0)``, no auth-refresh retry on 401);
- only the ``ProviderError`` family leaves this module (no HttpError, RefreshError,
  httplib2 or socket errors);
- tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import hashlib
import io
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any
from urllib.parse import urlencode, urlsplit

import google.auth.exceptions
import google_auth_httplib2
import httplib2
import jwt as pyjwt
import requests
from django.conf import settings
from google.auth.transport.requests import Request as GoogleAuthRequest
from google.oauth2 import id_token as google_id_token
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseUpload

from channels_email.mime import normalize_message_id
from channels_email.providers.base import (
    ACCESS_TOKEN_REFUSED,
    OAUTH_MAILBOX,
    Accepted,
    AuthError,
    ConnectionLookup,
    CursorExpired,
    Handshake,
    MessageRef,
    Notification,
    PermanentError,
    ProviderError,
    RateLimited,
    Rejected,
    SandboxDemo,
    SentMessage,
    SignInRefused,
    SyncPage,
    TokenSet,
    TransientError,
    WatchState,
    WebhookRoute,
)

logger = logging.getLogger(__name__)

RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# A token without the scope the call needs: the grant no longer covers what we do, so the
# connection needs a reconnect (base.AuthError: "scopes withdrawn").
SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})
PUSH_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
PAGE_SIZE = 500
# messages.send: a JSON body (base64 raw) is refused above a payload limit that has been
# seen as low as 1 MB; bigger mail goes through the media upload, up to its maxSize.
JSON_SEND_MAX_BYTES = 512 * 1024
SEND_MAX_BYTES = 36700160
# NUL and the other C0 controls and DEL: never part of an address in a push.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _timeout() -> float:
    return float(settings.PROVIDER_HTTP_TIMEOUT_SECONDS)


def _b64_decode_tolerant(text: str) -> bytes:
    """base64 or base64url, padded or not (Gmail raw, Pub/Sub data)."""
    text = re.sub(r"\s+", "", text).replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - _now()).total_seconds())


def _google_reason(content: bytes | str) -> tuple[str, str]:
    """(reason, message) from Google's error envelope, tolerant of anything else."""
    try:
        data = json.loads(content)
    except (TypeError, ValueError):
        return "", ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return (error if isinstance(error, str) else ""), ""
    reason = ""
    for item in error.get("errors") or []:
        if isinstance(item, dict) and item.get("reason"):
            reason = str(item["reason"])
            break
    if not reason:
        for item in error.get("details") or []:
            if isinstance(item, dict) and item.get("reason"):
                reason = str(item["reason"])
                break
    return reason or str(error.get("status") or ""), str(error.get("message") or "")


def _map_http_error(exc: HttpError, *, cursor_call: bool = False) -> ProviderError:
    status = int(exc.resp.status)
    reason, message = _google_reason(exc.content)
    text = f"Gmail API {status} {reason}: {message}".strip()
    if status == 401:
        return AuthError(text, status=401, reason=ACCESS_TOKEN_REFUSED)
    if status == 429 or (status == 403 and reason in RATE_LIMIT_REASONS):
        return RateLimited(text, status=status, reason=reason or "rateLimitExceeded",
                           retry_after=_retry_after(exc.resp.get("retry-after")))
    if status == 403 and reason in SCOPE_REASONS:
        return AuthError(text, status=403, reason=reason)
    if status == 404 and cursor_call:
        return CursorExpired(text, status=404, reason=reason or "notFound")
    if status >= 500 or status == 408:
        return TransientError(text, status=status, reason=reason)
    return PermanentError(text, status=status, reason=reason)


def _execute(request, *, cursor_call: bool = False) -> Any:
    """One HTTP request; every failure becomes a ProviderError."""
    try:
        return request.execute(num_retries=0)
    except HttpError as exc:
        error = _map_http_error(exc, cursor_call=cursor_call)
        logger.info("gmail call failed: %s (%s)", type(error).__name__, error)
        raise error from None
    except google.auth.exceptions.RefreshError as exc:
        raise AuthError(f"Google credentials cannot be used: {exc}",
                        reason=ACCESS_TOKEN_REFUSED) from None
    except google.auth.exceptions.TransportError as exc:
        raise TransientError(f"Google transport error: {exc}", reason="transport") from None
    except (TimeoutError, httplib2.HttpLib2Error, OSError) as exc:
        # socket.timeout is TimeoutError; ConnectionError and ssl errors are OSErrors.
        reason = "timeout" if isinstance(exc, TimeoutError) else "connection"
        raise TransientError(f"Gmail API unreachable: {type(exc).__name__}: {exc}",
                             reason=reason) from None
    except json.JSONDecodeError as exc:
        raise TransientError(f"Gmail API answered something that is not JSON: {exc}",
                             reason="malformed") from None


def _access_token(credentials: dict | None) -> str:
    token = (credentials or {}).get("access_token") or ""
    if not token:
        raise AuthError("The connection has no access token", reason="no_credentials")
    return token


@functools.lru_cache(maxsize=4)
def _discovery(endpoint: str) -> str:
    """The library's static Gmail discovery document rooted at ``endpoint``. Rooting the
    document (rather than the ``api_endpoint`` client option, which moves only the host
    of media-upload URLs and keeps their https scheme) sends uploads there too."""
    endpoint = endpoint.rstrip("/") + "/"
    document = json.loads(get_static_doc("gmail", "v1"))
    # The mTLS root too: with GOOGLE_API_USE_MTLS_ENDPOINT=always the library would
    # otherwise leave the configured endpoint for Google's.
    document["rootUrl"] = document["mtlsRootUrl"] = endpoint
    document["baseUrl"] = endpoint + document["servicePath"]
    return json.dumps(document)


def _service(credentials: dict | None):
    """A Gmail client over an access token only, with our timeout and no auth retries."""
    creds = Credentials(token=_access_token(credentials))
    http = google_auth_httplib2.AuthorizedHttp(
        creds, http=httplib2.Http(timeout=_timeout()), refresh_status_codes=())
    return build_from_document(_discovery(settings.GMAIL_API_ENDPOINT), http=http)


def _token_set(body: dict, *, keep_refresh: bool = True) -> TokenSet:
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise PermanentError("The token endpoint returned no access_token", reason="malformed")
    try:
        expires_in = float(body.get("expires_in") or 3600)
    except (TypeError, ValueError):
        expires_in = 3600.0
    scopes = tuple(str(body.get("scope") or "").split())
    refresh = body.get("refresh_token") if keep_refresh else ""
    return TokenSet(access_token=access, expires_at=_now() + timedelta(seconds=expires_in),
                    refresh_token=refresh if isinstance(refresh, str) else "", scopes=scopes)


def _oauth_post(url: str, data: dict, *, what: str) -> requests.Response:
    try:
        return requests.post(url, data=data, headers={"Accept": "application/json"},
                             timeout=_timeout())
    except requests.Timeout:
        raise TransientError(f"Google {what} endpoint timed out", reason="timeout") from None
    except requests.RequestException as exc:
        raise TransientError(f"Google {what} endpoint unreachable: {type(exc).__name__}",
                             reason="connection") from None


def _oauth_error(response: requests.Response, *, what: str) -> ProviderError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    error = body.get("error")
    if isinstance(error, dict):  # some Google endpoints use the API envelope
        error = error.get("status") or error.get("message")
    error = str(error or "")
    text = f"Google {what} endpoint {response.status_code} {error}: " \
           f"{body.get('error_description') or ''}".strip()
    status = response.status_code
    if error in ("invalid_grant", "invalid_client", "unauthorized_client"):
        # The grant (or our client) is gone: nothing works until someone acts.
        return AuthError(text, status=status, reason=error)
    if status == 429:
        return RateLimited(text, status=status, reason=error or "rateLimitExceeded",
                           retry_after=_retry_after(response.headers.get("Retry-After")))
    if status >= 500 or status == 408:
        return TransientError(text, status=status, reason=error)
    return PermanentError(text, status=status, reason=error)


def _header(message: dict, name: str) -> str:
    for item in (message.get("payload") or {}).get("headers") or []:
        if str(item.get("name", "")).lower() == name.lower():
            return str(item.get("value") or "")
    return ""


def _own_message_id(raw_mime: bytes) -> str:
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw_mime)
    except Exception:  # noqa: BLE001 - a fallback only
        return ""
    return normalize_message_id(str(headers.get("Message-ID") or ""))


# --------------------------------------------------------------------- push verification


@dataclass(frozen=True)
class _CachedResponse:
    """A google.auth transport Response kept in memory."""

    status: int
    headers: dict
    data: bytes


class _CachingRequest:
    """google.auth transport ``Request`` whose GET answers are cached for a while (the
    certs document): ``verify_token`` fetches the certs on every call otherwise."""

    default_ttl = 300.0
    max_ttl = 6 * 3600.0
    min_refetch = 30.0  # an unknown kid refetches at most this often

    def __init__(self):
        self._session = requests.Session()
        self._inner = GoogleAuthRequest(self._session)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, float, _CachedResponse]] = {}
        self.fetches = 0

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        timeout = timeout or _timeout()
        if method != "GET":
            return self._inner(url, method=method, body=body, headers=headers,
                               timeout=timeout, **kwargs)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(url)
        if hit and hit[1] > now:
            return hit[2]
        response = self._inner(url, method="GET", headers=headers, timeout=timeout, **kwargs)
        self.fetches += 1
        if response.status != 200:
            return response
        cached = _CachedResponse(response.status, dict(response.headers), response.data)
        with self._lock:
            self._cache[url] = (now, now + self._ttl(cached.headers), cached)
        return cached

    def _ttl(self, headers: dict) -> float:
        control = next((v for k, v in headers.items() if k.lower() == "cache-control"), "")
        match = re.search(r"max-age=(\d+)", control or "")
        if not match:
            return self.default_ttl
        return min(float(match.group(1)), self.max_ttl)

    def forget_unless_kid(self, url: str, kid: str) -> None:
        """Drop the cached certs when they lack ``kid`` (Google rotated its keys), unless
        they were fetched moments ago."""
        with self._lock:
            hit = self._cache.get(url)
            if not hit or not kid:
                return
            try:
                doc = json.loads(hit[2].data)
            except ValueError:
                doc = {}
            if isinstance(doc, dict) and "keys" in doc:
                kids = {k.get("kid") for k in doc["keys"] if isinstance(k, dict)}
            else:
                kids = set(doc) if isinstance(doc, dict) else set()
            if kid not in kids and time.monotonic() - hit[0] >= self.min_refetch:
                del self._cache[url]

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self.fetches = 0


_CERTS_REQUEST = _CachingRequest()


def _jwt_header(token: str) -> dict:
    try:
        head = token.split(".")[0]
        header = json.loads(_b64_decode_tolerant(head))
    except (ValueError, IndexError, binascii.Error):
        raise AuthError("The push token is not a JWT", reason="malformed_token") from None
    if not isinstance(header, dict) or token.count(".") != 2:
        raise AuthError("The push token is not a JWT", reason="malformed_token")
    return header


def _jwt_failure_reason(exc: Exception) -> str:
    if isinstance(exc, pyjwt.ExpiredSignatureError):
        return "expired_token"
    if isinstance(exc, pyjwt.InvalidAudienceError):
        return "wrong_audience"
    text = str(exc).lower()
    if "expired" in text:
        return "expired_token"
    if "audience" in text:
        return "wrong_audience"
    if "signature" in text:
        return "bad_signature"
    if "key id" in text or "signing key" in text:
        return "unknown_key"
    return "invalid_token"


class _VerifiedTokens:
    """Tokens this process verified already, until they expire. Pub/Sub signs one token
    per subscription and reuses it for many pushes, so most pushes skip the signature
    check. Keyed by the exact token and the settings it was checked against."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.entries: dict[tuple, dict] = {}
        self.lock = threading.Lock()

    def get(self, key: tuple) -> dict | None:
        claims = self.entries.get(key)
        if claims is not None and float(claims.get("exp", 0)) > time.time() + 5:
            return claims
        return None

    def put(self, key: tuple, claims: dict) -> None:
        with self.lock:
            if len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = claims

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


_VERIFIED = _VerifiedTokens()


def verify_push(authorization_header: str) -> dict:
    """Verify the OIDC JWT of a Pub/Sub push (``Authorization: Bearer ...``) and return its
    claims. Raises AuthError on any verification failure, TransientError when Google's
    certs cannot be fetched."""
    header = (authorization_header or "").strip()
    if not header[:7].lower() == "bearer " or not header[7:].strip():
        raise AuthError("No bearer token on the push", reason="missing_token")
    token = header[7:].strip()
    audience = settings.PUBSUB_AUDIENCE
    account = settings.PUBSUB_SERVICE_ACCOUNT
    if not audience or not account:
        raise AuthError("PUBSUB_AUDIENCE / PUBSUB_SERVICE_ACCOUNT are not configured",
                        reason="not_configured")
    key = (token, audience, account, settings.GOOGLE_CERTS_URL)
    known = _VERIFIED.get(key)
    if known is not None:
        return dict(known)
    claims = _verify_push_token(token, audience, account)
    _VERIFIED.put(key, claims)
    return dict(claims)


def _verify_push_token(token: str, audience: str, account: str) -> dict:
    kid = str(_jwt_header(token).get("kid") or "")
    certs_url = settings.GOOGLE_CERTS_URL
    _CERTS_REQUEST.forget_unless_kid(certs_url, kid)
    try:
        claims = google_id_token.verify_token(token, _CERTS_REQUEST, audience=audience,
                                              certs_url=certs_url, clock_skew_in_seconds=10)
    except google.auth.exceptions.TransportError as exc:
        raise TransientError(f"Google certs unavailable: {exc}", reason="certs_unavailable",
                             ) from None
    except (requests.RequestException, OSError) as exc:
        raise TransientError(f"Google certs unreachable: {type(exc).__name__}",
                             reason="certs_unavailable") from None
    except (ValueError, google.auth.exceptions.GoogleAuthError, pyjwt.PyJWTError,
            TypeError, KeyError) as exc:
        raise AuthError(f"Push token rejected: {exc}", reason=_jwt_failure_reason(exc)) \
            from None
    if not isinstance(claims, dict):
        raise AuthError("Push token rejected", reason="invalid_token")
    if claims.get("iss") not in PUSH_ISSUERS:
        raise AuthError("Push token has the wrong issuer", reason="wrong_issuer")
    if claims.get("email") != account:
        raise AuthError("Push token names another service account", reason="wrong_email")
    if claims.get("email_verified") not in (True, "true"):
        raise AuthError("Push token email is not verified", reason="email_not_verified")
    return dict(claims)


# ------------------------------------------------------------------------------- provider


class GmailProvider:
    """Gmail: OAuth sign-in, a users.watch renewed by beat with Pub/Sub push to
    ``/webhooks/google/pubsub/``, a historyId cursor, raw fetch, send and find-sent."""

    name = "gmail"
    label = "Gmail"
    connect_button = "Gmail: Authorize with Google"
    not_configured_hint = ("Gmail is not configured on this server (GOOGLE_CLIENT_ID). "
                           "See the README.")
    disconnect_hint = ""  # Disconnect revokes the grant at Google itself
    capabilities = OAUTH_MAILBOX
    webhook_routes = (WebhookRoute(path="google/pubsub", hook="pubsub", log_key="google"),)

    # The demo's seeded mailbox is a Gmail one: the sandbox's Google picker suggests it.
    demo_seeded_mailbox = True

    def __init__(self, page_size: int = PAGE_SIZE):
        self.page_size = page_size

    @staticmethod
    def sandbox_demo(*, public_url: str, sandbox: dict, suggested: tuple[str, ...] = ()
                     ) -> SandboxDemo:
        """The demo's Google side: an OAuth client with our callback, and the Pub/Sub
        topic pushing to our webhook (no real secrets)."""
        client_id = "helpdesk-demo.apps.googleusercontent.com"
        secret, topic = "demo-sandbox-secret", "projects/helpdesk-demo/topics/gmail"
        account = "pubsub-push@helpdesk-demo.iam.gserviceaccount.com"
        webhook = f"{public_url}/webhooks/google/pubsub/"
        return SandboxDemo(
            env={"GOOGLE_CLIENT_ID": client_id, "GOOGLE_CLIENT_SECRET": secret,
                 "GMAIL_PUBSUB_TOPIC": topic, "PUBSUB_SERVICE_ACCOUNT": account},
            calls=(("/_sandbox/clients", {
                "client_id": client_id, "client_secret": secret,
                "redirect_uris": [f"{public_url}/oauth/gmail/callback/"]}),
                   ("/_sandbox/settings", {"topics": {topic: {
                       "push_endpoint": webhook, "audience": webhook,
                       "service_account": account}},
                       "suggested_accounts": list(suggested)})),
            mailbox=suggested[0] if suggested else "", check_domain="acme.example")

    @staticmethod
    def sandbox_consent(auth_query: dict, address: str) -> list[tuple[str, str]]:
        """The form the sandbox's consent page posts when ``address`` allows everything
        (the demo's --check walks it by hand)."""
        return [*auth_query.items(), ("step", "consent"), ("email", address),
                ("decision", "allow"),
                *(("grant_scope", s) for s in auth_query.get("scope", "").split())]

    # -- what the channel shows and wires ------------------------------------------------
    def is_configured(self) -> bool:
        return bool(settings.GOOGLE_CLIENT_ID)

    def form_action_origins(self) -> tuple[str, ...]:
        auth = urlsplit(settings.GOOGLE_AUTH_URI)
        return (f"{auth.scheme}://{auth.netloc}",) if auth.scheme and auth.netloc else ()

    def missing_scopes(self, tokens: TokenSet) -> set[str]:
        """The scopes we asked for that the consent did not grant (Google lets the user
        untick each one)."""
        return set(settings.GMAIL_SCOPES) - set(tokens.scopes)

    # -- OAuth ----------------------------------------------------------------------------
    def begin_sign_in(self, *, state: str, redirect_uri: str, login_hint: str = ""
                      ) -> tuple[str, dict]:
        """Google's consent URL with a PKCE challenge; the flow keeps its verifier."""
        verifier = secrets.token_urlsafe(64)[:96]
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        url = self.authorization_url(state=state, code_challenge=challenge,
                                     redirect_uri=redirect_uri, login_hint=login_hint)
        return url, {"verifier": verifier}

    def complete_sign_in(self, *, flow: dict, params: dict, redirect_uri: str) -> TokenSet:
        if params.get("error"):
            raise SignInRefused("Access was not granted, so nothing was connected.",
                                reason=str(params["error"])[:100], declined=True)
        return self.exchange_code(code=params.get("code") or "",
                                  code_verifier=flow.get("verifier") or "",
                                  redirect_uri=redirect_uri)

    def callback_notice(self, params: dict) -> str:
        return ""

    def authorization_url(self, *, state: str, code_challenge: str, redirect_uri: str,
                          login_hint: str = "") -> str:
        params = {
            "client_id": settings.GOOGLE_CLIENT_ID,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": " ".join(settings.GMAIL_SCOPES),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "access_type": "offline",
            "prompt": "consent",
            "include_granted_scopes": "true",
        }
        if login_hint:
            params["login_hint"] = login_hint
        base = settings.GOOGLE_AUTH_URI
        return base + ("&" if "?" in base else "?") + urlencode(params)

    def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str) -> TokenSet:
        response = _oauth_post(settings.GOOGLE_TOKEN_URI, {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": code_verifier,
            "redirect_uri": redirect_uri,
            "client_id": settings.GOOGLE_CLIENT_ID,
            "client_secret": settings.GOOGLE_CLIENT_SECRET,
        }, what="token")
        return _token_set(self._oauth_json(response, what="token"))

    def refresh(self, credentials: dict) -> TokenSet:
        refresh_token = (credentials or {}).get("refresh_token") or ""
        if not refresh_token:
            raise AuthError("The connection has no refresh token", reason="invalid_grant")
        response = _oauth_post(settings.GOOGLE_TOKEN_URI, {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": settings.GOOGLE_CLIENT_ID,
            "client_secret": settings.GOOGLE_CLIENT_SECRET,
        }, what="token")
        return _token_set(self._oauth_json(response, what="token"))

    def revoke(self, credentials: dict) -> None:
        credentials = credentials or {}
        token = credentials.get("refresh_token") or credentials.get("access_token") or ""
        if not token:
            return
        response = _oauth_post(settings.GOOGLE_REVOKE_URI, {"token": token}, what="revoke")
        if response.status_code == 200:
            return
        error = _oauth_error(response, what="revoke")
        if response.status_code == 400 and error.reason in ("invalid_token", "invalid_grant"):
            return  # already revoked or unknown: the grant is gone either way
        raise error

    @staticmethod
    def _oauth_json(response: requests.Response, *, what: str) -> dict:
        if response.status_code != 200:
            raise _oauth_error(response, what=what)
        try:
            body = response.json()
        except ValueError:
            raise TransientError(f"Google {what} endpoint answered no JSON",
                                 reason="malformed") from None
        if not isinstance(body, dict):
            raise PermanentError(f"Google {what} endpoint answered no object",
                                 reason="malformed")
        return body

    # -- identity and push ----------------------------------------------------------------
    def mailbox_address(self, credentials: dict) -> str:
        profile = _execute(_service(credentials).users().getProfile(userId="me"))
        return str(profile.get("emailAddress") or "").strip().lower()

    def current_cursor(self, connection) -> str:
        profile = _execute(_service(connection.credentials).users().getProfile(userId="me"))
        return str(profile.get("historyId") or "")

    def start_watch(self, connection) -> WatchState:
        body = {"topicName": settings.GMAIL_PUBSUB_TOPIC,
                "labelIds": [settings.GMAIL_WATCH_LABEL],
                "labelFilterBehavior": "INCLUDE"}
        answer = _execute(_service(connection.credentials).users().watch(userId="me",
                                                                          body=body))
        try:
            expires = datetime.fromtimestamp(int(answer["expiration"]) / 1000, tz=UTC)
        except (KeyError, TypeError, ValueError):
            raise PermanentError("users.watch answered no expiration",
                                 reason="malformed") from None
        return WatchState(subscription_id="", expires_at=expires,
                          cursor=str(answer.get("historyId") or ""))

    def stop_watch(self, connection) -> None:
        _execute(_service(connection.credentials).users().stop(userId="me"))

    def parse_notification(self, body: bytes, headers: dict[str, str]) -> list[Notification]:
        try:
            envelope = json.loads(body)
            data = envelope["message"]["data"]
            payload = json.loads(_b64_decode_tolerant(data))
            address = payload["emailAddress"]
        except (ValueError, TypeError, KeyError, binascii.Error, RecursionError):
            # RecursionError: json.loads of a deeply nested body exhausts the stack.
            raise PermanentError("Malformed Pub/Sub push body", reason="malformed") from None
        if not isinstance(address, str) or "@" not in address or len(address) > 320 or (
                _CONTROL_CHARACTERS.search(address)):
            # A NUL cannot reach PostgreSQL (the lookup would fail), and no address has
            # control characters or exceeds RFC 5321's 320 characters.
            raise PermanentError("Malformed Pub/Sub push body", reason="malformed")
        history = payload.get("historyId", "")
        if isinstance(history, bool) or not isinstance(history, (int, str)) or (
                history != "" and not str(history).isdigit()):
            raise PermanentError("Malformed Pub/Sub push body", reason="malformed")
        return [Notification(mailbox=address.strip().lower(), cursor_hint=str(history))]

    def verify_push(self, authorization_header: str) -> dict:
        """See the module-level ``verify_push``."""
        return verify_push(authorization_header)

    def handle_webhook(self, hook: str, request, lookup: ConnectionLookup
                       ) -> Handshake | Accepted | Rejected:
        """``POST /webhooks/google/pubsub/``: no or unverifiable OIDC token: 401 (missing)
        or 403 (bad signature, expired, wrong audience, issuer or service account);
        Google's certs unreachable: 503. Malformed body (bad JSON, nesting too deep to
        parse, an address with control characters such as NUL): 400. An unknown or
        disconnected mailbox is logged and accepted (Pub/Sub would otherwise retry for
        days). ``lookup`` may raise ``LookupUnavailable``."""
        authorization = request.headers.get("Authorization", "")
        if not authorization:
            return Rejected(401, "missing bearer token")
        try:
            self.verify_push(authorization)
        except AuthError as exc:
            logger.warning("webhook.google.rejected reason=%s", exc.reason or exc)
            return Rejected(403, "forbidden")
        except ProviderError as exc:  # Google's certs unreachable: Pub/Sub retries
            logger.warning("webhook.google.cannot_verify reason=%s", exc.reason or exc)
            return Rejected(503, "try again")
        try:
            notifications = self.parse_notification(request.body, dict(request.headers))
        except PermanentError:
            return Rejected(400, "malformed push body")
        connection_ids: list[int] = []
        for note in notifications:
            connection_id = lookup.by_mailbox(self.name, note.mailbox)
            if connection_id is None:
                logger.info("webhook.google.unknown_mailbox mailbox=%s", note.mailbox)
                continue
            connection_ids.append(connection_id)
        return Accepted(tuple(connection_ids))

    # -- sync -----------------------------------------------------------------------------
    def changes_since(self, connection, cursor: str, page: str = "") -> SyncPage:
        cursor = str(cursor or "")
        if not cursor.isdigit():
            raise CursorExpired("No usable history cursor", reason="invalid_cursor")
        label = settings.GMAIL_WATCH_LABEL
        answer = _execute(_service(connection.credentials).users().history().list(
            userId="me", startHistoryId=cursor, historyTypes=["messageAdded"], labelId=label,
            pageToken=page or None, maxResults=self.page_size), cursor_call=True)
        seen: set[str] = set()
        messages: list[MessageRef] = []
        for record in answer.get("history") or []:
            for added in record.get("messagesAdded") or []:
                message = added.get("message") or {}
                msg_id = message.get("id")
                labels = message.get("labelIds")
                if not msg_id or msg_id in seen or (labels is not None and label not in labels):
                    continue  # SENT/DRAFT and other labels are not customer mail
                seen.add(msg_id)
                messages.append(MessageRef(msg_id, message.get("threadId") or ""))
        next_page = answer.get("nextPageToken") or ""
        return SyncPage(messages=messages, next_page=next_page,
                        cursor="" if next_page else str(answer.get("historyId") or ""))

    def list_since(self, connection, since: datetime, page: str = "") -> SyncPage:
        answer = _execute(_service(connection.credentials).users().messages().list(
            # "after:" is exclusive and counts whole seconds: start one second earlier so
            # that the starting second itself is included.
            userId="me", q=f"after:{int(since.timestamp()) - 1}",
            labelIds=[settings.GMAIL_WATCH_LABEL], pageToken=page or None,
            maxResults=self.page_size))
        messages = [MessageRef(m["id"], m.get("threadId") or "")
                    for m in answer.get("messages") or [] if m.get("id")]
        return SyncPage(messages=messages, next_page=answer.get("nextPageToken") or "")

    def fetch_raw(self, connection, provider_message_id: str) -> bytes:
        answer = _execute(_service(connection.credentials).users().messages().get(
            userId="me", id=provider_message_id, format="raw"))
        try:
            return _b64_decode_tolerant(answer["raw"])
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise PermanentError("messages.get answered no raw message",
                                 reason="malformed") from None

    # -- send -----------------------------------------------------------------------------
    def send(self, connection, raw_mime: bytes, thread_id: str = "") -> SentMessage:
        service = _service(connection.credentials)
        metadata = {"threadId": thread_id} if thread_id else {}
        if len(raw_mime) <= JSON_SEND_MAX_BYTES:
            request = service.users().messages().send(userId="me", body={
                **metadata, "raw": base64.urlsafe_b64encode(raw_mime).decode("ascii")})
        else:  # Google refuses big JSON bodies: the message goes to the /upload endpoint
            if len(raw_mime) > SEND_MAX_BYTES:
                raise PermanentError(f"The message is {len(raw_mime) // 2**20} MB; Gmail "
                                     f"sends at most {SEND_MAX_BYTES // 2**20} MB.",
                                     reason="messageTooLarge")
            media = MediaIoBaseUpload(io.BytesIO(raw_mime), mimetype="message/rfc822")
            request = service.users().messages().send(userId="me", body=metadata or None,
                                                      media_body=media)
        answer = _execute(request)
        sent_id = str(answer.get("id") or "")
        sent_thread = str(answer.get("threadId") or "")
        try:
            header = self._read_message_id(service, sent_id)
        except ProviderError as exc:
            # Sent already: never fail the send over the read-back (a retry would send
            # twice); fall back to the Message-ID we put in the MIME.
            logger.warning("gmail: could not read back the Message-ID of a sent message "
                           "(%s %s)", type(exc).__name__, exc.reason)
            header = _own_message_id(raw_mime)
        return SentMessage(sent_id, sent_thread, header)

    def find_sent(self, connection, message_id_header: str) -> SentMessage | None:
        wanted = normalize_message_id(message_id_header)
        if not wanted:
            return None
        service = _service(connection.credentials)
        answer = _execute(service.users().messages().list(
            userId="me", q=f"rfc822msgid:{wanted}", labelIds=["SENT"], maxResults=10))
        hits = [m for m in answer.get("messages") or [] if m.get("id")]
        if not hits:
            return None
        first = hits[0]
        # A hit for rfc822msgid:<wanted> carries that Message-ID: nothing to read back.
        return SentMessage(first["id"], first.get("threadId") or "", wanted)

    @staticmethod
    def _read_message_id(service, message_id: str) -> str:
        message = _execute(service.users().messages().get(
            userId="me", id=message_id, format="metadata", metadataHeaders=["Message-ID"]))
        return normalize_message_id(_header(message, "Message-ID"))
