"""Microsoft Graph v1.0, as much of it as a helpdesk mailbox uses (PROVIDERS.md section 5).

- ``GET /v1.0/me``: the signed-in user (``mail``, ``userPrincipalName``, ``id``).
- ``POST /v1.0/subscriptions``: a change-notification subscription. Before answering 201,
  Graph validates ``notificationUrl`` and (when given) ``lifecycleNotificationUrl``: it
  POSTs ``?validationToken=<url-encoded text>`` (``Content-Type: text/plain``) to each and
  wants 200, ``text/plain`` and exactly the decoded token back within 10 seconds, else 400
  ``ValidationError``. ``expirationDateTime`` is required, in the future, at most 10,080
  minutes ahead; ``clientState`` at most 128 characters; at most 1,000 subscriptions per
  mailbox. ``GET``/``PATCH`` (renew: a new ``expirationDateTime``)/``DELETE`` on
  ``/v1.0/subscriptions/{id}``, ``POST .../{id}/reauthorize``. An expired or removed
  subscription is gone: 404 ``ResourceNotFound``.
- Change notifications: every message that lands in the subscribed folder of a mailbox
  with a live subscription is POSTed to its ``notificationUrl`` (``{"value": [...]}``,
  ``clientState`` and ``resourceData.id`` in each item, several items per POST when they
  pile up), by the delivery thread here; any 2xx acknowledges, anything else is retried
  with exponential backoff (``push_retry_*`` settings), each attempt logged in
  ``/_sandbox/pushes`` (``"kind": "graph"``). The ``push_duplicate`` / ``push_reorder``
  faults apply as they do to Pub/Sub. While a subscription waits for reauthorization its
  notifications are dropped (logged), as Graph stops delivering then.
- Lifecycle events on command: ``POST /_sandbox/graph/lifecycle {"mailbox" or
  "subscription_id", "event"}`` sends ``reauthorizationRequired`` (the subscription then
  needs ``/reauthorize`` or a PATCH), ``subscriptionRemoved`` (the subscription is
  deleted) or ``missed`` to its ``lifecycleNotificationUrl``.
- Mail: ``GET /v1.0/me/messages/{id}`` (JSON, ``$select``), ``.../{id}/$value`` (the MIME),
  ``GET /v1.0/me/mailFolders('inbox'|'sentitems')/messages`` (``$filter`` on
  ``internetMessageId eq '<...>'`` or ``receivedDateTime ge|gt``, ``$top``, ``$select``),
  and ``.../messages/delta`` (initial round, ``@odata.nextLink`` pages of
  ``Prefer: odata.maxpagesize`` items (default 10), an ``@odata.deltaLink`` at the end,
  ``$filter=receivedDateTime ge|gt <time>`` kept in the links; an unknown or expired delta
  or skip token: 410 ``SyncStateNotFound``; ``POST /_sandbox/graph/expire-delta
  {"mailbox"}`` expires every token of a mailbox).
- ``POST /v1.0/me/sendMail``: the MIME form (``Content-Type: text/plain``, body = base64 of
  the RFC 822 message) keeps the message's own Message-ID, In-Reply-To and References;
  202, no body. The JSON form (``{"message", "saveToSentItems"}``) refuses an
  ``internetMessageHeaders`` name without the ``x-`` prefix (400
  ``InvalidInternetMessageHeader``). Bad base64: 400 ``ErrorMimeContentInvalidBase64String``;
  a request over 4 MB: 413 ``RequestEntityTooLarge``; more than ``graph_send_per_minute``
  (30, Exchange Online's limit) messages in a minute: 429 with ``Retry-After``. The copy
  lands in Sent Items; recipients that are sandbox mailboxes get it in their inbox. As in
  Exchange, the 202 comes with the message saved in Drafts and the transport moves it to
  Sent Items afterwards: setting ``graph_transport_delay_ms`` (default 0, at once) keeps
  it in Drafts that long. ``GET /v1.0/me/messages`` lists (and filters) every folder.
- Access tokens are the identity side's (``access_tokens`` records with ``"provider":
  "microsoft"``): missing, unknown, expired or revoked -> 401 ``InvalidAuthenticationToken``;
  without the permission the call needs -> 403 ``ErrorAccessDenied``.
- Faults (``/_sandbox/faults`` with ``"target": "graph"``): ``too_many_requests`` (429 with
  ``Retry-After``), ``mailbox_concurrency`` (429 ``ApplicationThrottled``,
  MailboxConcurrency), ``server_error`` (``status`` 500/503/504; 503 with ``Retry-After``),
  ``slow``; ``slow_after_send`` (``target`` ``send``) holds sendMail's 202 after the send;
  ``expired_delta`` (next delta call 410).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from email.message import EmailMessage
from email.policy import default as default_policy

from .. import faults as faultlib
from .. import gmail
from ..http import Part, Request, Response, base_url, route
from ..push import RetryingPusher

GRAPH_SCOPE = "https://graph.microsoft.com/"
READ = {"Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic"}
READ_BODY = {"Mail.Read", "Mail.ReadWrite"}
SEND = {"Mail.Send"}
PROFILE = {"User.Read", "User.ReadBasic.All", "User.Read.All"}
MAX_SUBSCRIPTION_MINUTES = 10080
MAX_SUBSCRIPTIONS_PER_MAILBOX = 1000
REQUEST_LIMIT = 4 * 1024 * 1024
VALIDATION_TIMEOUT = 10.0
DEFAULT_PAGE = 10
MAX_PAGE = 1000
FOLDERS = {"inbox": "INBOX", "sentitems": "SENT", "drafts": "DRAFT"}
FOLDER_IDS = {"INBOX": "AAMkAGI2TG93AAAuAAAAAAAiQ8W967B7TKBjgx9rVEURAQAiIsqMbYjsT5e-T7KzowPT"
                       "AAAAAAEMAAA=",
              "SENT": "AAMkAGI2TG93AAAuAAAAAAAiQ8W967B7TKBjgx9rVEURAQAiIsqMbYjsT5e-T7KzowPT"
                      "AAAAAAEJAAA=",
              "DRAFT": "AAMkAGI2TG93AAAuAAAAAAAiQ8W967B7TKBjgx9rVEURAQAiIsqMbYjsT5e-T7KzowPT"
                       "AAAAAAEPAAA="}
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
_MESSAGE_PREFIX = "AAMkAGI2THVSAAA"
_CONVERSATION_PREFIX = "AAQkAGI2THVSAAA"


# --------------------------------------------------------------------------- helpers


def graph_error(status: int, code: str, message: str, headers=None) -> Response:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    request_id = str(uuid.uuid4())
    return Response(status, {"error": {"code": code, "message": message, "innerError": {
        "date": now, "request-id": request_id, "client-request-id": request_id}}},
        headers=[("request-id", request_id), *(headers or [])])


def iso(epoch: float) -> str:
    """Graph's DateTimeOffset form: ``2026-12-03T10:00:00Z`` (messages) ."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_precise(epoch: float) -> str:
    """A subscription's ``expirationDateTime`` as Graph writes it (7 fraction digits)."""
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def parse_time(value: str) -> float | None:
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def message_id(gid: str) -> str:
    return _MESSAGE_PREFIX + gid


