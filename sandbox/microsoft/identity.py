"""The Microsoft identity platform v2.0 (login.microsoftonline.com), as msal uses it for
the auth code flow of a confidential client (PROVIDERS.md sections 4 and 7.4).

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: ``token_endpoint`` on the https
  listener (msal refuses anything else), ``authorization_endpoint`` on the plain-http one
  when the sandbox has one (so a browser never meets a certificate warning; msal does not
  check it).
- ``GET|POST /{tenant}/oauth2/v2.0/authorize``: account picker (the tenant's Microsoft
  mailboxes; ``organizations`` / ``common`` take any tenant's), then the consent page
  listing the permissions, or "Need admin approval" in a tenant that disallows user
  consent (settings ``ms_tenants``: ``{"fabrikam": {"user_consent": false}}``) until an
  admin consented for the organization. Deny: back with ``error=access_denied``
  (AADSTS65004); "Return to the application": ``error=access_denied`` with AADSTS90094. A
  redirect URI not registered for the app: the AADSTS50011 error page, no redirect. A
  personal account (``@outlook.com`` ...) on ``organizations``: back with
  ``error=invalid_request`` and AADSTS50020 (Microsoft shows it on its page; the sandbox
  sends it back so the app's wording can be seen). ``response_mode=form_post`` answers
  with an auto-submitting form.
- ``GET|POST /{tenant}/v2.0/adminconsent``: an admin grants the app for the whole
  organization; back with ``admin_consent=True&tenant=<tid>&scope=...`` (or
  ``error=access_denied`` AADSTS65004).
- ``POST /{tenant}/oauth2/v2.0/token``: ``authorization_code`` (single use, PKCE S256 or
  plain checked, the redirect URI checked, ``client_info``, an ``id_token`` with the
  authorize request's ``nonce``) and ``refresh_token`` (a new refresh token each time; the
  old one stays valid, as Microsoft's do). Errors as Microsoft writes them: ``error``,
  ``error_description`` starting ``AADSTSnnnn:``, ``error_codes``, ``suberror``,
  ``trace_id``... AADSTS7000215 (wrong secret), AADSTS7000222 (expired secret: app setting
  ``secret_expired``), AADSTS700016 (unknown app), AADSTS70008 / 54005 (code expired /
  redeemed), AADSTS50173 (grant revoked: "Revoke app access", ``/_sandbox/revoke-all``),
  AADSTS700082 (idle 90 days: fault ``idle_refresh_token``), AADSTS50076
  (``interaction_required``: fault ``interaction_required``), AADSTS65001
  (``consent_required``: fault ``consent_required``, or the organization's consent
  withdrawn with ``POST /_sandbox/microsoft/withdraw-consent``).

Access tokens are kept in the shared ``access_tokens`` (``"provider": "microsoft"``, the
``mailbox``, the Graph ``scopes``, ``expires``) for the Graph side to check; refresh
tokens in ``refresh_tokens`` and user grants in ``grants`` (so revoking a mailbox's
access, the control endpoint Google's side has, ends Microsoft grants too).

App registrations: settings ``ms_apps`` (``{client_id: {"client_secret", "redirect_uris",
"secret_expired"}}``); with ``auto_register_clients`` an unknown app is registered at its
first authorize with the redirect URI it presents, and learns its secret at its first
token request, as Google's side does.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import time
import urllib.parse
import uuid

from .. import faults as faultlib
from .. import gmail
from ..http import Part, Request, Response, base_url, html_page, is_form, route
from ..store import Store

BRAND = "Microsoft sandbox"
GRAPH = "https://graph.microsoft.com/"
# Delegated Graph permissions the consent page knows, in Microsoft's words.
PERMISSIONS = {
    "Mail.Read": "Read your mail",
    "Mail.ReadWrite": "Read and write access to your mail",
    "Mail.ReadBasic": "Read basic mail",
    "Mail.Send": "Send mail as you",
    "User.Read": "Sign you in and read your profile",
    "offline_access": "Maintain access to data you have given it access to",
}
OIDC = {"openid", "profile", "email", "offline_access"}
PERSONAL_DOMAINS = ("outlook.com", "hotmail.com", "live.com", "msn.com")
ANY_TENANT = ("organizations", "common")
DEFAULT_TENANT = "contoso"
_AUTH_PARAMS = ("client_id", "redirect_uri", "response_type", "response_mode", "scope",
                "state", "nonce", "code_challenge", "code_challenge_method", "prompt",
                "login_hint", "domain_hint", "client_info", "claims")


def stable_uuid(text: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "sandbox:" + text))


def tenant_id(name: str) -> str:
    """A sandbox tenant's directory id (tid), stable for its name."""
    return stable_uuid("tenant:" + name)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def aad_error(status: int, error: str, code: int, text: str, suberror: str = "") -> Response:
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"error": error,
            "error_description": f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: "
                                 f"{correlation} Timestamp: {_now_iso()}",
            "error_codes": [code], "timestamp": _now_iso(), "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}"}
    if suberror:
        body["suberror"] = suberror
    return Response(status, body, headers=[("Cache-Control", "no-store")])


