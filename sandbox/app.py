"""The sandbox's WSGI application: Google OAuth, Gmail API v1, certs, control endpoints."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import html
import json
import re
import threading
import time
import urllib.parse
from collections import deque
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy

from . import faults as faultlib
from . import gmail
from .keys import SigningKey
from .push import PushWorker
from .store import Store

GMAIL = "https://www.googleapis.com/auth/gmail."
SCOPES = {
    "https://mail.google.com/": "Read, compose, send and permanently delete all your email",
    GMAIL + "readonly": "View your email messages and settings",
    GMAIL + "send": "Send email on your behalf",
    GMAIL + "modify": "Read, compose and send emails from your Gmail account",
    GMAIL + "metadata": "View your email message metadata such as labels and headers",
    GMAIL + "compose": "Manage drafts and send emails",
    GMAIL + "insert": "Add emails into your Gmail mailbox",
    GMAIL + "labels": "See and edit your email labels",
    "openid": "Associate you with your personal info on Google",
    "email": "See your primary Google Account email address",
    "profile": "See your personal info",
    "https://www.googleapis.com/auth/userinfo.email": "See your primary email address",
    "https://www.googleapis.com/auth/userinfo.profile": "See your personal info",
}
_FULL = {"https://mail.google.com/", GMAIL + "modify"}
READ = _FULL | {GMAIL + "readonly", GMAIL + "metadata"}
READ_BODY = _FULL | {GMAIL + "readonly"}
SEND = _FULL | {GMAIL + "send", GMAIL + "compose"}
COST = {"getProfile": 1, "watch": 100, "stop": 50, "history.list": 2, "messages.list": 5,
        "messages.get": 5, "messages.send": 100, "attachments.get": 5}
STATUS_TEXT = {200: "OK", 204: "No Content", 302: "Found", 400: "Bad Request",
               401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               405: "Method Not Allowed", 429: "Too Many Requests",
               500: "Internal Server Error", 502: "Bad Gateway",
               503: "Service Unavailable", 504: "Gateway Timeout"}
GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class Response:
    def __init__(self, status: int = 200, body: bytes | str | dict | list | None = b"",
                 content_type: str = "application/json; charset=UTF-8",
                 headers: list[tuple[str, str]] | None = None):
        if isinstance(body, dict | list):
            body = json.dumps(body, indent=2)
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.status = status
        self.body = body or b""
        self.headers = list(headers or [])
        if status != 204:
            self.headers.append(("Content-Type", content_type))

    def wsgi(self, start_response):
        reason = STATUS_TEXT.get(self.status, "Unknown")
        start_response(f"{self.status} {reason}",
                       self.headers + [("Content-Length", str(len(self.body)))])
        return [self.body]


def google_error(code: int, message: str, reason: str, domain: str = "global",
                 headers=None, item_message: str | None = None, **extra) -> Response:
    error = {"message": item_message or message, "domain": domain, "reason": reason, **extra}
    return Response(code, {"error": {"code": code, "message": message, "errors": [error],
                                     "status": GOOGLE_STATUS.get(code, "UNKNOWN")}},
                    headers=headers)


def oauth_error(code: int, error: str, description: str) -> Response:
    return Response(code, {"error": error, "error_description": description})


def html_page(title: str, body: str, status: int = 200) -> Response:
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:52rem;margin:2rem auto;color:#202124}}
.card{{border:1px solid #dadce0;border-radius:8px;padding:1.5rem;margin:1rem 0}}
button{{padding:.5rem 1.2rem;margin:.2rem;border-radius:4px;border:1px solid #1a73e8;
background:#fff;color:#1a73e8;cursor:pointer}} button.primary{{background:#1a73e8;color:#fff}}
table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #eee;padding:.3rem .6rem;
text-align:left}} label{{display:block;margin:.4rem 0}} .err{{color:#d93025}}</style></head>
<body><p><small>Google sandbox (local emulator)</small></p>{body}</body></html>"""
    return Response(status, page, "text/html; charset=utf-8")


class Request:
    def __init__(self, environ: dict):
        self.environ = environ
        self.method = environ["REQUEST_METHOD"].upper()
        self.path = environ.get("PATH_INFO", "") or "/"
        self.query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""),
                                           keep_blank_values=True)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.body = environ["wsgi.input"].read(length) if length else b""
        self.content_type = environ.get("CONTENT_TYPE", "")
        self._form: dict | None = None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        return self.query.get(name, [])

    def header(self, name: str) -> str:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"), "")

    def json(self) -> dict:
        if not self.body:
            return {}
        return json.loads(self.body)

    @property
    def form(self) -> dict[str, list]:
        """Form fields (urlencoded or multipart); file fields are (filename, bytes, type)."""
        if self._form is None:
            if self.content_type.startswith("multipart/form-data"):
                self._form = {}
                for name, filename, ctype, data in _split_multipart(self.content_type,
                                                                    self.body):
                    value = (filename, data, ctype) if filename is not None \
                        else data.decode("utf-8", "replace")
                    self._form.setdefault(name, []).append(value)
            else:
                self._form = urllib.parse.parse_qs(self.body.decode("utf-8", "replace"),
                                                   keep_blank_values=True)
        return self._form

    def field(self, name: str, default=None):
        values = self.form.get(name)
        return values[0] if values else default

    def param(self, name: str):
        """Query or form field (the OAuth endpoints accept either)."""
        return self.field(name) if self.field(name) is not None else self.arg(name)