def gmail_id(graph_id: str) -> str | None:
    if not graph_id.startswith(_MESSAGE_PREFIX):
        return None
    return graph_id[len(_MESSAGE_PREFIX):]


def _addresses(value: str) -> list[dict]:
    return [{"emailAddress": {"name": name or addr, "address": addr}}
            for name, addr in email.utils.getaddresses([value or ""]) if addr]


def _stable_uuid(text: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "sandbox:" + text))


def mailbox_oid(box: dict) -> str:
    return str(box.get("oid") or _stable_uuid(box["email"]))


def mailbox_tenant_id(box: dict) -> str:
    tenant = box.get("tid") or box.get("tenant_id")
    if tenant:
        return str(tenant)
    return _stable_uuid("tenant:" + str(box.get("tenant") or box["email"].split("@")[-1]))


def graph_state(state: dict) -> dict:
    graph = state.setdefault("graph", {})
    graph.setdefault("subscriptions", {})
    graph.setdefault("tokens", {})
    graph.setdefault("queue", [])
    graph.setdefault("sent_log", {})
    return graph


def render_message(store, box: dict, rec: dict, select: list[str] | None) -> dict:
    """A message resource: the default properties, or ``id`` plus those in ``$select``
    (``internetMessageHeaders`` only when named, and then only with the rest named)."""
    folder = next((f for f in ("INBOX", "SENT", "DRAFT") if f in rec["labelIds"]), "INBOX")
    received = rec["internalDate"] / 1000
    full = {
        "@odata.etag": 'W/"' + hashlib.sha1(rec["id"].encode()).hexdigest()[:24] + '"',  # noqa: S324
        "id": message_id(rec["id"]),
        "createdDateTime": iso(received),
        "lastModifiedDateTime": iso(received),
        "receivedDateTime": iso(received),
        "sentDateTime": iso(received),
        "hasAttachments": False,
        "internetMessageId": rec["messageIdHeader"],
        "subject": rec["subject"],
        "bodyPreview": rec["snippet"][:255],
        "importance": "normal",
        "parentFolderId": FOLDER_IDS[folder],
        "conversationId": _CONVERSATION_PREFIX + rec["threadId"],
        "isRead": "UNREAD" not in rec["labelIds"],
        "isDraft": False,
        "from": (_addresses(rec["from"]) or [None])[0],
        "sender": (_addresses(rec["from"]) or [None])[0],
        "toRecipients": _addresses(rec["to"]),
        "ccRecipients": [],
        "replyTo": [],
    }
    if select is None:
        return full
    out = {"@odata.etag": full["@odata.etag"], "id": full["id"]}
    for name in select:
        if name == "internetMessageHeaders":
            parsed = gmail.parse(store.get_raw(rec["blob"]))
            out[name] = [{"name": k, "value": str(v)} for k, v in parsed.items()]
        elif name in full:
            out[name] = full[name]
    return out


class _Refusal(Exception):  # noqa: N818 - carries a response
    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


# --------------------------------------------------------------------------------- API