def tenants(settings: dict) -> dict:
    return settings.get("ms_tenants") or {}


def ensure_microsoft_mailbox(state: dict, address: str, tenant: str = "") -> dict:
    """A Microsoft 365 mailbox of ``tenant`` (created when missing; an existing mailbox
    becomes a Microsoft one): its ``oid`` and ``tid`` are stable for its address and
    tenant."""
    address = address.strip().lower()
    tenant = (tenant or DEFAULT_TENANT).strip().lower()
    box = gmail.ensure_mailbox(state, address)
    if box.get("provider") != "microsoft":
        box.update(provider="microsoft", tenant=tenant, tid=tenant_id(tenant),
                   oid=stable_uuid(address))
    return box


def graph_scopes(scopes: list[str]) -> list[str]:
    """The Graph permissions among requested scopes, short names ("Mail.Read")."""
    out = []
    for scope in scopes:
        short = scope[len(GRAPH):] if scope.startswith(GRAPH) else scope
        if short not in OIDC and short not in out:
            out.append(short)
    return out


def revoke_mailbox(state: dict, address: str) -> list[str]:
    """End every Microsoft grant of ``address`` (its refresh and access tokens refused
    from now on); the app ids whose grants ended."""
    clients = set()
    for bucket in ("refresh_tokens", "access_tokens"):
        for record in state[bucket].values():
            if record.get("provider") == "microsoft" and record.get("email") == address:
                record["revoked"] = True
                clients.add(record["client_id"])
    for cid in clients:
        state["grants"].pop(f"{cid} {address}", None)
    return sorted(clients)