def _split_multipart(content_type: str, body: bytes):
    """Yield (name, filename|None, content type, exact bytes) of the parts of a multipart
    body: form-data from browsers (CRLF) or related uploads from google-api-python-client
    (its generator writes bare LF around the parts)."""
    header = BytesParser(policy=default_policy).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n", headersonly=True)
    boundary = header.get_param("boundary")
    if not boundary:
        return
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk[chunk.startswith(b"\n"):]
        ends = [i for i in (chunk.find(b"\r\n\r\n"), chunk.find(b"\n\n")) if i >= 0]
        if not ends:
            continue
        cut = min(ends)
        head = chunk[:cut]
        data = chunk[cut + (4 if chunk.startswith(b"\r\n\r\n", cut) else 2):]
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") \
            else data
        part = BytesParser(policy=default_policy).parsebytes(head + b"\r\n\r\n",
                                                             headersonly=True)
        name = part.get_param("name", header="content-disposition")
        yield name, part.get_filename(), part.get_content_type(), data


JSON_PAYLOAD_LIMIT = 5 * 1024 * 1024  # a non-upload request body
UPLOAD_LIMIT = 36700160  # messages.send's media upload maxSize (35 MB)


def _route(pattern: str):
    return re.compile("^" + pattern + "$")


class SandboxApp:
    def __init__(self, store: Store | None = None, start_worker: bool = True):
        self.store = store or Store()
        self.key = SigningKey(self.store.root)
        self.requests_log: deque = deque(maxlen=500)
        self.quota: dict[str, list] = {}
        self.quota_lock = threading.Lock()
        self.worker = PushWorker(self.store, self.key)
        if start_worker:
            self.worker.start()
        self.routes = [
            ("GET", _route(r"/o/oauth2/v2/auth|/o/oauth2/auth"), self.authorize),
            ("POST", _route(r"/o/oauth2/v2/auth|/o/oauth2/auth"), self.authorize_post),
            ("POST", _route(r"/token|/o/oauth2/token"), self.token),
            ("POST", _route(r"/revoke|/o/oauth2/revoke"), self.revoke),
            ("GET", _route(r"/revoke|/o/oauth2/revoke"), self.revoke),
            ("GET", _route(r"/oauth2/v1/certs"), lambda r: Response(200, self.key.certs_v1())),
            ("GET", _route(r"/oauth2/v3/certs"), lambda r: Response(200, self.key.certs_v3())),
            ("GET", _route(r"/\.well-known/openid-configuration"), self.discovery),
            ("GET", _route(r"/gmail/v1/users/([^/]+)/profile"), self.get_profile),
            ("POST", _route(r"/gmail/v1/users/([^/]+)/watch"), self.watch),
            ("POST", _route(r"/gmail/v1/users/([^/]+)/stop"), self.stop),
            ("GET", _route(r"/gmail/v1/users/([^/]+)/history"), self.history_list),
            ("GET", _route(r"/gmail/v1/users/([^/]+)/messages"), self.messages_list),
            ("POST", _route(r"/gmail/v1/users/([^/]+)/messages/send"), self.messages_send),
            ("POST", _route(r"/upload/gmail/v1/users/([^/]+)/messages/send"),
             self.messages_send_upload),
            ("GET", _route(r"/gmail/v1/users/([^/]+)/messages/([^/]+)/attachments/([^/]+)"),
             self.attachments_get),
            ("GET", _route(r"/gmail/v1/users/([^/]+)/messages/([^/]+)"), self.messages_get),
            ("GET", _route(r"/_sandbox/?"), self.home),
            ("GET", _route(r"/_sandbox/mailboxes"), self.sb_mailboxes),
            ("POST", _route(r"/_sandbox/mailboxes"), self.sb_create_mailbox),
            ("POST", _route(r"/_sandbox/deliver"), self.sb_deliver),
            ("POST", _route(r"/_sandbox/reply"), self.sb_reply),
            ("GET", _route(r"/_sandbox/sent"), self.sb_sent),
            ("GET", _route(r"/_sandbox/messages"), self.sb_messages),
            ("GET", _route(r"/_sandbox/state"), self.sb_state),
            ("POST", _route(r"/_sandbox/reset"), self.sb_reset),
            ("GET", _route(r"/_sandbox/settings"), lambda r: Response(200, self.store.settings())),
            ("POST", _route(r"/_sandbox/settings"), self.sb_settings),
            ("GET", _route(r"/_sandbox/faults"), self.sb_faults_list),
            ("POST", _route(r"/_sandbox/faults"), self.sb_faults_add),
            ("DELETE", _route(r"/_sandbox/faults"), self.sb_faults_clear),
            ("POST", _route(r"/_sandbox/faults/clear"), self.sb_faults_clear),
            ("GET", _route(r"/_sandbox/pushes"), self.sb_pushes),
            ("POST", _route(r"/_sandbox/revoke-all"), self.sb_revoke_all),
            ("POST", _route(r"/_sandbox/expire-access-tokens"), self.sb_expire_access_tokens),
            ("POST", _route(r"/_sandbox/expire-history"), self.sb_expire_history),
            ("POST", _route(r"/_sandbox/clients"), self.sb_clients),
            ("GET", _route(r"/_sandbox/requests"), self.sb_requests),
        ]

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        request = Request(environ)
        self.requests_log.append({
            "method": request.method, "path": request.path,
            "query": environ.get("QUERY_STRING", ""),
            "authorization": request.header("Authorization")[:16],
            "content_type": request.content_type, "at": time.time(),
        })
        try:
            response = self.dispatch(request)
        except json.JSONDecodeError:
            response = google_error(400, "Invalid JSON payload received.", "parseError")
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            import traceback

            traceback.print_exc()
            response = google_error(500, f"Sandbox bug: {exc!r}", "backendError")
        return response.wsgi(start_response)

    def dispatch(self, request: Request) -> Response:
        allowed = False
        for method, pattern, handler in self.routes:
            match = pattern.match(request.path)
            if not match:
                continue
            allowed = True
            if method == request.method:
                return handler(request, *match.groups())
        if allowed:
            return google_error(405, "Method not allowed", "methodNotAllowed")
        if request.path == "/":
            return Response(302, b"", headers=[("Location", "/_sandbox/")])
        return google_error(404, "Requested entity was not found.", "notFound")

    # -- OAuth -----------------------------------------------------------------------------
    def discovery(self, request: Request) -> Response:
        base = self.base_url(request)
        return Response(200, {
            "issuer": "https://accounts.google.com",
            "authorization_endpoint": base + "/o/oauth2/v2/auth",
            "token_endpoint": base + "/token",
            "revocation_endpoint": base + "/revoke",
            "jwks_uri": base + "/oauth2/v3/certs",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })

    @staticmethod
    def base_url(request: Request) -> str:
        host = request.environ.get("HTTP_HOST") or (
            f"{request.environ['SERVER_NAME']}:{request.environ['SERVER_PORT']}")
        return f"{request.environ.get('wsgi.url_scheme', 'http')}://{host}"

    def _validate_auth(self, params: dict) -> tuple[dict | None, Response | None]:
        """Validate an authorization request like Google does (error page, no redirect)."""
        def page(error: str, detail: str) -> Response:
            return html_page("Error", f"<div class='card'><h1>Access blocked: authorization "
                             f"error</h1><p class='err'>Error 400: {html.escape(error)}</p>"
                             f"<p>{html.escape(detail)}</p></div>", 400)

        client_id = params.get("client_id") or ""
        redirect_uri = params.get("redirect_uri") or ""
        if not client_id:
            return None, page("invalid_request", "Missing required parameter: client_id")
        settings = self.store.settings()
        client = settings["clients"].get(client_id)
        if client is None and not settings.get("auto_register_clients", True):
            return None, html_page("Error", "<div class='card'><h1>Access blocked</h1><p "
                                   "class='err'>Error 401: invalid_client</p><p>The OAuth "
                                   "client was not found.</p></div>", 401)
        if not redirect_uri:
            return None, page("invalid_request", "Missing required parameter: redirect_uri")
        if client is not None and redirect_uri not in client.get("redirect_uris", []):
            return None, page("redirect_uri_mismatch",
                              f"You can't sign in to this app because it doesn't comply with "
                              f"Google's OAuth 2.0 policy. redirect_uri={redirect_uri}")
        if params.get("response_type") != "code":
            return None, page("invalid_request",
                              f"Invalid response_type: {params.get('response_type')!r} "
                              "(the web-server flow needs response_type=code)")
        scopes = (params.get("scope") or "").split()
        if not scopes:
            return None, page("invalid_request", "Missing required parameter: scope")
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            return None, page("invalid_scope",
                              "Some requested scopes were invalid. {invalid=[" +
                              ", ".join(unknown) + "]}")
        access_type = params.get("access_type") or "online"
        if access_type not in ("online", "offline"):
            return None, page("invalid_request", f"Invalid access_type: {access_type}")
        challenge = params.get("code_challenge") or ""
        method = params.get("code_challenge_method") or ("plain" if challenge else "")
        if challenge:
            if method not in ("S256", "plain"):
                return None, page("invalid_request",
                                  f"Invalid code_challenge_method: {method}")
            if not re.fullmatch(r"[A-Za-z0-9\-._~]{43,128}", challenge):
                return None, page("invalid_request", "Invalid code_challenge.")
        elif params.get("code_challenge_method"):
            return None, page("invalid_request", "Missing code_challenge.")
        elif settings.get("require_pkce"):
            return None, page("invalid_request", "Missing required parameter: code_challenge")
        return {
            "client_id": client_id, "redirect_uri": redirect_uri, "scopes": scopes,
            "state": params.get("state"), "access_type": access_type,
            "prompt": (params.get("prompt") or "").split(),
            "code_challenge": challenge, "code_challenge_method": method,
            "include_granted_scopes": params.get("include_granted_scopes") == "true",
            "login_hint": params.get("login_hint") or "",
        }, None

    _AUTH_PARAMS = ("client_id", "redirect_uri", "response_type", "scope", "state",
                    "access_type", "prompt", "code_challenge", "code_challenge_method",
                    "include_granted_scopes", "login_hint")

    def _hidden(self, params: dict) -> str:
        return "".join(
            f"<input type='hidden' name='{k}' value='{html.escape(params[k], quote=True)}'>"
            for k in self._AUTH_PARAMS if params.get(k) is not None
        )

    def authorize(self, request: Request) -> Response:
        params = {k: request.arg(k) for k in self._AUTH_PARAMS}
        auth, error = self._validate_auth(params)
        if error:
            return error
        hint = auth["login_hint"].lower()
        if hint and hint in self.store.read()["mailboxes"] \
                and "select_account" not in auth["prompt"]:
            return self._consent_page(params, auth, hint)
        return self._picker_page(params)

    def _picker_page(self, params: dict) -> Response:
        suggested = [a.strip().lower() for a in self.store.settings().get("suggested_accounts")
                     or [] if a and "@" in a]
        boxes = [b for b in sorted(self.store.read()["mailboxes"]) if b not in suggested]
        hidden = self._hidden(params)

        def choice(address: str, note: str = "") -> str:
            return (f"<form method='post'>{hidden}<input type='hidden' name='step' "
                    f"value='choose'><button name='email' "
                    f"value='{html.escape(address, quote=True)}'>{html.escape(address)}"
                    f"</button>{note}</form>")

        items = "".join(
            [choice(a, " <small>suggested</small>") for a in suggested]
            + [choice(b) for b in boxes]
        ) or "<p>No accounts yet.</p>"
        body = (f"<div class='card'><h1>Choose an account</h1>{items}"
                f"<form method='post'>{hidden}<input type='hidden' name='step' value='choose'>"
                "<label>Use another account: <input name='email' type='email' "
                "placeholder='someone@example.com' required></label>"
                "<button class='primary'>Next</button></form></div>")
        return html_page("Sign in - Google Accounts", body)

    def _consent_page(self, params: dict, auth: dict, email_address: str) -> Response:
        hidden = self._hidden(params)
        scope_items = "".join(
            f"<label><input type='checkbox' name='grant_scope' value='{html.escape(s, True)}' "
            f"checked> {html.escape(SCOPES[s])} <small>({html.escape(s)})</small></label>"
            for s in auth["scopes"]
        )
        body = (f"<div class='card'><h1>{html.escape(auth['client_id'])} wants access to "
                f"your Google Account</h1><p>{html.escape(email_address)}</p>"
                f"<form method='post'>{hidden}<input type='hidden' name='step' value='consent'>"
                f"<input type='hidden' name='email' value='{html.escape(email_address, True)}'>"
                f"<p>This will allow the app to:</p>{scope_items}"
                "<p><button name='decision' value='deny'>Deny</button>"
                "<button class='primary' name='decision' value='allow'>Allow</button></p>"
                "</form></div>")
        return html_page("Sign in - Google Accounts", body)

    def authorize_post(self, request: Request) -> Response:
        params = {k: request.field(k) for k in self._AUTH_PARAMS}
        auth, error = self._validate_auth(params)
        if error:
            return error
        email_address = (request.field("email") or "").strip().lower()
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email_address):
            return self._picker_page(params)
        step = request.field("step")
        if step != "consent":
            with self.store.transaction() as state:
                gmail.ensure_mailbox(state, email_address)
            return self._consent_page(params, auth, email_address)
        query: dict[str, str] = {}
        if request.field("decision") != "allow":
            query["error"] = "access_denied"
        else:
            granted = [s for s in request.form.get("grant_scope", []) if s in auth["scopes"]]
            if not granted:
                query["error"] = "access_denied"
            else:
                query.update(self._issue_code(auth, email_address, granted))
        if auth["state"] is not None:
            query["state"] = auth["state"]
        sep = "&" if "?" in auth["redirect_uri"] else "?"
        location = auth["redirect_uri"] + sep + urllib.parse.urlencode(query)
        return Response(302, b"", "text/html", headers=[("Location", location)])

    def _issue_code(self, auth: dict, email_address: str, granted: list[str]) -> dict:
        code = Store.token("4/0Sbx")
        settings = self.store.settings()
        with self.store.transaction() as state:
            if auth["client_id"] not in settings["clients"]:
                self.store.update_settings({"clients": {auth["client_id"]: {
                    "client_secret": None, "redirect_uris": [auth["redirect_uri"]]}}})
            grant_key = f"{auth['client_id']} {email_address}"
            previous = state["grants"].get(grant_key, {"scopes": [], "offline": False})
            scopes = list(granted)
            if auth["include_granted_scopes"]:
                scopes += [s for s in previous["scopes"] if s not in scopes]
            state["codes"][code] = {
                "client_id": auth["client_id"], "redirect_uri": auth["redirect_uri"],
                "email": email_address, "scopes": scopes,
                "offline": auth["access_type"] == "offline",
                "first_offline": not previous["offline"] or "consent" in auth["prompt"],
                "code_challenge": auth["code_challenge"],
                "code_challenge_method": auth["code_challenge_method"],
                "expires": time.time() + float(settings.get("code_ttl", 600)), "used": False,
            }
        return {"code": code, "scope": " ".join(scopes), "authuser": "0",
                "prompt": "consent"}

    def _client_auth(self, request: Request) -> tuple[str, str | None]:
        header = request.header("Authorization")
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip()).decode()
                cid, _, secret = decoded.partition(":")
                return urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)
            except (ValueError, UnicodeDecodeError):
                return "", None
        return request.field("client_id") or "", request.field("client_secret")

    def token(self, request: Request) -> Response:
        client_id, secret = self._client_auth(request)
        settings = self.store.settings()
        client = settings["clients"].get(client_id)
        if not client_id or client is None:
            return oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if client.get("client_secret") is None and secret:
            self.store.update_settings({"clients": {client_id: {**client,
                                                                "client_secret": secret}}})
        elif client.get("client_secret") != secret:
            return oauth_error(401, "invalid_client", "Unauthorized")
        grant_type = request.field("grant_type")
        if grant_type == "authorization_code":
            return self._token_from_code(request, client_id, settings)
        if grant_type == "refresh_token":
            return self._token_from_refresh(request, client_id, settings)
        if not grant_type:
            return oauth_error(400, "unsupported_grant_type", "Invalid grant_type: ")
        return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _new_access_token(self, state: dict, client_id: str, email_address: str,
                          scopes: list[str], settings: dict) -> dict:
        access = Store.token("ya29.sbx-")
        ttl = int(settings.get("access_token_ttl", 3599))
        state["access_tokens"][access] = {"client_id": client_id, "email": email_address,
                                          "scopes": scopes, "expires": time.time() + ttl}
        body = {"access_token": access, "expires_in": ttl, "scope": " ".join(scopes),
                "token_type": "Bearer"}
        if "openid" in scopes or "email" in scopes:
            now = int(time.time())
            body["id_token"] = self.key.sign_jwt({
                "iss": "https://accounts.google.com", "azp": client_id, "aud": client_id,
                "sub": str(int(hashlib.sha256(email_address.encode()).hexdigest(), 16))[:21],
                "email": email_address, "email_verified": True, "iat": now, "exp": now + 3600,
            })
        return body

    def _token_from_code(self, request: Request, client_id: str, settings: dict) -> Response:
        code = request.field("code")
        if not code:
            return oauth_error(400, "invalid_request", "Missing required parameter: code")
        with self.store.transaction() as state:
            grant = state["codes"].get(code)
            if grant is None or grant["client_id"] != client_id:
                return oauth_error(400, "invalid_grant", "Malformed auth code.")
            if grant["used"] or grant["expires"] < time.time():
                return oauth_error(400, "invalid_grant", "Bad Request")
            grant["used"] = True  # single use, even when the exchange fails below
            if request.field("redirect_uri") != grant["redirect_uri"]:
                return oauth_error(400, "redirect_uri_mismatch", "Bad Request")
            verifier = request.field("code_verifier")
            if grant["code_challenge"]:
                if not verifier:
                    return oauth_error(400, "invalid_grant", "Missing code verifier.")
                if grant["code_challenge_method"] == "S256":
                    computed = base64.urlsafe_b64encode(
                        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                else:
                    computed = verifier
                if computed != grant["code_challenge"]:
                    return oauth_error(400, "invalid_grant", "Invalid code verifier.")
            gmail.ensure_mailbox(state, grant["email"])
            body = self._new_access_token(state, client_id, grant["email"], grant["scopes"],
                                          settings)
            grant_key = f"{client_id} {grant['email']}"
            previous = state["grants"].get(grant_key, {"scopes": [], "offline": False})
            state["grants"][grant_key] = {
                "scopes": grant["scopes"], "offline": previous["offline"] or grant["offline"]}
            if grant["offline"] and grant["first_offline"]:
                refresh = Store.token("1//0sbx")
                state["refresh_tokens"][refresh] = {
                    "client_id": client_id, "email": grant["email"], "scopes": grant["scopes"],
                    "revoked": False, "created": time.time()}
                body["refresh_token"] = refresh
            # forget spent codes after a while
            for old in [c for c, g in state["codes"].items() if g["expires"] < time.time() - 3600]:
                del state["codes"][old]
        return Response(200, body, headers=[("Cache-Control", "no-store"),
                                            ("Pragma", "no-cache")])

    def _token_from_refresh(self, request: Request, client_id: str, settings: dict) -> Response:
        refresh = request.field("refresh_token")
        if not refresh:
            return oauth_error(400, "invalid_request", "Missing required parameter: "
                               "refresh_token")
        with self.store.transaction() as state:
            record = state["refresh_tokens"].get(refresh)
            if record is None or record["client_id"] != client_id:
                return oauth_error(400, "invalid_grant", "Bad Request")
            mailbox = record["email"]
            slow = faultlib.take(state, ("slow",), "token", mailbox)
            fault = faultlib.take(state, ("invalid_grant",), "token", mailbox)
            other = faultlib.take(state, ("server_error",), "token", mailbox)
        if slow:
            time.sleep(slow["delay"])
        if other:
            return oauth_error(other["status"], "internal_failure", "Backend Error")
        if fault or record["revoked"]:
            return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        scopes = record["scopes"]
        wanted = (request.field("scope") or "").split()
        if wanted:
            if any(s not in record["scopes"] for s in wanted):
                return oauth_error(400, "invalid_scope",
                                   "Some requested scopes were invalid or not granted.")
            scopes = wanted
        with self.store.transaction() as state:
            body = self._new_access_token(state, client_id, mailbox, scopes, settings)
            now = time.time()
            for old in [t for t, r in state["access_tokens"].items() if r["expires"] < now]:
                del state["access_tokens"][old]
        return Response(200, body, headers=[("Cache-Control", "no-store")])

    def revoke(self, request: Request) -> Response:
        token = request.param("token")
        if not token:
            return oauth_error(400, "invalid_request", "Missing required parameter: token")
        with self.store.transaction() as state:
            record = state["refresh_tokens"].get(token) or state["access_tokens"].get(token)
            if record is None or record.get("revoked"):
                return oauth_error(400, "invalid_token", "Token expired or revoked")
            _revoke_grant(state, record["client_id"], record["email"])
        return Response(200, b"{}")

    # -- Gmail API ---------------------------------------------------------------------------
    def _gmail_auth(self, request: Request, user_id: str, op: str, scopes: set[str],
                    ) -> tuple[str | None, Response | None]:
        header = request.header("Authorization")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        state = self.store.read()
        record = state["access_tokens"].get(token) if token else None
        if record is None or record["expires"] < time.time() or record.get("revoked"):
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
        with self.quota_lock:
            window = [(t, u) for t, u in self.quota.get(mailbox, []) if t > now - 60]
            if sum(u for _, u in window) + units > limit:
                self.quota[mailbox] = window
                return False
            window.append((now, units))
            self.quota[mailbox] = window
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
            raise _BadRequest("Invalid pageToken or maxResults") from None
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
        except _BadRequest as exc:
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
        except _BadRequest as exc:
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
                     in _split_multipart(request.content_type, request.body)]
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
        except _BadRequest as exc:
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

    # -- control endpoints -----------------------------------------------------------------
    def _delivered_notice(self, state: dict, request: Request) -> str:
        """The confirmation of the Deliver (or reply) that redirected here, read back from
        the mailbox: what landed, and whether a push tells the helpdesk."""
        box = state["mailboxes"].get((request.arg("mailbox") or "").lower())
        rec = box["messages"].get(request.arg("delivered") or "") if box else None
        if rec is None:
            return ""
        parsed = gmail.parse(self.store.get_raw(rec["blob"]))
        answering = str(parsed.get("In-Reply-To", "") or "")
        what = (f"a reply to {html.escape(answering)}" if answering else "a new email")
        watch = box.get("watch")
        push = ("The helpdesk watches this mailbox: a push tells it now."
                if watch and watch["expiration"] >= gmail.now_ms() else
                "Nobody watches this mailbox, so no push is sent: connect it in the helpdesk "
                "first (it is not fetched until then).")
        return (f"<div class='card' id='delivered'><p><strong>Delivered</strong> {what} "
                f"into the INBOX of {html.escape(box['email'])}: "
                f"&ldquo;{html.escape(rec['subject'])}&rdquo; from "
                f"{html.escape(rec['from'])} (id {html.escape(rec['id'])}).</p>"
                f"<p>{push}</p></div>")

    def home(self, request: Request) -> Response:
        state = self.store.read()
        notice = self._delivered_notice(state, request)
        rows = "".join(
            f"<tr><td>{html.escape(b['email'])}</td><td>{len(b['messages'])}</td>"
            f"<td>{b['history_id']}</td><td>{'yes' if b['watch'] else 'no'}</td><td>"
            "<form method='post' action='/_sandbox/revoke-all'>"
            f"<input type='hidden' name='email' value='{html.escape(b['email'], True)}'>"
            "<button>Revoke app access</button></form></td></tr>"
            for b in state["mailboxes"].values()
        ) or "<tr><td colspan=5>No mailboxes yet.</td></tr>"
        # A suggested account (the demo's mailbox) is the one a newcomer delivers to.
        suggested = {a.strip().lower() for a in self.store.settings().get("suggested_accounts")
                     or []}
        boxes = sorted(state["mailboxes"], key=lambda b: (b not in suggested, b))
        options = "".join(f"<option>{html.escape(b)}</option>" for b in boxes)
        faults = "".join(f"<li>{html.escape(json.dumps(f))}</li>" for f in state["faults"]) \
            or "<li>none</li>"
        # Newest first: the reply just sent is the one a newcomer wants to answer.
        sent = sorted(((b, m) for b in state["mailboxes"].values()
                       for m in b["messages"].values() if "SENT" in m["labelIds"]),
                      key=lambda bm: bm[1]["internalDate"], reverse=True)[:20]
        sent_rows = "".join(
            f"<tr><td>{html.escape(b['email'])}</td><td>{html.escape(m['to'])}</td>"
            f"<td>{html.escape(m['subject'])}</td><td>{m['id']}</td><td>"
            "<form method='post' action='/_sandbox/reply'>"
            f"<input type='hidden' name='mailbox' value='{html.escape(b['email'], True)}'>"
            f"<input type='hidden' name='id' value='{html.escape(m['id'], True)}'>"
            "<input name='body' value='Thanks, that answers it.' size=24 "
            "aria-label='Reply text'><button>Reply as the customer</button></form></td></tr>"
            for b, m in sent
        ) or "<tr><td colspan=5>Nothing sent yet.</td></tr>"
        body = f"""<h1>Google sandbox</h1>{notice}
<div class='card'><h2>Mailboxes</h2><table><tr><th>Address</th><th>Messages</th>
<th>historyId</th><th>Watched</th><th>Access</th></tr>{rows}</table>
<p>Revoke app access is the user removing the helpdesk's access at Google: its tokens stop
working at once (every call 401, every refresh <code>invalid_grant</code>).</p>
<form method='post' action='/_sandbox/mailboxes'><label>New mailbox
<input name='email' type='email' required></label><button>Create</button></form></div>
<div class='card'><h2>Deliver a customer email</h2>
<form method='post' action='/_sandbox/deliver' enctype='multipart/form-data'>
<label>To mailbox <select name='to'>{options}</select></label>
<label>From <input name='from' value='Customer &lt;customer@example.net&gt;' size=40></label>
<label>Subject <input name='subject' size=50></label>
<label>Body<br><textarea name='body' rows=6 cols=70></textarea></label>
<label>Attachment <input type='file' name='attachment'></label>
<label>…or a whole .eml file <input type='file' name='eml' accept='.eml,message/rfc822'>
</label><button class='primary'>Deliver</button></form></div>
<div class='card'><h2>Sent by the helpdesk</h2>
<p>Reply as the customer: the answer goes into the mailbox's INBOX the way Deliver does,
with In-Reply-To and References naming the sent message, so it threads into its ticket.</p>
<table><tr><th>Mailbox</th><th>To</th><th>Subject</th><th>id</th><th></th></tr>{sent_rows}
</table></div>
<div class='card'><h2>Active faults</h2><ul>{faults}</ul>
<p>Set them with <code>POST /_sandbox/faults</code> or
<code>python -m sandbox fault add KIND</code>.</p></div>"""
        return html_page("Google sandbox", body)

    def _is_form(self, request: Request) -> bool:
        return not request.content_type.startswith("application/json")

    def sb_mailboxes(self, request: Request) -> Response:
        state = self.store.read()
        return Response(200, {"mailboxes": [
            {"email": b["email"], "historyId": str(b["history_id"]),
             "messagesTotal": len(b["messages"]), "watch": b["watch"]}
            for b in state["mailboxes"].values()]})

    def sb_create_mailbox(self, request: Request) -> Response:
        data = request.json() if not self._is_form(request) else {"email": request.field("email")}
        address = (data.get("email") or "").strip().lower()
        if "@" not in address:
            return google_error(400, "email required", "invalidArgument")
        with self.store.transaction() as state:
            box = gmail.ensure_mailbox(state, address)
            out = {"email": box["email"], "historyId": str(box["history_id"])}
        if self._is_form(request):
            return Response(302, b"", "text/html", headers=[("Location", "/_sandbox/")])
        return Response(200, out)

    def sb_deliver(self, request: Request) -> Response:
        if self._is_form(request):
            eml = request.field("eml")
            attachment = request.field("attachment")
            spec = {"to": request.field("to"), "from": request.field("from"),
                    "subject": request.field("subject") or "", "body": request.field("body") or ""}
            if isinstance(eml, tuple) and eml[1]:
                spec["eml_bytes"] = eml[1]
            if isinstance(attachment, tuple) and attachment[1]:
                spec["attachments_raw"] = [attachment]
        else:
            spec = request.json()
        try:
            result = deliver(self.store, spec)
        except _BadRequest as exc:
            return google_error(400, str(exc), "invalidArgument")
        self.worker.wake.set()
        if self._is_form(request):
            return self._delivered_redirect(result)
        return Response(200, result)

    @staticmethod
    def _delivered_redirect(result: dict) -> Response:
        """Back to the control page, which confirms the delivery it is named."""
        query = urllib.parse.urlencode({"delivered": result["id"],
                                        "mailbox": result["mailbox"]})
        return Response(302, b"", "text/html",
                        headers=[("Location", f"/_sandbox/?{query}#delivered")])

    def sb_reply(self, request: Request) -> Response:
        """The customer answers a message the helpdesk sent (form or JSON: ``mailbox``,
        ``id`` of the sent message, optional ``body``): delivered like Deliver does, with
        the sent message's Message-ID as In-Reply-To and at the end of References."""
        data = request.json() if not self._is_form(request) else {
            k: request.field(k) for k in ("mailbox", "id", "body")}
        try:
            result = customer_reply(self.store, (data.get("mailbox") or "").strip().lower(),
                                    data.get("id") or "", data.get("body") or "")
        except _BadRequest as exc:
            return google_error(400, str(exc), "invalidArgument")
        except KeyError:
            return google_error(404, "Requested entity was not found.", "notFound")
        self.worker.wake.set()
        if self._is_form(request):
            return self._delivered_redirect(result)
        return Response(200, result)

    def _messages(self, request: Request, sent_only: bool) -> Response:
        state = self.store.read()
        wanted = (request.arg("mailbox") or "").lower()
        out = []
        for box in state["mailboxes"].values():
            if wanted and box["email"] != wanted:
                continue
            for gid in box["order"]:
                m = box["messages"][gid]
                if sent_only and "SENT" not in m["labelIds"]:
                    continue
                raw = self.store.get_raw(m["blob"])
                parsed = gmail.parse(raw)
                out.append({
                    "mailbox": box["email"], "id": m["id"], "threadId": m["threadId"],
                    "labelIds": m["labelIds"], "historyId": str(m["historyId"]),
                    "messageId": m["messageIdHeader"], "subject": m["subject"],
                    "from": m["from"], "to": m["to"],
                    "inReplyTo": str(parsed.get("In-Reply-To", "") or ""),
                    "references": str(parsed.get("References", "") or ""),
                    "raw": base64.b64encode(raw).decode("ascii"),
                })
        return Response(200, {"messages": out})

    def sb_sent(self, request: Request) -> Response:
        return self._messages(request, True)

    def sb_messages(self, request: Request) -> Response:
        return self._messages(request, False)

    def sb_state(self, request: Request) -> Response:
        state = self.store.read()
        for box in state["mailboxes"].values():
            box["messages"] = {k: {kk: vv for kk, vv in v.items() if kk != "blob"}
                               for k, v in box["messages"].items()}
        return Response(200, state)

    def sb_reset(self, request: Request) -> Response:
        data = request.json() if request.body else {}
        self.store.reset(settings=bool(data.get("settings")))
        with self.quota_lock:
            self.quota.clear()
        self.worker.pending.clear()
        self.worker.held.clear()
        return Response(200, {"reset": True})

    def sb_settings(self, request: Request) -> Response:
        return Response(200, self.store.update_settings(request.json()))

    def sb_clients(self, request: Request) -> Response:
        data = request.json()
        cid = data.get("client_id")
        if not cid:
            return google_error(400, "client_id required", "invalidArgument")
        self.store.update_settings({"clients": {cid: {
            "client_secret": data.get("client_secret"),
            "redirect_uris": data.get("redirect_uris", [])}}})
        return Response(200, self.store.settings()["clients"][cid])

    def sb_faults_list(self, request: Request) -> Response:
        return Response(200, {"faults": self.store.read()["faults"],
                              "kinds": sorted(faultlib.KINDS)})

    def sb_faults_add(self, request: Request) -> Response:
        data = request.json()
        specs = data if isinstance(data, list) else data.get("faults", [data])
        try:
            with self.store.transaction() as state:
                added = [faultlib.add_fault(state, spec) for spec in specs]
        except faultlib.FaultError as exc:
            return google_error(400, str(exc), "invalidArgument")
        return Response(200, {"faults": added})

    def sb_faults_clear(self, request: Request) -> Response:
        data = request.json() if request.body else {}
        with self.store.transaction() as state:
            removed = faultlib.clear_faults(state, data.get("id") or request.arg("id"),
                                            data.get("kind") or request.arg("kind"))
        return Response(200, {"cleared": removed})

    def sb_pushes(self, request: Request) -> Response:
        return Response(200, {"pushes": self.store.read()["pushes"]})

    def sb_revoke_all(self, request: Request) -> Response:
        form = self._is_form(request)
        address = ((request.field("email") if form else request.json().get("email"))
                   or "").strip().lower()
        with self.store.transaction() as state:
            clients = {r["client_id"] for r in state["refresh_tokens"].values()
                       if r["email"] == address}
            for cid in clients:
                _revoke_grant(state, cid, address)
        if form:
            return Response(302, b"", "text/html", headers=[("Location", "/_sandbox/")])
        return Response(200, {"revoked_clients": sorted(clients)})

    def sb_expire_access_tokens(self, request: Request) -> Response:
        """Google ends a mailbox's access tokens before the expiry it announced (as it may:
        the client must treat a 401 as "refresh and retry"); refresh tokens stay valid."""
        address = (request.json().get("email") or "").lower()
        ended = 0
        with self.store.transaction() as state:
            for record in state["access_tokens"].values():
                if record["email"] == address and record["expires"] >= time.time():
                    record["expires"] = time.time() - 1
                    ended += 1
        return Response(200, {"expired": ended})

    def sb_expire_history(self, request: Request) -> Response:
        address = (request.json().get("email") or "").lower()
        with self.store.transaction() as state:
            box = state["mailboxes"].get(address)
            if box is None:
                return google_error(404, "no such mailbox", "notFound")
            gmail.expire_history(box)
        return Response(200, {"historyFloor": str(box["history_floor"])})

    def sb_requests(self, request: Request) -> Response:
        return Response(200, {"requests": list(self.requests_log)})


