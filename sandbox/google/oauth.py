"""Google OAuth 2.0: the authorization pages, token and revoke endpoints, discovery, certs."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import time
import urllib.parse

from .. import faults as faultlib
from .. import gmail
from ..http import Part, Request, Response, base_url, html_page, oauth_error, route
from ..store import Store

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


class GoogleOAuth(Part):
    def routes(self) -> list:
        return [
            ("GET", route(r"/o/oauth2/v2/auth|/o/oauth2/auth"), self.authorize),
            ("POST", route(r"/o/oauth2/v2/auth|/o/oauth2/auth"), self.authorize_post),
            ("POST", route(r"/token|/o/oauth2/token"), self.token),
            ("POST", route(r"/revoke|/o/oauth2/revoke"), self.revoke),
            ("GET", route(r"/revoke|/o/oauth2/revoke"), self.revoke),
            ("GET", route(r"/oauth2/v1/certs"), lambda r: Response(200, self.key.certs_v1())),
            ("GET", route(r"/oauth2/v3/certs"), lambda r: Response(200, self.key.certs_v3())),
            ("GET", route(r"/\.well-known/openid-configuration"), self.discovery),
        ]

    def discovery(self, request: Request) -> Response:
        base = base_url(request)
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
        boxes = [a for a, b in sorted(self.store.read()["mailboxes"].items())
                 if a not in suggested and b.get("provider", "google") == "google"]
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
            if record is None or record["client_id"] != client_id \
                    or record.get("provider") == "microsoft":
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
            revoke_grant(state, record["client_id"], record["email"])
        return Response(200, b"{}")


def revoke_grant(state: dict, client_id: str, email_address: str) -> None:
    for bucket in ("refresh_tokens", "access_tokens"):
        for record in state[bucket].values():
            if record["client_id"] == client_id and record["email"] == email_address:
                record["revoked"] = True
    state["grants"].pop(f"{client_id} {email_address}", None)
