"""Gmail API v1: profile, watch/stop, history, messages list/get/send, attachments."""

from __future__ import annotations

import base64
import email.utils
import json
import re
import time

from .. import faults as faultlib
from .. import gmail
from ..http import BadRequest, Part, Request, Response, route, split_multipart
from .errors import google_error

GMAIL = "https://www.googleapis.com/auth/gmail."
_FULL = {"https://mail.google.com/", GMAIL + "modify"}
READ = _FULL | {GMAIL + "readonly", GMAIL + "metadata"}
READ_BODY = _FULL | {GMAIL + "readonly"}
SEND = _FULL | {GMAIL + "send", GMAIL + "compose"}
COST = {"getProfile": 1, "watch": 100, "stop": 50, "history.list": 2, "messages.list": 5,
        "messages.get": 5, "messages.send": 100, "attachments.get": 5}
JSON_PAYLOAD_LIMIT = 5 * 1024 * 1024  # a non-upload request body
UPLOAD_LIMIT = 36700160  # messages.send's media upload maxSize (35 MB)


class GmailAPI(Part):
    def routes(self) -> list:
        return [
            ("GET", route(r"/gmail/v1/users/([^/]+)/profile"), self.get_profile),
            ("POST", route(r"/gmail/v1/users/([^/]+)/watch"), self.watch),
            ("POST", route(r"/gmail/v1/users/([^/]+)/stop"), self.stop),
            ("GET", route(r"/gmail/v1/users/([^/]+)/history"), self.history_list),
            ("GET", route(r"/gmail/v1/users/([^/]+)/messages"), self.messages_list),
            ("POST", route(r"/gmail/v1/users/([^/]+)/messages/send"), self.messages_send),
            ("POST", route(r"/upload/gmail/v1/users/([^/]+)/messages/send"),
             self.messages_send_upload),
            ("GET", route(r"/gmail/v1/users/([^/]+)/messages/([^/]+)/attachments/([^/]+)"),
             self.attachments_get),
            ("GET", route(r"/gmail/v1/users/([^/]+)/messages/([^/]+)"), self.messages_get),
        ]

    def _gmail_auth(self, request: Request, user_id: str, op: str, scopes: set[str],
                    ) -> tuple[str | None, Response | None]:
        header = request.header("Authorization")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        state = self.store.read()
        record = state["access_tokens"].get(token) if token else None
        if record is None or record["expires"] < time.time() or record.get("revoked") \
                or record.get("provider") == "microsoft":
            message = ("Request had invalid authentication credentials. Expected OAuth 2 "
                       "access token, login cookie or other valid authentication credential. "
                       "See https://developers.google.com/identity/sign-in/web/"
                       "devconsole-project.")
            return None, google_error(
                401, message, "authError", item_message="Invalid Credentials",
                location="Authorization", locationType="header",
                headers=[("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/", '
                          'error="invalid_token"')])
        mailbox = record["email"]
        if user_id not in ("me", mailbox):
            return None, google_error(403, f"Delegation denied for {mailbox}", "forbidden")
        if not scopes & set(record["scopes"]):
            return None, google_error(403, "Request had insufficient authentication scopes.",
                                      "insufficientPermissions")
        with self.store.transaction() as state:
            slow = faultlib.take(state, ("slow",), "gmail", mailbox)
            fault = faultlib.take(state, ("user_rate_limit", "rate_limit", "too_many_requests",
                                          "server_error", "invalid_argument"), "gmail",
                                  mailbox)
        if slow:
            time.sleep(slow["delay"])
        if fault:
            return None, self._fault_response(fault)
        if not self._charge_quota(mailbox, COST.get(op, 5)):
            return None, google_error(403, "User-rate limit exceeded.",
                                      "userRateLimitExceeded", domain="usageLimits")
        return mailbox, None

    @staticmethod
    def _fault_response(fault: dict) -> Response:
        kind = fault["kind"]
        if kind == "user_rate_limit":
            return google_error(403, "User-rate limit exceeded.", "userRateLimitExceeded",
                                domain="usageLimits")
        if kind == "rate_limit":
            return google_error(403, "Rate Limit Exceeded", "rateLimitExceeded",
                                domain="usageLimits")
        if kind == "invalid_argument":
            return google_error(400, "Invalid To header", "invalidArgument")
        if kind == "too_many_requests":
            return google_error(429, "Too many concurrent requests for user.",
                                "rateLimitExceeded", domain="usageLimits",
                                headers=[("Retry-After", str(fault["retry_after"]))])
        code = fault["status"] if fault["status"] >= 500 else 500
        return google_error(code, "Backend Error", "backendError")

    def _charge_quota(self, mailbox: str, units: int) -> bool:
        limit = int(self.store.settings().get("user_quota_per_minute") or 0)
        if not limit:
            return True
        now = time.time()
        with self.app.quota_lock:
            window = [(t, u) for t, u in self.app.quota.get(mailbox, []) if t > now - 60]
            if sum(u for _, u in window) + units > limit:
                self.app.quota[mailbox] = window
                return False
            window.append((now, units))
            self.app.quota[mailbox] = window
        return True

    def get_profile(self, request: Request, user_id: str) -> Response:
        mailbox, error = self._gmail_auth(request, user_id, "getProfile", READ | SEND)
        if error:
            return error
        box = self.store.read()["mailboxes"][mailbox]
        threads = {m["threadId"] for m in box["messages"].values()}
        return Response(200, {"emailAddress": mailbox, "messagesTotal": len(box["messages"]),
                              "threadsTotal": len(threads),
                              "historyId": str(box["history_id"])})

    def watch(self, request: Request, user_id: str) -> Response:
        mailbox, error = self._gmail_auth(request, user_id, "watch", READ)
        if error:
            return error
        body = request.json()
        topic = body.get("topicName") or ""
        if not re.fullmatch(r"projects/[^/]+/topics/[^/]+", topic):
            return google_error(400, "Invalid topicName does not match "
                                "projects/SOME-ANDROID-PROJECT/topics/*", "invalidArgument")
        settings = self.store.settings()
        if topic not in settings.get("topics", {}) and not settings.get("auto_create_topics"):
            return google_error(404, f"Resource not found (resource={topic.split('/')[-1]}).",
                                "notFound")
        behavior = (body.get("labelFilterBehavior") or body.get("labelFilterAction")
                    or "include").lower()
        if behavior not in ("include", "exclude"):
            return google_error(400, "Invalid labelFilterBehavior", "invalidArgument")
        expiration = gmail.now_ms() + int(settings.get("watch_days", 7)) * 86_400_000
        with self.store.transaction() as state:
            box = state["mailboxes"][mailbox]
            box["watch"] = {"topicName": topic, "labelIds": body.get("labelIds") or [],
                            "labelFilterBehavior": behavior, "expiration": expiration}
            gmail.maybe_queue_push(self.store, state, box, None, force=True)
            history_id = box["history_id"]
        self.worker.wake.set()
        return Response(200, {"historyId": str(history_id), "expiration": str(expiration)})

    def stop(self, request: Request, user_id: str) -> Response:
        mailbox, error = self._gmail_auth(request, user_id, "stop", READ)
        if error:
            return error
        with self.store.transaction() as state:
            state["mailboxes"][mailbox]["watch"] = None
        return Response(204, b"")

    @staticmethod
    def _page(request: Request, items: list, default: int, cap: int) -> tuple[list, str | None]:
        try:
            size = max(1, min(int(request.arg("maxResults") or default), cap))
            token = request.arg("pageToken")
            offset = int(base64.urlsafe_b64decode(token + "==").decode()) if token else 0
        except ValueError:
            raise BadRequest("Invalid pageToken or maxResults") from None
        chunk = items[offset:offset + size]
        more = offset + size < len(items)
        next_token = base64.urlsafe_b64encode(
            str(offset + size).encode()).decode().rstrip("=") if more else None
        return chunk, next_token

    def history_list(self, request: Request, user_id: str) -> Response:
        mailbox, error = self._gmail_auth(request, user_id, "history.list", READ)
        if error:
            return error
        start = request.arg("startHistoryId")
        if not start or not start.isdigit():
            return google_error(400, "Invalid startHistoryId" if start else
                                "Missing required parameter: startHistoryId", "invalidArgument")
        start_id = int(start)
        with self.store.transaction() as state:
            expired = faultlib.take(state, ("expired_history",), "history", mailbox)
        box = self.store.read()["mailboxes"][mailbox]
        if expired or start_id < box["history_floor"]:
            return google_error(404, "Requested entity was not found.", "notFound")
        types = request.args("historyTypes")
        label = request.arg("labelId")
        records = [h for h in box["history"] if h["id"] > start_id]
        if types and "messageAdded" not in types:
            records = []
        if label:
            records = [h for h in records if label in h["message"]["labelIds"]]
        try:
            chunk, next_token = self._page(request, records, 100, 500)
        except BadRequest as exc:
            return google_error(400, str(exc), "invalidArgument")
        out: dict = {}
        if chunk:
            out["history"] = [{
                "id": str(h["id"]),
                "messages": [{"id": h["message"]["id"], "threadId": h["message"]["threadId"]}],
                "messagesAdded": [{"message": h["message"]}],
            } for h in chunk]
        if next_token:
            out["nextPageToken"] = next_token
        out["historyId"] = str(box["history_id"])
        return Response(200, out)

    def messages_list(self, request: Request, user_id: str) -> Response:
        mailbox, error = self._gmail_auth(request, user_id, "messages.list", READ)
        if error:
            return error
        box = self.store.read()["mailboxes"][mailbox]
        labels = request.args("labelIds")
        query = request.arg("q") or ""
        found = [box["messages"][i] for i in reversed(box["order"])]
        if labels:
            found = [m for m in found if all(lb in m["labelIds"] for lb in labels)]
        if query:
            found = [m for m in found if gmail.matches_query(m, query)]
        try:
            chunk, next_token = self._page(request, found, 100, 500)
        except BadRequest as exc:
            return google_error(400, str(exc), "invalidArgument")
        out: dict = {}
        if chunk:
            out["messages"] = [{"id": m["id"], "threadId": m["threadId"]} for m in chunk]
        if next_token:
            out["nextPageToken"] = next_token
        out["resultSizeEstimate"] = len(found)
        return Response(200, out)

    def messages_get(self, request: Request, user_id: str, msg_id: str) -> Response:
        fmt = (request.arg("format") or "full").lower()
        needed = READ if fmt in ("metadata", "minimal") else READ_BODY
        mailbox, error = self._gmail_auth(request, user_id, "messages.get", needed)
        if error:
            return error
        if fmt not in ("full", "raw", "metadata", "minimal"):
            return google_error(400, f"Invalid format: {fmt}", "invalidArgument")
        box = self.store.read()["mailboxes"][mailbox]
        rec = box["messages"].get(msg_id)
        if rec is None:
            if not re.fullmatch(r"[0-9a-f]{1,16}", msg_id):
                return google_error(400, "Invalid id value", "invalidArgument")
            return google_error(404, "Requested entity was not found.", "notFound")
        return Response(200, gmail.render_message(self.store, rec, fmt,
                                                  request.args("metadataHeaders")))

    def attachments_get(self, request: Request, user_id: str, msg_id: str,
                        att_id: str) -> Response:
        mailbox, error = self._gmail_auth(request, user_id, "attachments.get", READ_BODY)
        if error:
            return error
        rec = self.store.read()["mailboxes"][mailbox]["messages"].get(msg_id)
        data = gmail.find_attachment(self.store.get_raw(rec["blob"]), msg_id, att_id) \
            if rec else None
        if data is None:
            return google_error(404, "Requested entity was not found.", "notFound")
        return Response(200, {"attachmentId": att_id, "size": len(data),
                              "data": gmail.b64url_encode(data)})

    def messages_send(self, request: Request, user_id: str) -> Response:
        """The JSON form: ``{"raw": base64url, "threadId"}``. Like Google, a request body
        above the non-upload payload limit is refused: big mail goes through /upload."""
        mailbox, error = self._gmail_auth(request, user_id, "messages.send", SEND)
        if error:
            return error
        if len(request.body) > JSON_PAYLOAD_LIMIT:
            return google_error(400, "Request payload size exceeds the limit: "
                                     f"{JSON_PAYLOAD_LIMIT} bytes.", "badRequest")
        body = request.json()
        if not body.get("raw"):
            return google_error(400, "Recipient address required", "invalidArgument")
        try:
            raw = gmail.b64_decode_tolerant(body["raw"])
        except ValueError:
            return google_error(400, "Invalid value for ByteString: raw", "invalidArgument")
        return self._send(mailbox, raw, body.get("threadId"))

    def messages_send_upload(self, request: Request, user_id: str) -> Response:
        """The media-upload form: ``uploadType=media`` (the message is the body) or
        ``multipart`` (multipart/related: JSON metadata, then the message), up to 35 MB."""
        mailbox, error = self._gmail_auth(request, user_id, "messages.send", SEND)
        if error:
            return error
        upload_type = request.arg("uploadType", "")
        if len(request.body) > UPLOAD_LIMIT:
            return google_error(413, f"Media larger than {UPLOAD_LIMIT} bytes.",
                                "uploadTooLarge")
        if upload_type == "media":
            metadata, raw = {}, request.body
        elif upload_type == "multipart":
            parts = [(ctype, data) for _, _, ctype, data
                     in split_multipart(request.content_type, request.body)]
            if len(parts) != 2 or not parts[1][0].startswith("message/"):
                return google_error(400, "Multipart upload needs metadata and a message/* "
                                         "part.", "badRequest")
            metadata, raw = json.loads(parts[0][1] or b"{}"), parts[1][1]
        else:
            return google_error(400, f"Unsupported uploadType: {upload_type!r}", "badRequest")
        return self._send(mailbox, raw, metadata.get("threadId"))

    def _send(self, mailbox: str, raw: bytes, thread_id: str | None) -> Response:
        if thread_id and not re.fullmatch(r"[0-9a-f]{1,16}", thread_id):
            return google_error(400, "Invalid thread_id value", "invalidArgument")
        try:
            raw, recipients = finalize_outgoing(raw, mailbox)
        except BadRequest as exc:
            return google_error(400, str(exc), "invalidArgument")
        settings = self.store.settings()
        with self.store.transaction() as state:
            box = state["mailboxes"][mailbox]
            if thread_id and not any(m["threadId"] == thread_id
                                     for m in box["messages"].values()):
                return google_error(404, "Requested entity was not found.", "notFound")
            labels = ["SENT"] + (["INBOX", "UNREAD"] if mailbox in recipients else [])
            rec = gmail.add_message(self.store, state, box, raw, labels, thread_id)
            if settings.get("deliver_locally", True):
                for rcpt in recipients:
                    if rcpt != mailbox and rcpt in state["mailboxes"]:
                        gmail.add_message(self.store, state, state["mailboxes"][rcpt],
                                          b"Delivered-To: " + rcpt.encode() + b"\r\n" + raw,
                                          ["INBOX", "UNREAD", "CATEGORY_PERSONAL"])
            held = faultlib.take(state, ("slow_after_send",), "send", mailbox)
        self.worker.wake.set()
        if held:
            time.sleep(held["delay"])
        return Response(200, {"id": rec["id"], "threadId": rec["threadId"],
                              "labelIds": rec["labelIds"]})


def finalize_outgoing(raw: bytes, mailbox: str) -> tuple[bytes, list[str]]:
    """Add what Gmail adds to a sent message (From, Date, Message-ID if missing), keeping a
    client-supplied Message-ID; return the bytes and the lower-cased recipient addresses."""
    msg = gmail.parse(raw)
    recipients = [addr.lower() for _, addr in email.utils.getaddresses(
        [str(v) for h in ("To", "Cc", "Bcc") for v in msg.get_all(h, [])]) if addr]
    if not recipients:
        raise BadRequest("Recipient address required")
    extra = b""
    if not msg.get("Message-ID"):
        extra += f"Message-ID: <CA{gmail.now_ms():x}.sbx@mail.gmail.com>\r\n".encode()
    if not msg.get("Date"):
        extra += f"Date: {email.utils.formatdate(localtime=False)}\r\n".encode()
    if not msg.get("From"):
        extra += f"From: {mailbox}\r\n".encode()
    if msg.get("Bcc"):  # Gmail strips Bcc from the copy it delivers
        raw = re.sub(rb"(?im)^bcc:.*\r?\n([ \t].*\r?\n)*", b"", raw, count=1)
    return extra + raw, recipients