class _BadRequest(ValueError):
    pass


def _revoke_grant(state: dict, client_id: str, email_address: str) -> None:
    for bucket in ("refresh_tokens", "access_tokens"):
        for record in state[bucket].values():
            if record["client_id"] == client_id and record["email"] == email_address:
                record["revoked"] = True
    state["grants"].pop(f"{client_id} {email_address}", None)


def finalize_outgoing(raw: bytes, mailbox: str) -> tuple[bytes, list[str]]:
    """Add what Gmail adds to a sent message (From, Date, Message-ID if missing), keeping a
    client-supplied Message-ID; return the bytes and the lower-cased recipient addresses."""
    msg = gmail.parse(raw)
    recipients = [addr.lower() for _, addr in email.utils.getaddresses(
        [str(v) for h in ("To", "Cc", "Bcc") for v in msg.get_all(h, [])]) if addr]
    if not recipients:
        raise _BadRequest("Recipient address required")
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


def build_message(spec: dict) -> bytes:
    msg = EmailMessage()
    msg["From"] = spec.get("from") or "Customer <customer@example.net>"
    msg["To"] = spec["to"]
    msg["Subject"] = spec.get("subject") or ""
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = spec.get("message_id") or email.utils.make_msgid(domain="example.net")
    for name, value in (spec.get("headers") or {}).items():
        if name.lower() in ("from", "to", "subject", "date", "message-id"):
            del msg[name]  # the spec's own value replaces the default
        msg[name] = value
    msg.set_content(spec.get("body") or "")
    if spec.get("html"):
        msg.add_alternative(spec["html"], subtype="html")
    attachments = list(spec.get("attachments_raw") or [])
    for att in spec.get("attachments") or []:
        attachments.append((att["filename"], base64.b64decode(att["data_base64"]),
                            att.get("content_type") or "application/octet-stream"))
    for filename, data, ctype in attachments:
        maintype, _, subtype = (ctype or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=filename)
    return msg.as_bytes(policy=default_policy.clone(linesep="\r\n"))