class GraphAPI(Part):
    def routes(self) -> list:
        folder = r"/v1\.0/me/mailFolders(?:\('([^'/]+)'\)|/([^/(]+))/messages"
        return [
            ("GET", route(r"/v1\.0/me"), self.me),
            ("POST", route(r"/v1\.0/subscriptions"), self.subscription_create),
            ("GET", route(r"/v1\.0/subscriptions"), self.subscription_list),
            ("GET", route(r"/v1\.0/subscriptions/([^/]+)"), self.subscription_get),
            ("PATCH", route(r"/v1\.0/subscriptions/([^/]+)"), self.subscription_update),
            ("DELETE", route(r"/v1\.0/subscriptions/([^/]+)"), self.subscription_delete),
            ("POST", route(r"/v1\.0/subscriptions/([^/]+)/reauthorize"),
             self.subscription_reauthorize),
            ("GET", route(folder + r"/(?:microsoft\.graph\.)?delta(?:\(\))?"), self.delta),
            ("GET", route(folder), self.folder_messages),
            ("GET", route(r"/v1\.0/me/messages"), self.all_messages),
            ("GET", route(r"/v1\.0/me/messages/([^/]+)/\$value"), self.message_value),
            ("GET", route(r"/v1\.0/me/messages/([^/]+)"), self.message_get),
            ("POST", route(r"/v1\.0/me/sendMail"), self.send_mail),
            ("POST", route(r"/_sandbox/graph/lifecycle"), self.sb_lifecycle),
            ("POST", route(r"/_sandbox/graph/expire-delta"), self.sb_expire_delta),
            ("GET", route(r"/_sandbox/graph/subscriptions"), self.sb_subscriptions),
        ]

    @property
    def pusher(self) -> GraphPushWorker:
        return self.app.graph_worker

    # -- auth and faults -----------------------------------------------------------------
    def _auth(self, request: Request, needed: set[str], *, faults: bool = True) -> str:
        """The mailbox the bearer token is for; raises _Refusal with Graph's answer."""
        header = request.header("Authorization")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token:
            raise _Refusal(graph_error(401, "InvalidAuthenticationToken",
                                       "Access token is empty.",
                                       [("WWW-Authenticate", 'Bearer realm=""')]))
        state = self.store.read()
        record = state["access_tokens"].get(token)
        if record is None or record.get("provider") != "microsoft":
            raise _Refusal(graph_error(401, "InvalidAuthenticationToken",
                                       "IDX14100: JWT is not well formed, there are no dots (.).",
                                       [("WWW-Authenticate", 'Bearer realm=""')]))
        if record.get("revoked") or record["expires"] < time.time():
            raise _Refusal(graph_error(401, "InvalidAuthenticationToken",
                                       "Lifetime validation failed, the token is expired.",
                                       [("WWW-Authenticate", 'Bearer error="invalid_token"')]))
        mailbox = str(record.get("mailbox") or record.get("email") or "").lower()
        if mailbox not in state["mailboxes"]:
            raise _Refusal(graph_error(404, "ResourceNotFound",
                                       "Resource could not be discovered."))
        granted = {s.rsplit("/", 1)[-1] for s in record.get("scopes") or []}
        if not needed & granted:
            raise _Refusal(graph_error(403, "ErrorAccessDenied",
                                       "Access is denied. Check credentials and try again."))
        if faults:
            self._faults(mailbox)
        return mailbox

    def _faults(self, mailbox: str) -> None:
        with self.store.transaction() as state:
            slow = faultlib.take(state, ("slow",), "graph", mailbox)
            fault = faultlib.take(state, ("too_many_requests", "mailbox_concurrency",
                                          "server_error"), "graph", mailbox)
        if slow:
            time.sleep(slow["delay"])
        if not fault:
            return
        retry = [("Retry-After", str(fault["retry_after"]))]
        if fault["kind"] == "too_many_requests":
            raise _Refusal(graph_error(429, "TooManyRequests",
                                       "Too many requests, retry after some time.", retry))
        if fault["kind"] == "mailbox_concurrency":
            raise _Refusal(graph_error(429, "ApplicationThrottled",
                                       "Application is over its MailboxConcurrency limit.",
                                       retry))
        status = fault["status"] if fault["status"] in (500, 502, 503, 504) else 503
        codes = {500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
                 504: "GatewayTimeout"}
        raise _Refusal(graph_error(status, codes[status],
                                   "The service is temporarily unavailable.",
                                   retry if status == 503 else None))

    def _guarded(self, request: Request, handler, *args) -> Response:
        if len(request.body) > REQUEST_LIMIT:
            return graph_error(413, "RequestEntityTooLarge",
                               "The maximum request length supported is 4MB.")
        try:
            return handler(request, *args)
        except _Refusal as refusal:
            return refusal.response
        except (ValueError, json.JSONDecodeError) as exc:
            return graph_error(400, "BadRequest", f"Invalid request: {exc}")

    # -- /me -----------------------------------------------------------------------------
    def me(self, request: Request) -> Response:
        return self._guarded(request, self._me)

    def _me(self, request: Request) -> Response:
        mailbox = self._auth(request, PROFILE | READ | SEND)
        box = self.store.read()["mailboxes"][mailbox]
        local = mailbox.split("@")[0]
        name = str(box.get("display_name") or local.replace(".", " ").title())
        return Response(200, {
            "@odata.context": base_url(request) + "/v1.0/$metadata#users/$entity",
            "businessPhones": [], "displayName": name, "givenName": name.split(" ")[0],
            "jobTitle": None, "mail": box.get("mail", mailbox), "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": "en-US", "surname": None,
            "userPrincipalName": str(box.get("upn") or mailbox), "id": mailbox_oid(box)})

    # -- subscriptions -------------------------------------------------------------------
    def subscription_create(self, request: Request) -> Response:
        return self._guarded(request, self._subscription_create)

    def _subscription_create(self, request: Request) -> Response:
        mailbox = self._auth(request, READ)
        body = request.json()
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        change = str(body.get("changeType") or "")
        if not change or any(c not in ("created", "updated", "deleted")
                             for c in change.split(",")):
            return graph_error(400, "ExtensionError",
                               "Operation: Create; Exception: [Status Code: BadRequest; "
                               "Reason: changeType is missing or invalid]")
        resource = str(body.get("resource") or "")
        folder = self._resource_folder(resource)
        if folder is None:
            return graph_error(400, "ExtensionError",
                               f"Operation: Create; Exception: [Status Code: BadRequest; "
                               f"Reason: The resource '{resource}' is not supported]")
        notification_url = str(body.get("notificationUrl") or "")
        lifecycle_url = str(body.get("lifecycleNotificationUrl") or "")
        for url in filter(None, (notification_url, lifecycle_url)):
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                return graph_error(400, "InvalidRequest",
                                   f"Invalid notification URL '{url}'.")
        if not notification_url:
            return graph_error(400, "InvalidRequest", "notificationUrl is required.")
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str)
                                         or len(client_state) > 128):
            return graph_error(400, "InvalidRequest",
                               "clientState must be a string of at most 128 characters.")
        expires, refusal = self._expiration(body.get("expirationDateTime"))
        if refusal:
            return refusal
        state = self.store.read()
        live = [s for s in graph_state(state)["subscriptions"].values()
                if s["mailbox"] == mailbox and self.pusher.alive(s)]
        if len(live) >= MAX_SUBSCRIPTIONS_PER_MAILBOX:
            return graph_error(403, "ExtensionError",
                               "Operation: Create; Exception: [Status Code: Forbidden; "
                               "Reason: The number of subscriptions has reached its limit]")
        # The handshake, outside any lock: our caller's server answers while we wait.
        for url in filter(None, (notification_url, lifecycle_url)):
            failure = self.pusher.validate(url)
            if failure:
                return graph_error(400, "ValidationError",
                                   "Subscription validation request failed. Notification "
                                   "endpoint must respond with 200 OK to validation request."
                                   f" ({failure})")
        with self.store.transaction() as state:
            box = state["mailboxes"][mailbox]
            sub = {
                "id": str(uuid.uuid4()), "mailbox": mailbox, "resource": resource,
                "folder": folder, "changeType": change, "notificationUrl": notification_url,
                "lifecycleNotificationUrl": lifecycle_url or None,
                "clientState": client_state, "expires": expires, "created": time.time(),
                "applicationId": str(body.get("applicationId") or _stable_uuid("app")),
                "creatorId": mailbox_oid(box), "tenantId": mailbox_tenant_id(box),
                "notified_through": box["history_id"], "needs_reauthorization": False,
                "removed": False,
            }
            graph_state(state)["subscriptions"][sub["id"]] = sub
        return Response(201, self._subscription_body(request, sub))

    @staticmethod
    def _resource_folder(resource: str) -> str | None:
        """The folder label a subscription watches ("" for every folder), or None."""
        text = resource.strip().strip("/")
        text = re.sub(r"^(?i:users/[^/]+|me)/", "", text)
        if re.fullmatch(r"(?i)messages", text):
            return ""
        match = re.fullmatch(r"(?i)mailFolders(?:\('([^']+)'\)|/([^/]+))/messages", text)
        if not match:
            return None
        return FOLDERS.get((match.group(1) or match.group(2)).lower())

    @staticmethod
    def _expiration(value) -> tuple[float, Response | None]:
        expires = parse_time(str(value or ""))
        if expires is None:
            return 0.0, graph_error(400, "InvalidRequest",
                                    "expirationDateTime is required and must be a "
                                    "DateTimeOffset.")
        now = time.time()
        if expires <= now:
            return 0.0, graph_error(400, "ExtensionError",
                                    "Subscription expiration must be in the future.")
        if expires > now + MAX_SUBSCRIPTION_MINUTES * 60:
            return 0.0, graph_error(
                400, "ExtensionError",
                f"Subscription expiration can only be {MAX_SUBSCRIPTION_MINUTES} minutes in "
                "the future.")
        return expires, None

    @staticmethod
    def _subscription_body(request: Request, sub: dict) -> dict:
        return {
            "@odata.context": base_url(request) + "/v1.0/$metadata#subscriptions/$entity",
            "id": sub["id"], "resource": sub["resource"],
            "applicationId": sub["applicationId"], "changeType": sub["changeType"],
            "clientState": sub["clientState"], "notificationUrl": sub["notificationUrl"],
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": sub["lifecycleNotificationUrl"],
            "expirationDateTime": iso_precise(sub["expires"]),
            "creatorId": sub["creatorId"], "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2", "encryptionCertificate": None,
            "encryptionCertificateId": None, "notificationUrlAppId": None,
        }

    def _own_subscription(self, state: dict, mailbox: str, sub_id: str) -> dict:
        sub = graph_state(state)["subscriptions"].get(sub_id)
        if sub is None or not self.pusher.alive(sub):
            raise _Refusal(graph_error(404, "ResourceNotFound", "The object was not found."))
        if sub["mailbox"] != mailbox:
            raise _Refusal(graph_error(403, "ExtensionError",
                                       "Operation: Update; Exception: [Status Code: Forbidden;"
                                       " Reason: The subscription belongs to another user]"))
        return sub

    def subscription_list(self, request: Request) -> Response:
        def handler(request):
            mailbox = self._auth(request, READ)
            subs = [s for s in graph_state(self.store.read())["subscriptions"].values()
                    if s["mailbox"] == mailbox and self.pusher.alive(s)]
            return Response(200, {"value": [self._subscription_body(request, s)
                                             for s in subs]})
        return self._guarded(request, handler)

    def subscription_get(self, request: Request, sub_id: str) -> Response:
        def handler(request):
            mailbox = self._auth(request, READ)
            sub = self._own_subscription(self.store.read(), mailbox, sub_id)
            return Response(200, self._subscription_body(request, sub))
        return self._guarded(request, handler)

    def subscription_update(self, request: Request, sub_id: str) -> Response:
        def handler(request):
            mailbox = self._auth(request, READ)
            body = request.json()
            if "lifecycleNotificationUrl" in body:
                return graph_error(400, "InvalidRequest",
                                   "lifecycleNotificationUrl can only be set when the "
                                   "subscription is created.")
            expires, refusal = self._expiration(body.get("expirationDateTime"))
            if refusal:
                return refusal
            with self.store.transaction() as state:
                sub = self._own_subscription(state, mailbox, sub_id)
                sub["expires"] = expires
                sub["needs_reauthorization"] = False  # a renewal reauthorizes too
                if "notificationUrl" in body:
                    sub["notificationUrl"] = str(body["notificationUrl"])
                out = dict(sub)
            return Response(200, self._subscription_body(request, out))
        return self._guarded(request, handler)

    def subscription_delete(self, request: Request, sub_id: str) -> Response:
        def handler(request):
            mailbox = self._auth(request, READ)
            with self.store.transaction() as state:
                self._own_subscription(state, mailbox, sub_id)
                del graph_state(state)["subscriptions"][sub_id]
            return Response(204, b"")
        return self._guarded(request, handler)

    def subscription_reauthorize(self, request: Request, sub_id: str) -> Response:
        def handler(request):
            mailbox = self._auth(request, READ)
            with self.store.transaction() as state:
                sub = self._own_subscription(state, mailbox, sub_id)
                sub["needs_reauthorization"] = False
            return Response(200, b"", "text/plain")
        return self._guarded(request, handler)

    # -- messages ------------------------------------------------------------------------
    @staticmethod
    def _select(request: Request) -> list[str] | None:
        value = request.arg("$select")
        return [s.strip() for s in value.split(",") if s.strip()] if value else None

    @staticmethod
    def _page_size(request: Request) -> int:
        match = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", request.header("Prefer"))
        size = int(match.group(1)) if match else DEFAULT_PAGE
        return max(1, min(size, MAX_PAGE))

    @staticmethod
    def _folder_label(name_a: str | None, name_b: str | None) -> str:
        name = (name_a or name_b or "").lower()
        if name not in FOLDERS:
            raise _Refusal(graph_error(404, "ErrorInvalidIdMalformed",
                                       "Id is malformed."))
        return FOLDERS[name]

    @staticmethod
    def _received_filter(text: str) -> float | None:
        """``receivedDateTime ge|gt <time>`` -> epoch (ge; gt adds a second); "" -> None."""
        if not text:
            return None
        match = re.fullmatch(r"\s*receivedDateTime\s+(ge|gt)\s+'?([0-9T:.\-+Z]+)'?\s*", text)
        moment = parse_time(match.group(2)) if match else None
        if moment is None:
            raise _Refusal(graph_error(400, "ErrorInvalidUrlQueryFilter",
                                       "The query filter contains one or more invalid nodes."))
        return moment + (1 if match.group(1) == "gt" else 0)

    def folder_messages(self, request: Request, name_a, name_b) -> Response:
        return self._guarded(request, self._folder_messages, name_a, name_b)

    def all_messages(self, request: Request) -> Response:
        return self._guarded(request, self._folder_messages, None, None)

    def _folder_messages(self, request: Request, name_a, name_b) -> Response:
        """One folder's messages, or (no folder named: ``/me/messages``) every folder's."""
        mailbox = self._auth(request, READ)
        label = self._folder_label(name_a, name_b) if name_a or name_b else None
        box = self._settled(mailbox)
        found = [box["messages"][g] for g in reversed(box["order"])
                 if label is None or label in box["messages"][g]["labelIds"]]
        text = request.arg("$filter") or ""
        wanted = re.fullmatch(r"\s*internetMessageId\s+eq\s+'((?:[^']|'')*)'\s*", text)
        if wanted:
            target = wanted.group(1).replace("''", "'")
            found = [m for m in found if m["messageIdHeader"] == target]
        elif text:
            since = self._received_filter(text)
            found = [m for m in found if m["internalDate"] / 1000 >= since]
        try:
            top = max(1, min(int(request.arg("$top") or DEFAULT_PAGE), MAX_PAGE))
        except ValueError:
            raise _Refusal(graph_error(400, "BadRequest", "Invalid $top.")) from None
        select = self._select(request)
        return Response(200, {
            "@odata.context": base_url(request) + "/v1.0/$metadata#users('" + mailbox + "')"
                              + (f"/mailFolders('{name_a or name_b}')" if label else "")
                              + "/messages",
            "value": [render_message(self.store, box, m, select) for m in found[:top]]})

    def _settled(self, mailbox: str) -> dict:
        """The mailbox as a reader sees it now: a sent message whose transport step is due
        has moved from Drafts to Sent Items (``graph_transport_delay_ms``)."""
        box = self.store.read()["mailboxes"][mailbox]
        now = time.time()
        if not any(m.get("transport_due", now + 1) <= now for m in box["messages"].values()):
            return box
        with self.store.transaction() as state:
            box = state["mailboxes"][mailbox]
            for rec in box["messages"].values():
                if rec.get("transport_due", now + 1) <= now:
                    del rec["transport_due"]
                    rec["labelIds"] = ["SENT" if x == "DRAFT" else x for x in rec["labelIds"]]
        return self.store.read()["mailboxes"][mailbox]

    def _record(self, mailbox: str, graph_id: str) -> tuple[dict, dict]:
        box = self._settled(mailbox)
        gid = gmail_id(graph_id)
        rec = box["messages"].get(gid) if gid else None
        if rec is None:
            if not gid:
                raise _Refusal(graph_error(400, "ErrorInvalidIdMalformed",
                                           "Id is malformed."))
            raise _Refusal(graph_error(404, "ErrorItemNotFound",
                                       "The specified object was not found in the store."))
        return box, rec

    def message_get(self, request: Request, graph_id: str) -> Response:
        def handler(request):
            mailbox = self._auth(request, READ)
            box, rec = self._record(mailbox, graph_id)
            return Response(200, render_message(self.store, box, rec, self._select(request)))
        return self._guarded(request, handler)

    def message_value(self, request: Request, graph_id: str) -> Response:
        def handler(request):
            mailbox = self._auth(request, READ_BODY)
            _, rec = self._record(mailbox, graph_id)
            return Response(200, self.store.get_raw(rec["blob"]), "text/plain")
        return self._guarded(request, handler)

    # -- delta ---------------------------------------------------------------------------
    def delta(self, request: Request, name_a, name_b) -> Response:
        return self._guarded(request, self._delta, name_a, name_b)

    def _delta(self, request: Request, name_a, name_b) -> Response:
        mailbox = self._auth(request, READ)
        label = self._folder_label(name_a, name_b)
        folder = (name_a or name_b).lower()
        gone = graph_error(410, "SyncStateNotFound",
                           "The sync state generation is not found. The delta token is "
                           "expired and data must be synchronized again.")
        delta_token, skip_token = request.arg("$deltatoken"), request.arg("$skiptoken")
        size = self._page_size(request)
        with self.store.transaction() as state:
            if faultlib.take(state, ("expired_delta",), "delta", mailbox):
                return gone
            tokens = graph_state(state)["tokens"]
            box = state["mailboxes"][mailbox]
            if skip_token or delta_token:
                token = tokens.get(skip_token or delta_token)
                if token is None or token["mailbox"] != mailbox or token["folder"] != label \
                        or token["kind"] != ("skip" if skip_token else "delta"):
                    return gone
            else:
                token = None
            if token is not None and token["kind"] == "skip":
                pending, snapshot = token["pending"], token["snapshot"]
                since, select = token["since"], token["select"]
            else:
                if token is None:
                    since = self._received_filter(request.arg("$filter") or "")
                    select = self._select(request)
                    after = None
                else:
                    since, select, after = token["since"], token["select"], token["position"]
                snapshot = box["history_id"]
                pending = [g for g in box["order"]
                           if label in box["messages"][g]["labelIds"]
                           and (after is None or box["messages"][g]["historyId"] > after)
                           and (since is None or box["messages"][g]["internalDate"] / 1000
                                >= since)]
            page, rest = pending[:size], pending[size:]
            if rest:
                kind, extra = "skip", {"pending": rest, "snapshot": snapshot}
            else:
                kind, extra = "delta", {"position": snapshot}
            new = new_token()
            tokens[new] = {"mailbox": mailbox, "folder": label, "kind": kind,
                           "since": since, "select": select, "created": time.time(), **extra}
            if len(tokens) > 5000:
                for old in sorted(tokens, key=lambda t: tokens[t]["created"])[:1000]:
                    del tokens[old]
            records = [box["messages"][g] for g in page if g in box["messages"]]
        link = (f"{base_url(request)}/v1.0/me/mailFolders('{folder}')/messages/delta?"
                + ("$skiptoken=" if kind == "skip" else "$deltatoken=") + new)
        values = []
        for rec in records:
            item = render_message(self.store, box, rec, select)
            item["@odata.type"] = "#microsoft.graph.message"
            values.append(item)
        return Response(200, {
            "@odata.context": base_url(request) + "/v1.0/$metadata#Collection(message)",
            "value": values,
            ("@odata.nextLink" if kind == "skip" else "@odata.deltaLink"): link})

    # -- sendMail ------------------------------------------------------------------------
    def send_mail(self, request: Request) -> Response:
        return self._guarded(request, self._send_mail)

    def _send_mail(self, request: Request) -> Response:
        mailbox = self._auth(request, SEND)
        ctype = request.content_type.split(";")[0].strip().lower()
        save = True
        if ctype == "text/plain":
            try:
                text = re.sub(rb"\s+", b"", request.body)
                raw = base64.b64decode(text, validate=True)
                if not raw:
                    raise ValueError("empty")
            except (binascii.Error, ValueError):
                return graph_error(400, "ErrorMimeContentInvalidBase64String",
                                   "Invalid base64 string for MIME content.")
        elif ctype == "application/json":
            body = request.json()
            message = body.get("message") if isinstance(body, dict) else None
            if not isinstance(message, dict):
                return graph_error(400, "ErrorInvalidRequest", "message is required.")
            for header in message.get("internetMessageHeaders") or []:
                name = str((header or {}).get("name") or "")
                if not name.lower().startswith("x-"):
                    return graph_error(400, "InvalidInternetMessageHeader",
                                       f"The internet message header name '{name}' should "
                                       "start with 'x-' or 'X-'.")
            raw = _mime_from_json(mailbox, message)
            save = body.get("saveToSentItems", True) not in (False, "false")
        else:
            return graph_error(415, "UnsupportedMediaType",
                               f"Content-Type '{request.content_type}' is not supported.")
        parsed = gmail.parse(raw)
        recipients = [addr.lower() for _, addr in email.utils.getaddresses(
            [str(v) for h in ("To", "Cc", "Bcc") for v in parsed.get_all(h, [])]) if addr]
        if not recipients:
            return graph_error(400, "ErrorInvalidRecipients",
                               "At least one recipient isn't valid.")
        limit = int(self.store.settings().get("graph_send_per_minute", 30) or 0)
        now = time.time()
        settings = self.store.settings()
        with self.store.transaction() as state:
            log = graph_state(state)["sent_log"]
            recent = [t for t in log.get(mailbox, []) if t > now - 60]
            if limit and len(recent) >= limit:
                wait = int(recent[0] + 60 - now) + 1
                return graph_error(429, "ErrorExceededMessageLimit",
                                   "Cannot send mail: the mailbox has reached its limit of "
                                   f"{limit} messages per minute.",
                                   [("Retry-After", str(wait))])
            log[mailbox] = [*recent, now]
            raw = _as_exchange_sends(raw, mailbox)
            box = state["mailboxes"][mailbox]
            if save:
                # Exchange accepts (202) with the message saved in Drafts; its transport
                # moves it to Sent Items afterwards (graph_transport_delay_ms; 0: at once).
                delay = float(settings.get("graph_transport_delay_ms") or 0) / 1000
                added = gmail.add_message(self.store, state, box, raw,
                                          ["DRAFT"] if delay else ["SENT"])
                if delay:
                    added["transport_due"] = now + delay
            if settings.get("deliver_locally", True):
                for rcpt in dict.fromkeys(recipients):
                    if rcpt != mailbox and rcpt in state["mailboxes"]:
                        gmail.add_message(self.store, state, state["mailboxes"][rcpt],
                                          b"Delivered-To: " + rcpt.encode() + b"\r\n" + raw,
                                          ["INBOX", "UNREAD", "CATEGORY_PERSONAL"])
                    elif rcpt == mailbox:
                        gmail.add_message(self.store, state, box, raw, ["INBOX", "UNREAD"])
            held = faultlib.take(state, ("slow_after_send",), "send", mailbox)
        self.worker.wake.set()
        self.pusher.wake.set()
        if held:
            time.sleep(held["delay"])
        return Response(202, b"")

    # -- control -------------------------------------------------------------------------
    def sb_lifecycle(self, request: Request) -> Response:
        data = request.json()
        event = data.get("event")
        if event not in LIFECYCLE_EVENTS:
            return graph_error(400, "InvalidRequest",
                               f"event must be one of {', '.join(LIFECYCLE_EVENTS)}")
        mailbox = str(data.get("mailbox") or "").lower()
        wanted = str(data.get("subscription_id") or "")
        sent = []
        with self.store.transaction() as state:
            graph = graph_state(state)
            for sub in graph["subscriptions"].values():
                if not self.pusher.alive(sub) or (wanted and sub["id"] != wanted) or (
                        mailbox and sub["mailbox"] != mailbox) or not (wanted or mailbox):
                    continue
                if event == "reauthorizationRequired":
                    sub["needs_reauthorization"] = True
                elif event == "subscriptionRemoved":
                    sub["removed"] = True
                if sub.get("lifecycleNotificationUrl"):
                    graph["queue"].append({"url": sub["lifecycleNotificationUrl"],
                                           "items": [lifecycle_item(sub, event)],
                                           "subscription": sub["id"], "event": event})
                sent.append(sub["id"])
        self.pusher.wake.set()
        return Response(200, {"subscriptions": sent, "event": event})

    def sb_expire_delta(self, request: Request) -> Response:
        mailbox = str(request.json().get("mailbox") or "").lower()
        with self.store.transaction() as state:
            tokens = graph_state(state)["tokens"]
            gone = [t for t, rec in tokens.items() if rec["mailbox"] == mailbox]
            for token in gone:
                del tokens[token]
        return Response(200, {"expired": len(gone)})

    def sb_subscriptions(self, request: Request) -> Response:
        subs = graph_state(self.store.read())["subscriptions"].values()
        return Response(200, {"subscriptions": [
            {**{k: v for k, v in s.items()}, "alive": self.pusher.alive(s),
             "expirationDateTime": iso_precise(s["expires"])} for s in subs]})