class Identity(Part):
    def routes(self) -> list:
        t = r"/([^/]+)"
        return [
            ("GET", route(t + r"/v2\.0/\.well-known/openid-configuration"), self.discovery),
            ("GET", route(t + r"/oauth2/v2\.0/authorize"), self.authorize),
            ("POST", route(t + r"/oauth2/v2\.0/authorize"), self.authorize_post),
            ("GET", route(t + r"/v2\.0/adminconsent"), self.admin_consent),
            ("POST", route(t + r"/v2\.0/adminconsent"), self.admin_consent_post),
            ("POST", route(t + r"/oauth2/v2\.0/token"), self.token),
            ("GET", route(t + r"/discovery/v2\.0/keys"),
             lambda r, _t: Response(200, self.key.certs_v3())),
            ("POST", route(r"/_sandbox/microsoft/withdraw-consent"), self.sb_withdraw_consent),
            ("POST", route(r"/_sandbox/microsoft/apps"), self.sb_apps),
        ]

    # -- helpers ---------------------------------------------------------------------------
    def _urls(self, request: Request) -> tuple[str, str]:
        """(https base, browser base): the https listener's, and the plain one when the
        sandbox serves both (the browser pages stay certificate-free)."""
        here = base_url(request)
        https = self.app.https_url or here
        plain = self.app.http_url or here
        return https, plain

    def _tenant_ok(self, tenant: str) -> bool:
        return tenant in ANY_TENANT or tenant in tenants(self.store.settings()) \
            or tenant in {tenant_id(t) for t in tenants(self.store.settings())}

    def _tenant_name(self, tenant: str) -> str:
        for name in tenants(self.store.settings()):
            if tenant in (name, tenant_id(name)):
                return name
        return tenant

    def _app(self, client_id: str) -> dict | None:
        return (self.store.settings().get("ms_apps") or {}).get(client_id)

    def _page(self, title: str, body: str, status: int = 200) -> Response:
        return html_page(title, body, status, brand=BRAND)

    def _error_page(self, code: int, text: str, status: int = 400) -> Response:
        return self._page("Sign in to your account", "<div class='card'><h1>Sorry, but we're "
                          f"having trouble signing you in.</h1><p class='err'>AADSTS{code}: "
                          f"{html.escape(text)}</p></div>", status)

    @staticmethod
    def _redirect(redirect_uri: str, query: dict, response_mode: str = "") -> Response:
        if response_mode == "form_post":
            fields = "".join(f"<input type='hidden' name='{html.escape(k, True)}' "
                             f"value='{html.escape(v, True)}'>" for k, v in query.items())
            page = (f"<html><body onload='document.forms[0].submit()'><form method='post' "
                    f"action='{html.escape(redirect_uri, True)}'>{fields}<noscript><button>"
                    "Continue</button></noscript></form></body></html>")
            return Response(200, page, "text/html; charset=utf-8")
        sep = "&" if "?" in redirect_uri else "?"
        return Response(302, b"", "text/html", headers=[
            ("Location", redirect_uri + sep + urllib.parse.urlencode(query))])

    # -- discovery -------------------------------------------------------------------------
    def discovery(self, request: Request, tenant: str) -> Response:
        if not self._tenant_ok(tenant):
            return aad_error(400, "invalid_tenant", 90002,
                             f"Tenant '{tenant}' not found. Check to make sure you have the "
                             "correct tenant ID and are signing into the correct cloud.")
        https, plain = self._urls(request)
        issuer_tenant = "{tenantid}" if tenant in ANY_TENANT else tenant_id(
            self._tenant_name(tenant))
        return Response(200, {
            "token_endpoint": f"{https}/{tenant}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                      "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{https}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token",
                                         "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{https}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{https}/oidc/userinfo",
            "authorization_endpoint": f"{plain}/{tenant}/oauth2/v2.0/authorize",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{plain}/{tenant}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr",
                                 "nonce", "preferred_username", "name", "tid", "ver",
                                 "at_hash", "c_hash", "email"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        })

    # -- authorize -------------------------------------------------------------------------
    def _validate(self, tenant: str, params: dict) -> tuple[dict | None, Response | None]:
        client_id = params.get("client_id") or ""
        redirect_uri = params.get("redirect_uri") or ""
        if not self._tenant_ok(tenant):
            return None, self._error_page(90002, f"Tenant '{tenant}' not found.")
        if not client_id:
            return None, self._error_page(900144, "The request body must contain the "
                                                  "following parameter: 'client_id'.")
        app = self._app(client_id)
        settings = self.store.settings()
        if app is None and not settings.get("auto_register_clients", True):
            return None, self._error_page(
                700016, f"Application with identifier '{client_id}' was not found in the "
                "directory. This can happen if the application has not been installed by "
                "the administrator of the tenant.")
        if not redirect_uri:
            return None, self._error_page(900144, "The request body must contain the "
                                                  "following parameter: 'redirect_uri'.")
        if app is not None and redirect_uri not in app.get("redirect_uris", []):
            return None, self._error_page(
                50011, f"The redirect URI '{redirect_uri}' specified in the request does "
                f"not match the redirect URIs configured for the application '{client_id}'. "
                "Make sure the redirect URI sent in the request matches one added to your "
                "application in the Azure portal.")
        mode = params.get("response_mode") or "query"
        back = {"state": params["state"]} if params.get("state") is not None else {}

        def refuse(error: str, code: int, text: str) -> tuple[None, Response]:
            return None, self._redirect(redirect_uri, {
                "error": error, "error_description": f"AADSTS{code}: {text}", **back}, mode)

        if params.get("response_type") != "code":
            return refuse("unsupported_response_type", 700054,
                          "response_type 'code' is the only one this app may use.")
        scopes = (params.get("scope") or "").split()
        unknown = [s for s in scopes if s not in OIDC and (s[len(GRAPH):] if s.startswith(GRAPH)
                                                           else s) not in PERMISSIONS]
        if unknown or not graph_scopes(scopes):
            return refuse("invalid_scope", 70011,
                          f"The provided value for the input parameter 'scope' is not "
                          f"valid. The scope {' '.join(unknown or scopes)} is not valid.")
        challenge = params.get("code_challenge") or ""
        method = params.get("code_challenge_method") or ("plain" if challenge else "")
        if challenge and method not in ("S256", "plain"):
            return refuse("invalid_request", 501491, "Invalid size of Code_Challenge "
                          "parameter." if method else "Invalid code_challenge_method.")
        if settings.get("require_pkce") and not challenge:
            return refuse("invalid_request", 9002325, "Proof Key for Code Exchange is "
                          "required for cross-origin authorization code redemption.")
        return {"tenant": tenant, "client_id": client_id, "redirect_uri": redirect_uri,
                "scopes": scopes, "mode": mode, "back": back, "nonce": params.get("nonce"),
                "code_challenge": challenge, "code_challenge_method": method,
                "prompt": params.get("prompt") or "",
                "login_hint": (params.get("login_hint") or "").strip().lower()}, None

    def _hidden(self, params: dict) -> str:
        return "".join(
            f"<input type='hidden' name='{k}' value='{html.escape(params[k], quote=True)}'>"
            for k in _AUTH_PARAMS if params.get(k) is not None)

    def _accounts(self, tenant: str) -> list[str]:
        boxes = self.store.read()["mailboxes"].values()
        name = self._tenant_name(tenant)
        return sorted(b["email"] for b in boxes if b.get("provider") == "microsoft"
                      and (tenant in ANY_TENANT or b.get("tenant") == name))

    def authorize(self, request: Request, tenant: str) -> Response:
        params = {k: request.arg(k) for k in _AUTH_PARAMS}
        auth, error = self._validate(tenant, params)
        if error:
            return error
        hint = auth["login_hint"]
        if hint and hint in self._accounts(tenant) and auth["prompt"] != "select_account":
            return self._after_sign_in(params, auth, hint)
        return self._picker(params, tenant)

    def _picker(self, params: dict, tenant: str, problem: str = "") -> Response:
        hidden = self._hidden(params)
        items = "".join(
            f"<form method='post'>{hidden}<input type='hidden' name='step' value='account'>"
            f"<button name='email' value='{html.escape(a, True)}'>{html.escape(a)}</button>"
            "</form>" for a in self._accounts(tenant)) or "<p>No accounts yet.</p>"
        err = f"<p class='err'>{html.escape(problem)}</p>" if problem else ""
        body = (f"<div class='card'><h1>Pick an account</h1>{err}{items}"
                f"<form method='post'>{hidden}<input type='hidden' name='step' value='account'>"
                "<label>Use another account: <input name='email' type='email' "
                "placeholder='someone@contoso.test' required></label>"
                "<button class='primary'>Next</button></form>"
                "<p><small>Accounts are the sandbox's Microsoft 365 mailboxes: create one "
                "on the sandbox page.</small></p></div>")
        return self._page("Sign in to your account", body)

    def _consented(self, state: dict, client_id: str, box: dict, wanted: list[str]) -> bool:
        org = state.get("ms_admin_consents", {}).get(f"{client_id} {box['tid']}", [])
        user = state["grants"].get(f"{client_id} {box['email']}", {}).get("scopes", [])
        return all(s in org or s in user for s in wanted)

    def _after_sign_in(self, params: dict, auth: dict, address: str) -> Response:
        """Signed in as ``address``: consent (or "Need admin approval"), or straight back
        when everything asked for was consented already."""
        state = self.store.read()
        box = state["mailboxes"][address]
        wanted = graph_scopes(auth["scopes"])
        if "consent" not in auth["prompt"] and self._consented(state, auth["client_id"], box,
                                                               wanted):
            return self._issue(auth, address)
        policy = tenants(self.store.settings()).get(box.get("tenant"), {})
        if not policy.get("user_consent", True):
            return self._admin_approval_page(params, auth, address)
        hidden = self._hidden(params)
        items = "".join(f"<li>{html.escape(PERMISSIONS.get(s, s))} <small>({html.escape(s)})"
                        "</small></li>" for s in wanted)
        body = (f"<div class='card'><p>{html.escape(address)}</p><h1>Permissions requested"
                f"</h1><p><strong>{html.escape(auth['client_id'])}</strong> (unverified) "
                f"needs permission to:</p><ul>{items}</ul>"
                f"<form method='post'>{hidden}<input type='hidden' name='step' value='consent'>"
                f"<input type='hidden' name='email' value='{html.escape(address, True)}'>"
                "<button name='decision' value='deny'>Cancel</button>"
                "<button class='primary' name='decision' value='accept'>Accept</button>"
                "</form></div>")
        return self._page("Permissions requested", body)

    def _admin_approval_page(self, params: dict, auth: dict, address: str) -> Response:
        hidden = self._hidden(params)
        body = (f"<div class='card'><p>{html.escape(address)}</p><h1>Need admin approval</h1>"
                f"<p><strong>{html.escape(auth['client_id'])}</strong> needs permission to "
                "access resources in your organization that only an admin can grant. Please "
                "ask an admin to grant permission to this app before you can use it.</p>"
                f"<form method='post'>{hidden}<input type='hidden' name='step' value='consent'>"
                f"<input type='hidden' name='email' value='{html.escape(address, True)}'>"
                "<button name='decision' value='return'>Return to the application without "
                "granting consent</button></form></div>")
        return self._page("Need admin approval", body)

    def authorize_post(self, request: Request, tenant: str) -> Response:
        params = {k: request.field(k) for k in _AUTH_PARAMS}
        auth, error = self._validate(tenant, params)
        if error:
            return error
        address = (request.field("email") or "").strip().lower()
        if request.field("step") == "consent" and address in self._accounts(tenant):
            return self._decide(request, auth, address)
        if address.rsplit("@", 1)[-1] in PERSONAL_DOMAINS and tenant != "common":
            return self._redirect(auth["redirect_uri"], {
                "error": "invalid_request",
                "error_description": "AADSTS50020: User account from identity provider "
                "'live.com' does not exist in tenant and cannot access the application: "
                "a personal Microsoft account cannot sign in here. Use a work or school "
                "account.", **auth["back"]}, auth["mode"])
        if address not in self._accounts(tenant):
            problem = ("This username may be incorrect. Make sure you typed it correctly. "
                       "Otherwise, contact your admin." if address else "")
            if address and tenant not in ANY_TENANT and address in self._accounts("common"):
                problem = (f"AADSTS50020: User account '{address}' from another tenant does "
                           f"not exist in tenant '{tenant}' and cannot access the application.")
            return self._picker(params, tenant, problem)
        return self._after_sign_in(params, auth, address)

    def _decide(self, request: Request, auth: dict, address: str) -> Response:
        decision = request.field("decision")
        if decision == "accept":
            policy = tenants(self.store.settings()).get(
                self.store.read()["mailboxes"][address].get("tenant"), {})
            if policy.get("user_consent", True):
                with self.store.transaction() as state:
                    key = f"{auth['client_id']} {address}"
                    grant = state["grants"].setdefault(key, {"scopes": [], "offline": True,
                                                             "provider": "microsoft"})
                    grant["scopes"] = sorted(set(grant["scopes"])
                                             | set(graph_scopes(auth["scopes"])))
                return self._issue(auth, address)
        if decision == "return":
            text = ("AADSTS90094: The grant requires admin permission. An administrator of "
                    "the organization must grant it for all users.")
        else:
            text = "AADSTS65004: User declined to consent to access the app."
        return self._redirect(auth["redirect_uri"], {
            "error": "access_denied", "error_subcode": "cancel", "error_description": text,
            **auth["back"]}, auth["mode"])

    def _issue(self, auth: dict, address: str) -> Response:
        code = "0.A" + Store.token("SbxC")
        ttl = float(self.store.settings().get("code_ttl", 600))
        with self.store.transaction() as state:
            state.setdefault("ms_codes", {})[code] = {
                "client_id": auth["client_id"], "redirect_uri": auth["redirect_uri"],
                "email": address, "scopes": auth["scopes"], "nonce": auth["nonce"],
                "tenant": auth["tenant"], "code_challenge": auth["code_challenge"],
                "code_challenge_method": auth["code_challenge_method"],
                "expires": time.time() + ttl, "used": False}
            if auth["client_id"] not in (self.store.settings().get("ms_apps") or {}):
                self.store.update_settings({"ms_apps": {auth["client_id"]: {
                    "client_secret": None, "redirect_uris": [auth["redirect_uri"]]}}})
        return self._redirect(auth["redirect_uri"], {
            "code": code, **auth["back"], "session_state": str(uuid.uuid4())}, auth["mode"])

    # -- admin consent ---------------------------------------------------------------------
    def admin_consent(self, request: Request, tenant: str) -> Response:
        params = {k: request.arg(k) for k in ("client_id", "redirect_uri", "scope", "state")}
        return self._admin_consent(params, tenant, None, None)

    def admin_consent_post(self, request: Request, tenant: str) -> Response:
        params = {k: request.field(k) for k in ("client_id", "redirect_uri", "scope", "state")}
        return self._admin_consent(params, tenant, (request.field("email") or "").lower(),
                                   request.field("decision"))

    def _admin_consent(self, params: dict, tenant: str, address: str | None,
                       decision: str | None) -> Response:
        client_id, redirect_uri = params.get("client_id") or "", params.get("redirect_uri") or ""
        if not self._tenant_ok(tenant) or not client_id or not redirect_uri:
            return self._error_page(900144, "The request must name a known tenant, "
                                            "'client_id' and 'redirect_uri'.")
        app = self._app(client_id)
        if app is not None and redirect_uri not in app.get("redirect_uris", []):
            return self._error_page(50011, f"The redirect URI '{redirect_uri}' specified in "
                                    "the request does not match the redirect URIs configured "
                                    f"for the application '{client_id}'.")
        back = {"state": params["state"]} if params.get("state") is not None else {}
        hidden = "".join(f"<input type='hidden' name='{k}' value='{html.escape(v, True)}'>"
                         for k, v in params.items() if v is not None)
        accounts = self._accounts(tenant)
        if address not in accounts:
            items = "".join(
                f"<form method='post'>{hidden}<button name='email' "
                f"value='{html.escape(a, True)}'>{html.escape(a)}</button></form>"
                for a in accounts) or "<p>No accounts yet.</p>"
            return self._page("Sign in to your account", f"<div class='card'><h1>Pick an "
                              f"administrator account</h1>{items}</div>")
        box = self.store.read()["mailboxes"][address]
        if decision is None:
            scope = params.get("scope") or GRAPH + ".default"
            body = (f"<div class='card'><p>{html.escape(address)}</p><h1>Permissions requested"
                    f"</h1><p>Accept for your organization ({html.escape(box['tenant'])}): "
                    f"<strong>{html.escape(client_id)}</strong> will be able to "
                    f"({html.escape(scope)}):</p><ul>"
                    + "".join(f"<li>{html.escape(v)}</li>" for k, v in PERMISSIONS.items()
                              if k in ("Mail.Read", "Mail.Send", "User.Read"))
                    + f"</ul><form method='post'>{hidden}"
                    f"<input type='hidden' name='email' value='{html.escape(address, True)}'>"
                    "<button name='decision' value='cancel'>Cancel</button><button "
                    "class='primary' name='decision' value='accept'>Accept</button></form></div>")
            return self._page("Permissions requested", body)
        if decision != "accept":
            return self._redirect(redirect_uri, {
                "error": "access_denied", "error_description": "AADSTS65004: User declined to "
                "consent to access the app.", **back})
        with self.store.transaction() as state:
            state.setdefault("ms_admin_consents", {})[f"{client_id} {box['tid']}"] = sorted(
                k for k in PERMISSIONS if k != "offline_access")
        return self._redirect(redirect_uri, {"admin_consent": "True", "tenant": box["tid"],
                                             "scope": GRAPH + ".default", **back})

    # -- token -----------------------------------------------------------------------------
    def _client(self, request: Request) -> tuple[str, str | None]:
        header = request.header("Authorization")
        if header.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(header[6:].strip()).decode().partition(":")
                return urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)
            except (ValueError, UnicodeDecodeError):
                return "", None
        return request.field("client_id") or "", request.field("client_secret")

    def token(self, request: Request, tenant: str) -> Response:
        if not self._tenant_ok(tenant):
            return aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        client_id, secret = self._client(request)
        app = self._app(client_id)
        if not client_id or app is None:
            return aad_error(400, "unauthorized_client", 700016,
                             f"Application with identifier '{client_id}' was not found in "
                             "the directory.")
        if app.get("client_secret") is None and secret:
            self.store.update_settings({"ms_apps": {client_id: {**app,
                                                                "client_secret": secret}}})
        elif not secret:
            return aad_error(401, "invalid_client", 7000218, "The request body must contain "
                             "the following parameter: 'client_assertion' or "
                             "'client_secret'.")
        elif app.get("client_secret") != secret:
            return aad_error(401, "invalid_client", 7000215,
                             "Invalid client secret provided. Ensure the secret being sent "
                             "in the request is the client secret value, not the client "
                             f"secret ID, for a secret added to app '{client_id}'.")
        if app.get("secret_expired"):
            return aad_error(401, "invalid_client", 7000222,
                             f"The provided client secret keys for app '{client_id}' are "
                             "expired. Visit the Azure portal to create new keys for your "
                             "app: https://aka.ms/NewClientSecret, or consider using "
                             "certificate credentials for added security.")
        grant_type = request.field("grant_type")
        if grant_type == "authorization_code":
            return self._from_code(request, client_id)
        if grant_type == "refresh_token":
            return self._from_refresh(request, client_id)
        return aad_error(400, "unsupported_grant_type", 70003,
                         f"The app requested an unsupported grant type '{grant_type}'.")

    def _tokens(self, request: Request, state: dict, client_id: str, box: dict,
                scopes: list[str], nonce: str | None) -> dict:
        https, _ = self._urls(request)
        ttl = int(self.store.settings().get("ms_access_token_ttl")
                  or self.store.settings().get("access_token_ttl", 3599))
        now = int(time.time())
        graph = graph_scopes(scopes)
        access = self.key.sign_jwt({
            "aud": "00000003-0000-0000-c000-000000000000", "iss": f"{https}/{box['tid']}/",
            "iat": now, "nbf": now, "exp": now + ttl, "oid": box["oid"], "tid": box["tid"],
            "scp": " ".join(graph), "upn": box["email"], "appid": client_id,
            "uti": Store.token("")[:22]})
        state["access_tokens"][access] = {
            "provider": "microsoft", "client_id": client_id, "email": box["email"],
            "mailbox": box["email"], "scopes": graph, "expires": time.time() + ttl}
        refresh = "0.A" + Store.token("SbxR")
        state["refresh_tokens"][refresh] = {
            "provider": "microsoft", "client_id": client_id, "email": box["email"],
            "scopes": graph, "revoked": False, "created": time.time(),
            "tenant": box["tenant"]}
        claims = {"aud": client_id, "iss": f"{https}/{box['tid']}/v2.0", "iat": now,
                  "nbf": now, "exp": now + 3600, "name": box["email"].split("@")[0],
                  "oid": box["oid"], "preferred_username": box["email"],
                  "sub": _b64url(hashlib.sha256((client_id + box["oid"]).encode()).digest()),
                  "tid": box["tid"], "ver": "2.0"}
        if nonce:
            claims["nonce"] = nonce
        for old in [t for t, r in state["access_tokens"].items() if r["expires"] < now - 60]:
            del state["access_tokens"][old]
        return {"token_type": "Bearer", "scope": " ".join(graph + [
            s for s in ("openid", "profile", "email") if s in scopes or s == "openid"]),
            "expires_in": ttl, "ext_expires_in": ttl, "access_token": access,
            "refresh_token": refresh, "id_token": self.key.sign_jwt(claims),
            "client_info": _b64url(json.dumps({"uid": box["oid"],
                                               "utid": box["tid"]}).encode())}

    def _from_code(self, request: Request, client_id: str) -> Response:
        code = request.field("code") or ""
        with self.store.transaction() as state:
            grant = state.setdefault("ms_codes", {}).get(code)
            if grant is None or grant["client_id"] != client_id:
                return aad_error(400, "invalid_grant", 9002313,
                                 "Invalid request. Request is malformed or invalid.")
            if grant["used"]:
                return aad_error(400, "invalid_grant", 54005,
                                 "OAuth2 Authorization code was already redeemed, please "
                                 "retry with a new valid code or use an existing refresh "
                                 "token.")
            if grant["expires"] < time.time():
                return aad_error(400, "invalid_grant", 70008,
                                 "The provided authorization code or refresh token has "
                                 "expired due to inactivity. Send a new interactive "
                                 "authorization request for this user and resource.")
            grant["used"] = True
            if request.field("redirect_uri") != grant["redirect_uri"]:
                return aad_error(400, "invalid_grant", 500117,
                                 "The reply uri specified in the request does not match the "
                                 "reply uri used in the authorization request.")
            if grant["code_challenge"]:
                verifier = request.field("code_verifier") or ""
                computed = _b64url(hashlib.sha256(verifier.encode()).digest()) \
                    if grant["code_challenge_method"] == "S256" else verifier
                if not verifier or computed != grant["code_challenge"]:
                    return aad_error(400, "invalid_grant", 501481, "The Code_Verifier does "
                                     "not match the code_challenge supplied in the "
                                     "authorization request.")
            box = state["mailboxes"].get(grant["email"])
            if box is None:
                return aad_error(400, "invalid_grant", 50034, "The user account does not "
                                 "exist in the directory.")
            fault = faultlib.take(state, ("consent_required",), "ms_token", grant["email"])
            if fault:
                return self._consent_required(client_id)
            body = self._tokens(request, state, client_id, box, grant["scopes"],
                                grant["nonce"])
        return Response(200, body, headers=[("Cache-Control", "no-store")])

    @staticmethod
    def _consent_required(client_id: str) -> Response:
        return aad_error(400, "invalid_grant", 65001,
                         "The user or administrator has not consented to use the "
                         f"application with ID '{client_id}'. Send an interactive "
                         "authorization request for this user and resource.",
                         suberror="consent_required")

    def _from_refresh(self, request: Request, client_id: str) -> Response:
        refresh = request.field("refresh_token") or ""
        with self.store.transaction() as state:
            record = state["refresh_tokens"].get(refresh)
            if record is None or record.get("provider") != "microsoft" \
                    or record["client_id"] != client_id:
                return aad_error(400, "invalid_grant", 9002313,
                                 "Invalid request. Request is malformed or invalid.")
            mailbox = record["email"]
            slow = faultlib.take(state, ("slow",), "ms_token", mailbox)
            fault = faultlib.take(state, ("invalid_grant", "idle_refresh_token",
                                          "interaction_required", "consent_required",
                                          "server_error"), "ms_token", mailbox)
        if slow:
            time.sleep(slow["delay"])
        kind = fault["kind"] if fault else ""
        if kind == "server_error":
            return aad_error(fault["status"] if fault["status"] >= 500 else 503,
                             "temporarily_unavailable", 50196,
                             "The server is temporarily unavailable.")
        if record["revoked"] or kind == "invalid_grant":
            issued = dt.datetime.fromtimestamp(record["created"], dt.UTC).isoformat()
            return aad_error(400, "invalid_grant", 50173,
                             "The provided grant has expired due to it being revoked, a "
                             "fresh auth token is needed. The user might have changed or "
                             f"reset their password. The grant was issued on '{issued}'.")
        if kind == "idle_refresh_token":
            return aad_error(400, "invalid_grant", 700082,
                             "The refresh token has expired due to inactivity. The token "
                             "was issued on 2026-01-01T00:00:00Z and was inactive for "
                             "90.00:00:00.")
        if kind == "interaction_required":
            return aad_error(400, "interaction_required", 50076,
                             "Due to a configuration change made by your administrator, or "
                             "because you moved to a new location, you must use multi-factor "
                             "authentication to access the resource.",
                             suberror="basic_action")
        state = self.store.read()
        box = state["mailboxes"].get(mailbox)
        wanted = graph_scopes((request.field("scope") or "").split()) or record["scopes"]
        if kind == "consent_required" or box is None or not self._consented(
                state, client_id, box, wanted):
            return self._consent_required(client_id)
        with self.store.transaction() as state:
            body = self._tokens(request, state, client_id, state["mailboxes"][mailbox],
                                wanted, None)
        return Response(200, body, headers=[("Cache-Control", "no-store")])

    # -- control ---------------------------------------------------------------------------
    def sb_withdraw_consent(self, request: Request) -> Response:
        """An admin removes the app's permissions for the organization (Enterprise
        applications > Permissions) and every user's own consent: refresh then answers
        AADSTS65001."""
        data = request.json() if not is_form(request) else {
            "tenant": request.field("tenant")}
        name = self._tenant_name((data.get("tenant") or "").lower())
        tid = tenant_id(name)
        with self.store.transaction() as state:
            consents = state.setdefault("ms_admin_consents", {})
            removed = [k for k in consents if k.endswith(" " + tid)]
            for key in removed:
                del consents[key]
            for box in state["mailboxes"].values():
                if box.get("tenant") == name:
                    for key in [k for k in state["grants"] if k.endswith(" " + box["email"])
                                and state["grants"][k].get("provider") == "microsoft"]:
                        del state["grants"][key]
        return Response(200, {"tenant": name, "admin_consents_removed": len(removed)})

    def sb_apps(self, request: Request) -> Response:
        data = request.json()
        cid = data.get("client_id")
        if not cid:
            return aad_error(400, "invalid_request", 900144, "client_id required")
        app = {"client_secret": data.get("client_secret"),
               "redirect_uris": data.get("redirect_uris", []),
               "secret_expired": bool(data.get("secret_expired"))}
        self.store.update_settings({"ms_apps": {cid: app}})
        return Response(200, self.store.settings()["ms_apps"][cid])


def routes(app) -> list:
    return Identity(app).routes()
