"""Gmail through google-api-python-client (static discovery) and google-auth, with every
URL from settings (the sandbox in dev and tests, Google in production).

Contract: implements ``base.EmailProvider``. One HTTP request per call attempt
(``execute(num_retries=0)``); the library never refreshes tokens by itself (credentials
carry the access token only), so that a refresh happens in ``tokens.py``, under a lock,
with the rotated refresh token saved. Every failure is mapped to the ``ProviderError``
family; tokens never reach logs or messages.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import google_auth_httplib2
import httplib2
import requests
from django.conf import settings
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import id_token
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from channels_email.mime import normalize_message_id
from channels_email.providers import register
from channels_email.providers.base import (
    AuthError,
    CursorExpired,
    MessageRef,
    Notification,
    PermanentError,
    ProviderError,
    RateLimited,
    SentMessage,
    SyncPage,
    TokenSet,
    TransientError,
    WatchState,
)

GOOGLE_ISSUERS = {"https://accounts.google.com", "accounts.google.com"}
RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded",
                "dailyLimitExceeded"}
_session = requests.Session()
_google_request = GoogleRequest(session=_session)


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _http_error(exc: HttpError, *, history: bool = False) -> ProviderError:
    status = int(getattr(exc.resp, "status", 0) or 0)
    reason = ""
    try:
        details = exc.error_details
        if isinstance(details, list) and details and isinstance(details[0], dict):
            reason = details[0].get("reason", "")
    except Exception:  # noqa: BLE001 - an unusual error body: keep the status
        reason = ""
    message = f"Gmail answered {status} {reason}".strip()
    retry_after = None
    header = exc.resp.get("retry-after") if hasattr(exc.resp, "get") else None
    if header:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    if status == 401:
        return AuthError(message, status=status, reason="authError")
    if status == 429 or (status == 403 and reason in RATE_REASONS):
        return RateLimited(message, retry_after=retry_after, status=status, reason=reason)
    if status == 404 and history:
        return CursorExpired(message, status=status, reason=reason or "notFound")
    if status >= 500:
        return TransientError(message, status=status, reason=reason)
    return PermanentError(message, status=status, reason=reason)


def _call(request, *, history: bool = False):
    try:
        return request.execute(num_retries=0)
    except HttpError as exc:
        raise _http_error(exc, history=history) from None
    except (TimeoutError, OSError, httplib2.HttpLib2Error) as exc:
        raise TransientError(f"Gmail unreachable: {type(exc).__name__}") from None


def _token_request(data: dict) -> dict:
    try:
        response = _session.post(settings.GOOGLE_TOKEN_URI, data=data,
                                 timeout=settings.PROVIDER_HTTP_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise TransientError(f"token endpoint unreachable: {type(exc).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 500:
        raise TransientError(f"token endpoint answered {response.status_code}",
                             status=response.status_code)
    if response.status_code == 429:
        raise RateLimited("token endpoint throttled", status=429, reason="rate_limited")
    if response.status_code != 200 or "access_token" not in body:
        error = body.get("error", "") or f"http_{response.status_code}"
        text = f"{error}: {body.get('error_description', '')}".strip(": ")
        if error in ("invalid_grant", "unauthorized_client", "invalid_client"):
            raise AuthError(text, status=response.status_code, reason=error)
        raise PermanentError(text, status=response.status_code, reason=error)
    return body


def _token_set(body: dict) -> TokenSet:
    return TokenSet(
        access_token=body["access_token"],
        expires_at=datetime.now(UTC) + timedelta(seconds=int(body.get("expires_in", 3600))),
        refresh_token=body.get("refresh_token", ""),
        scopes=tuple((body.get("scope") or "").split()),
    )


@register("gmail")
class GmailProvider:
    name = "gmail"

    # ------------------------------------------------------------------ client
    def _service(self, credentials: dict):
        creds = Credentials(token=(credentials or {}).get("access_token"))
        http = google_auth_httplib2.AuthorizedHttp(
            creds, http=httplib2.Http(timeout=settings.PROVIDER_HTTP_TIMEOUT_SECONDS))
        return build("gmail", "v1", http=http, static_discovery=True, cache_discovery=False,
                     client_options={"api_endpoint": settings.GMAIL_API_ENDPOINT})

    def _users(self, connection):
        return self._service(connection.credentials).users()

    # ------------------------------------------------------------------ OAuth
    def authorization_url(self, *, state: str, code_challenge: str, redirect_uri: str,
                          login_hint: str = "") -> str:
        params = {
            "client_id": settings.GOOGLE_CLIENT_ID, "redirect_uri": redirect_uri,
            "response_type": "code", "scope": " ".join(settings.GMAIL_SCOPES),
            "state": state, "code_challenge": code_challenge,
            "code_challenge_method": "S256", "access_type": "offline", "prompt": "consent",
            "include_granted_scopes": "true",
        }
        if login_hint:
            params["login_hint"] = login_hint
        return f"{settings.GOOGLE_AUTH_URI}?{urlencode(params)}"

    def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str) -> TokenSet:
        return _token_set(_token_request({
            "grant_type": "authorization_code", "code": code, "code_verifier": code_verifier,
            "redirect_uri": redirect_uri, "client_id": settings.GOOGLE_CLIENT_ID,
            "client_secret": settings.GOOGLE_CLIENT_SECRET,
        }))

    def refresh(self, credentials: dict) -> TokenSet:
        return _token_set(_token_request({
            "grant_type": "refresh_token", "refresh_token": credentials.get("refresh_token", ""),
            "client_id": settings.GOOGLE_CLIENT_ID,
            "client_secret": settings.GOOGLE_CLIENT_SECRET,
        }))

    def revoke(self, credentials: dict) -> None:
        token = credentials.get("refresh_token") or credentials.get("access_token")
        if not token:
            return
        try:
            response = _session.post(settings.GOOGLE_REVOKE_URI, data={"token": token},
                                     timeout=settings.PROVIDER_HTTP_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise TransientError(f"revoke endpoint unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise TransientError(f"revoke answered {response.status_code}",
                                 status=response.status_code)
        # 400 invalid_token: already revoked or expired, which is what we wanted.

    def mailbox_address(self, credentials: dict) -> str:
        profile = _call(self._service(credentials).users().getProfile(userId="me"))
        return profile["emailAddress"].strip().lower()

    # ------------------------------------------------------------------ push
    def start_watch(self, connection) -> WatchState:
        body = {"topicName": settings.GMAIL_PUBSUB_TOPIC,
                "labelIds": [settings.GMAIL_WATCH_LABEL], "labelFilterBehavior": "INCLUDE"}
        reply = _call(self._users(connection).watch(userId="me", body=body))
        expires = datetime.fromtimestamp(int(reply.get("expiration", 0)) / 1000, tz=UTC)
        return WatchState(subscription_id="", expires_at=expires,
                          cursor=str(reply.get("historyId", "")))

    def stop_watch(self, connection) -> None:
        _call(self._users(connection).stop(userId="me"))

    def parse_notification(self, body: bytes, headers: dict[str, str]) -> list[Notification]:
        try:
            envelope = json.loads(body)
            data = json.loads(_b64url_decode(envelope["message"]["data"]
                                             .replace("+", "-").replace("/", "_")))
            mailbox = str(data["emailAddress"]).strip().lower()
            cursor = str(data.get("historyId", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PermanentError("malformed Pub/Sub push body", reason="malformed") from exc
        if "@" not in mailbox:
            raise PermanentError("push names no mailbox", reason="malformed")
        return [Notification(mailbox=mailbox, cursor_hint=cursor)]

    def verify_push(self, authorization_header: str) -> dict:
        """The claims of the push's OIDC token; AuthError unless Google (our sandbox in
        dev) signed it for our audience and push service account."""
        scheme, _, token = (authorization_header or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("no bearer token", reason="missing_token")
        try:
            claims = id_token.verify_token(token.strip(), _google_request,
                                           audience=settings.PUBSUB_AUDIENCE,
                                           certs_url=settings.GOOGLE_CERTS_URL)
        except Exception as exc:  # noqa: BLE001 - every verification failure is a refusal
            raise AuthError(f"token refused: {type(exc).__name__}",
                            reason="invalid_token") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise AuthError("token from another issuer", reason="wrong_issuer")
        if (claims.get("email") != settings.PUBSUB_SERVICE_ACCOUNT
                or not claims.get("email_verified")):
            raise AuthError("token for another service account", reason="wrong_account")
        if claims.get("exp", 0) < time.time():
            raise AuthError("token expired", reason="expired")
        return claims

    # ------------------------------------------------------------------ sync
    def current_cursor(self, connection) -> str:
        return str(_call(self._users(connection).getProfile(userId="me"))["historyId"])

    def changes_since(self, connection, cursor: str, page: str = "") -> SyncPage:
        reply = _call(self._users(connection).history().list(
            userId="me", startHistoryId=cursor, historyTypes=["messageAdded"],
            labelId=settings.GMAIL_WATCH_LABEL, pageToken=page or None, maxResults=500,
        ), history=True)
        seen: dict[str, MessageRef] = {}
        for record in reply.get("history", []):
            for added in record.get("messagesAdded", []):
                message = added.get("message", {})
                labels = message.get("labelIds")
                if labels is not None and settings.GMAIL_WATCH_LABEL not in labels:
                    continue
                if message.get("id"):
                    seen.setdefault(message["id"], MessageRef(message["id"],
                                                              message.get("threadId", "")))
        next_page = reply.get("nextPageToken", "")
        return SyncPage(messages=list(seen.values()), next_page=next_page,
                        cursor="" if next_page else str(reply.get("historyId", cursor)))

    def list_since(self, connection, since: datetime, page: str = "") -> SyncPage:
        reply = _call(self._users(connection).messages().list(
            # "after:" is exclusive and counts whole seconds: start one second earlier so
            # that the starting second itself is included.
            userId="me", q=f"after:{int(since.timestamp()) - 1}",
            labelIds=[settings.GMAIL_WATCH_LABEL], pageToken=page or None, maxResults=500))
        return SyncPage(messages=[MessageRef(m["id"], m.get("threadId", ""))
                                  for m in reply.get("messages", [])],
                        next_page=reply.get("nextPageToken", ""))

    def fetch_raw(self, connection, provider_message_id: str) -> bytes:
        reply = _call(self._users(connection).messages().get(
            userId="me", id=provider_message_id, format="raw"))
        return _b64url_decode(reply["raw"])

    # ------------------------------------------------------------------ send
    def send(self, connection, raw_mime: bytes, thread_id: str = "") -> SentMessage:
        body = {"raw": base64.urlsafe_b64encode(raw_mime).decode()}
        if thread_id:
            body["threadId"] = thread_id
        reply = _call(self._users(connection).messages().send(userId="me", body=body))
        return self._sent(connection, reply["id"], reply.get("threadId", ""))

    def find_sent(self, connection, message_id_header: str) -> SentMessage | None:
        wanted = normalize_message_id(message_id_header)
        reply = _call(self._users(connection).messages().list(
            userId="me", q=f"rfc822msgid:{wanted}", labelIds=["SENT"], maxResults=5))
        hits = reply.get("messages", [])
        if not hits:
            return None
        return self._sent(connection, hits[0]["id"], hits[0].get("threadId", ""))

    def _sent(self, connection, message_id: str, thread_id: str) -> SentMessage:
        meta = _call(self._users(connection).messages().get(
            userId="me", id=message_id, format="metadata", metadataHeaders=["Message-ID"]))
        header = next((h.get("value", "") for h in meta.get("payload", {}).get("headers", [])
                       if h.get("name", "").lower() == "message-id"), "")
        return SentMessage(provider_message_id=message_id,
                           provider_thread_id=thread_id or meta.get("threadId", ""),
                           message_id_header=normalize_message_id(header))