def deliver(store: Store, spec: dict) -> dict:
    """Deliver a customer email into a sandbox mailbox's INBOX (creating the mailbox)."""
    to = (spec.get("to") or "").strip().lower()
    if "@" not in to:
        raise _BadRequest("'to' must be a mailbox address")
    if spec.get("eml_bytes"):
        raw = spec["eml_bytes"]
    elif spec.get("raw"):
        raw = gmail.b64_decode_tolerant(spec["raw"])
    else:
        raw = build_message(spec)
    raw = b"Delivered-To: " + to.encode() + b"\r\n" + raw
    labels = spec.get("labelIds") or ["INBOX", "UNREAD", "CATEGORY_PERSONAL"]
    with store.transaction() as state:
        box = gmail.ensure_mailbox(state, to)
        rec = gmail.add_message(store, state, box, raw, labels)
        return {"id": rec["id"], "threadId": rec["threadId"], "labelIds": rec["labelIds"],
                "historyId": str(rec["historyId"]), "messageId": rec["messageIdHeader"],
                "mailbox": to}


def customer_reply(store: Store, mailbox: str, sent_id: str, body: str = "") -> dict:
    """Deliver the customer's answer to the message ``sent_id`` that ``mailbox`` sent:
    from its first To recipient, "Re:" its subject, In-Reply-To its Message-ID and
    References its References plus that id (RFC 5322 section 3.6.4). KeyError for an
    unknown mailbox or message; _BadRequest when it is not a sent message."""
    state = store.read()
    rec = state["mailboxes"][mailbox]["messages"][sent_id]
    if "SENT" not in rec["labelIds"]:
        raise _BadRequest("only a message the mailbox sent can be answered")
    sent = gmail.parse(store.get_raw(rec["blob"]))
    customers = email.utils.getaddresses([str(v) for v in sent.get_all("To", [])])
    customer = next(((n, a) for n, a in customers if a and a.lower() != mailbox), None)
    message_id = rec["messageIdHeader"]  # with its angle brackets
    if customer is None or not message_id:
        raise _BadRequest("the sent message has no recipient or no Message-ID to answer")
    subject = rec["subject"]
    if not re.match(r"^\s*re\s*:", subject, re.IGNORECASE):
        subject = f"Re: {subject}"
    references = str(sent.get("References", "") or "").split()
    return deliver(store, {
        "to": mailbox, "from": email.utils.formataddr(customer), "subject": subject,
        "body": body or "Thanks, that answers it.",
        "headers": {"In-Reply-To": message_id,
                    "References": " ".join([*references, message_id])},
    })