def new_token() -> str:
    """An opaque delta or skip token (the state it stands for is kept in the store)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes) \
        .decode().rstrip("=")


def _mime_from_json(mailbox: str, message: dict) -> bytes:
    mail = EmailMessage()
    mail["From"] = mailbox
    for field, header in (("toRecipients", "To"), ("ccRecipients", "Cc"),
                          ("bccRecipients", "Bcc")):
        people = [((r or {}).get("emailAddress") or {}).get("address")
                  for r in message.get(field) or []]
        if any(people):
            mail[header] = ", ".join(p for p in people if p)
    mail["Subject"] = str(message.get("subject") or "")
    for header in message.get("internetMessageHeaders") or []:
        mail[str(header["name"])] = str(header.get("value") or "")
    content = (message.get("body") or {}).get("content") or ""
    mail.set_content(content)
    return mail.as_bytes(policy=default_policy.clone(linesep="\r\n"))


def _as_exchange_sends(raw: bytes, mailbox: str) -> bytes:
    """What Exchange does to a message it sends: a Message-ID (only when there is none,
    ours is kept), Date and From when missing; Bcc and Return-Path dropped."""
    parsed = gmail.parse(raw)
    extra = b""
    if not parsed.get("Message-ID"):
        extra += (f"Message-ID: <{uuid.uuid4().hex[:20].upper()}@"
                  "SN6PR01MB0000.namprd01.prod.outlook.com>\r\n").encode()
    if not parsed.get("Date"):
        extra += f"Date: {email.utils.formatdate(localtime=False)}\r\n".encode()
    if not parsed.get("From"):
        extra += f"From: {mailbox}\r\n".encode()
    raw = re.sub(rb"(?im)^(bcc|return-path):.*\r?\n([ \t].*\r?\n)*", b"", raw)
    return extra + raw


def lifecycle_item(sub: dict, event: str) -> dict:
    return {"subscriptionId": sub["id"],
            "subscriptionExpirationDateTime": iso_precise(sub["expires"]),
            "tenantId": sub["tenantId"], "clientState": sub["clientState"],
            "lifecycleEvent": event}


def change_item(sub: dict, gid: str) -> dict:
    oid = sub["creatorId"]
    mid = message_id(gid)
    resource = f"Users/{oid}/Messages/{mid}"
    return {"subscriptionId": sub["id"],
            "subscriptionExpirationDateTime": iso_precise(sub["expires"]),
            "changeType": "created", "resource": resource, "clientState": sub["clientState"],
            "tenantId": sub["tenantId"],
            "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "@odata.id": resource,
                             "@odata.etag": 'W/"' + hashlib.sha1(gid.encode()).hexdigest()[:24]  # noqa: S324
                                            + '"', "id": mid}}


# ---------------------------------------------------------------------- delivery thread


class GraphPushWorker(RetryingPusher):
    """Watches the mailboxes of live subscriptions for new messages in the subscribed
    folder and POSTs change notifications; sends queued lifecycle events; retries."""

    batch = 100  # items per POST at most

    def __init__(self, store):
        super().__init__(store, "sandbox-graph-push")
        self._seen_mtime = 0.0

    @staticmethod
    def alive(sub: dict) -> bool:
        return not sub.get("removed") and sub["expires"] > time.time()

    # -- the handshake -------------------------------------------------------------------
    @staticmethod
    def validate(url: str) -> str:
        """POST the validation token to ``url``; "" when it answered as Graph requires, else
        what went wrong."""
        token = ("Validation: Testing client application reachability for subscription "
                 f"Request-Id: {uuid.uuid4()}")
        sep = "&" if urllib.parse.urlsplit(url).query else "?"
        target = url + sep + urllib.parse.urlencode({"validationToken": token})
        request = urllib.request.Request(target, data=b"", method="POST",  # noqa: S310
                                         headers={"Content-Type": "text/plain; charset=utf-8"})
        try:
            with urllib.request.urlopen(request, timeout=VALIDATION_TIMEOUT) as resp:  # noqa: S310
                status, ctype, body = resp.status, resp.headers.get("Content-Type", ""), \
                    resp.read()
        except urllib.error.HTTPError as exc:
            return f"{url} answered {exc.code}"
        except Exception as exc:  # noqa: BLE001 - timeouts, refused connections
            return f"{url} unreachable: {exc.__class__.__name__}"
        if status != 200:
            return f"{url} answered {status}"
        if not ctype.lower().startswith("text/plain"):
            return f"{url} answered Content-Type {ctype!r}, not text/plain"
        if body.decode("utf-8", "replace") != token:
            return f"{url} did not echo the validation token"
        return ""

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._scan()
                self._release_held()
                self._deliver_due()
            except Exception as exc:  # noqa: BLE001 - keep the thread alive
                print(f"sandbox graph push worker: {exc!r}", flush=True)
            self.wake.wait(0.05)
            self.wake.clear()

    def _scan(self) -> None:
        try:
            mtime = self.store.state_path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._seen_mtime:
            return
        self._seen_mtime = mtime
        state = self.store.read()
        graph = state.get("graph")
        if not graph:  # a reset: forget what was in flight
            self.pending.clear()
            self.held.clear()
            return
        if not graph.get("queue") and not any(
                self.alive(s) and self._new_ids(state, s)
                for s in graph["subscriptions"].values()):
            return
        jobs: list[tuple[dict, bool, bool]] = []
        with self.store.transaction() as state:
            graph = graph_state(state)
            queued, graph["queue"] = graph["queue"], []
            jobs += [({**job, "attempts": 0, "id": str(uuid.uuid4())}, False, False)
                     for job in queued]
            for sub in graph["subscriptions"].values():
                if not self.alive(sub):
                    continue
                new = self._new_ids(state, sub)
                if not new:
                    continue
                box = state["mailboxes"][sub["mailbox"]]
                sub["notified_through"] = box["history_id"]
                if sub.get("needs_reauthorization"):
                    state["pushes"].append({"kind": "graph", "subscriptionId": sub["id"],
                                            "status": "dropped: reauthorization required",
                                            "items": len(new), "at": time.time()})
                    continue
                duplicate, reorder = faultlib.consume_push_faults(state, sub["mailbox"])
                for start in range(0, len(new), self.batch):
                    items = [change_item(sub, gid) for gid in new[start:start + self.batch]]
                    job = {"url": sub["notificationUrl"], "items": items,
                           "subscription": sub["id"], "event": "created", "attempts": 0,
                           "id": str(uuid.uuid4())}
                    jobs.append((job, duplicate, reorder))
            del state["pushes"][:-500]
        for job, duplicate, reorder in jobs:
            if reorder and len(job["items"]) > 1:  # each item alone, newest first
                singles = [{**job, "items": [item], "id": str(uuid.uuid4())}
                           for item in job["items"]]
            else:
                singles = [job]
            for single in singles:
                for copy_ in ([single, dict(single)] if duplicate else [single]):
                    if reorder:
                        self.held.append(copy_)
                        self.held_since = self.held_since or time.time()
                    else:
                        self.pending.append({"due": time.time(), "job": copy_})

    @staticmethod
    def _new_ids(state: dict, sub: dict) -> list[str]:
        box = state["mailboxes"].get(sub["mailbox"])
        if box is None or box["history_id"] <= sub["notified_through"]:
            return []
        folder = sub.get("folder") or ""
        return [h["message"]["id"] for h in box["history"]
                if h["id"] > sub["notified_through"]
                and (not folder or folder in h["message"]["labelIds"])]

    def _attempt(self, job: dict) -> None:
        settings = self.store.settings()
        job["attempts"] += 1
        request = urllib.request.Request(  # noqa: S310 - the subscriber's URL
            job["url"], data=json.dumps({"value": job["items"]}).encode(), method="POST",
            headers={"Content-Type": "application/json; charset=utf-8",
                     "User-Agent": "Microsoft-Graph-ChangeNotifications/1.0"})
        status = self._post(request, 10.0)
        acked = isinstance(status, int) and 200 <= status < 300
        entry = {"kind": "graph", "id": job["id"], "endpoint": job["url"],
                 "subscriptionId": job["subscription"], "event": job["event"],
                 "items": len(job["items"]), "attempt": job["attempts"], "status": status,
                 "acked": acked, "at": time.time()}
        self._logged_or_retried(job, entry, settings)


def routes(app) -> list:
    """Graph's routes; starts the notification thread when the app runs its push worker."""
    if getattr(app, "graph_worker", None) is None:
        app.graph_worker = GraphPushWorker(app.store)
        if app.worker.is_alive():
            app.graph_worker.start()
    return GraphAPI(app).routes()
