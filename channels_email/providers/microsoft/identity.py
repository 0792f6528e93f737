"""Microsoft 365 sign-in and tokens through msal (PROVIDERS.md section 4).

- One ``msal.ConfidentialClientApplication`` per call, over a ``requests`` session that
  trusts ``MS_CA_BUNDLE`` when set (``trust_env=False``: no environment variable overrides
  it, PROVIDERS.md 7.4 G6); a new app object each time also keeps msal's own cache of
  failed token requests (G7) out of the way.
- The auth code flow is msal's: ``initiate_auth_code_flow`` with the channel's signed
  state, PKCE S256 and a nonce (msal checks it in the id_token), scopes ``Mail.Read
  Mail.Send User.Read`` only (msal adds the reserved ones itself); the flow dict is kept in
  the admin's session by ``connect``. ``response_mode`` stays ``query``: a cross-site
  ``form_post`` would arrive without the (SameSite=Lax) session cookie the flow is bound to.
- Each mailbox has its own ``SerializableTokenCache`` (the refresh token lives in it),
  stored in the connection's encrypted credentials with the account's
  ``home_account_id``; a refresh deserializes it, forces a refresh through msal
  (``tokens.py`` decided it is due, under its lock) and stores the cache again, rotated
  refresh token included.
- Errors: Microsoft asks not to branch on AADSTS numbers, so the ``error`` field decides
  and the numbers only name the case in the words shown: ``invalid_grant`` /
  ``interaction_required`` / ``consent_required`` -> ``AuthError`` (Token Expired);
  ``invalid_client`` (the secret is wrong or expired, AADSTS7000215 / 7000222) ->
  ``AuthError`` and an error log line for operators; ``temporarily_unavailable``, 5xx and
  network failures -> ``TransientError``. Tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit

import msal
import requests
from django.conf import settings
from django.urls import reverse

from channels_email.providers.base import (
    ACCESS_TOKEN_REFUSED,
    AuthError,
    PermanentError,
    ProviderError,
    RateLimited,
    SignInRefused,
    TokenSet,
    TransientError,
)

logger = logging.getLogger(__name__)

SCOPES = ("Mail.Read", "Mail.Send", "User.Read")
GRAPH_RESOURCE = "https://graph.microsoft.com/"
MICROSOFT_HOSTS = ("login.microsoftonline.com", "login.microsoftonline.us",
                   "login.partner.microsoftonline.cn", "login.microsoft.com")
ENTRA_APPS = ("Entra admin center > Identity > Applications > Enterprise applications > "
              "(this app) > Permissions")


def _now() -> datetime:
    return datetime.now(UTC)


def http_client() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = settings.MS_CA_BUNDLE or True
    return session


def _app(cache: msal.SerializableTokenCache | None = None) -> msal.ConfidentialClientApplication:
    authority = settings.MS_AUTHORITY.rstrip("/")
    host = (urlsplit(authority).hostname or "").lower()
    try:
        return msal.ConfidentialClientApplication(
            settings.MS_CLIENT_ID, client_credential=settings.MS_CLIENT_SECRET,
            authority=authority, token_cache=cache, http_client=http_client(),
            timeout=float(settings.PROVIDER_HTTP_TIMEOUT_SECONDS),
            # Only Microsoft's own hosts are known to its instance discovery.
            instance_discovery=None if host in MICROSOFT_HOSTS else False)
    except requests.RequestException as exc:
        raise TransientError(f"Microsoft sign-in unreachable: {type(exc).__name__}",
                             reason="connection") from None
    except ValueError as exc:  # a bad authority, or its discovery document unusable
        raise PermanentError(f"MS_AUTHORITY cannot be used: {exc}",
                             reason="bad_authority") from None


def _first_line(description: str) -> str:
    """Microsoft's error_description without its Trace ID / Correlation ID / Timestamp."""
    text = re.split(r"\s*(?:\r?\n|Trace ID:)", description or "", maxsplit=1)[0]
    return text.strip()[:400]


def _codes(result: dict) -> set[int]:
    codes = set()
    for code in result.get("error_codes") or []:
        try:
            codes.add(int(code))
        except (TypeError, ValueError):
            continue
    for found in re.findall(r"AADSTS(\d+)", str(result.get("error_description") or "")):
        codes.add(int(found))
    return codes


def admin_consent_url(app: msal.ConfidentialClientApplication, redirect_uri: str) -> str:
    """The tenant-wide admin-consent page of the tenant (or, for ``organizations`` /
    ``common``, of the admin who signs in there): it grants the app's configured
    permissions to every user of the organization."""
    authorize = app.authority.authorization_endpoint
    base = authorize.rsplit("/oauth2/", 1)[0]
    return base + "/v2.0/adminconsent?" + urlencode({
        "client_id": settings.MS_CLIENT_ID, "redirect_uri": redirect_uri,
        "scope": GRAPH_RESOURCE + ".default", "state": "admin_consent"})


def token_error(result: dict, *, during: str) -> ProviderError:
    """msal's error dict as one of ours, its AADSTS case named in the message."""
    error = str(result.get("error") or "")
    codes = _codes(result)
    detail = _first_line(str(result.get("error_description") or ""))
    status = result.get("status_code") if isinstance(result.get("status_code"), int) else None
    if error == "invalid_client" or codes & {7000215, 7000222, 7000218}:
        expired = 7000222 in codes
        logger.error("microsoft.client_secret_rejected during=%s aadsts=%s: %s", during,
                     sorted(codes), detail)
        return AuthError(
            ("The client secret of the Microsoft app registration has expired (AADSTS7000222)"
             if expired else "Microsoft refused the app's client secret (AADSTS7000215)")
            + ": an operator must create a new secret (Entra admin center > App "
            "registrations > this app > Certificates & secrets) and set MS_CLIENT_SECRET.",
            status=status, reason="invalid_client")
    if 700082 in codes:
        return AuthError("Microsoft ended the sign-in after 90 days without use "
                         "(AADSTS700082): reconnect the mailbox.", status=status,
                         reason="invalid_grant")
    if error == "interaction_required" or codes & {50076, 50079, 50078, 53003}:
        return AuthError(f"Microsoft needs the user to sign in again ({detail}): reconnect "
                         "the mailbox.", status=status, reason="interaction_required")
    if result.get("suberror") == "consent_required" or error == "consent_required" \
            or 65001 in codes:
        return AuthError("The organization's consent for this app was withdrawn (AADSTS65001):"
                         " an admin must grant it again, then reconnect the mailbox.",
                         status=status, reason="consent_required")
    if error == "invalid_grant":
        return AuthError(f"Microsoft no longer accepts this mailbox's sign-in ({detail}): "
                         "reconnect the mailbox.", status=status, reason="invalid_grant")
    if error in ("temporarily_unavailable", "server_error") or (status or 0) >= 500:
        return TransientError(f"Microsoft sign-in unavailable: {detail}", status=status,
                              reason=error or "server_error")
    if status == 429:
        return RateLimited(f"Microsoft sign-in throttled: {detail}", status=status,
                           reason=error)
    return PermanentError(f"Microsoft refused the sign-in: {error}: {detail}", status=status,
                          reason=error or "unknown")


def _client_info(value) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        try:
            return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        except (ValueError, binascii.Error):
            return {}
    return {}


def _token_set(result: dict, cache: msal.SerializableTokenCache,
               previous: dict | None = None) -> TokenSet:
    access = result.get("access_token")
    if not isinstance(access, str) or not access:
        raise PermanentError("Microsoft returned no access token", reason="malformed")
    try:
        expires_in = float(result.get("expires_in") or 3600)
    except (TypeError, ValueError):
        expires_in = 3600.0
    scope = result.get("scope") or ""
    scopes = tuple(scope.split() if isinstance(scope, str) else scope)
    claims = result.get("id_token_claims") or {}
    previous = previous or {}
    info = _client_info(result.get("client_info"))
    account = f"{info['uid']}.{info['utid']}" if info.get("uid") and info.get("utid") \
        else previous.get("account", "")
    return TokenSet(access_token=access, expires_at=_now() + timedelta(seconds=expires_in),
                    scopes=scopes, extra={
                        "token_cache": cache.serialize(), "account": account,
                        "username": str(claims.get("preferred_username")
                                        or previous.get("username") or ""),
                        "tenant_id": str(claims.get("tid") or previous.get("tenant_id")
                                         or "")})


class MicrosoftIdentity:
    """The SignIn capability of the Microsoft 365 provider."""

    def begin_sign_in(self, *, state: str, redirect_uri: str, login_hint: str = ""
                      ) -> tuple[str, dict]:
        try:
            flow = _app().initiate_auth_code_flow(
                list(SCOPES), redirect_uri=redirect_uri, state=state,
                login_hint=login_hint or None,
                prompt=None if login_hint else "select_account")
        except requests.RequestException as exc:
            raise TransientError(f"Microsoft sign-in unreachable: {type(exc).__name__}",
                                 reason="connection") from None
        return flow["auth_uri"], flow

    def complete_sign_in(self, *, flow: dict, params: dict, redirect_uri: str) -> TokenSet:
        if params.get("error"):
            raise self._refusal(params, redirect_uri)
        cache = msal.SerializableTokenCache()
        try:
            result = _app(cache).acquire_token_by_auth_code_flow(flow, params,
                                                                 scopes=list(SCOPES))
        except ValueError as exc:  # msal: the state does not match the flow it started
            raise SignInRefused("This sign-in does not belong to the one started here. "
                                "Please start again.", reason="state_mismatch") from exc
        except requests.RequestException as exc:
            raise TransientError(f"Microsoft sign-in unreachable: {type(exc).__name__}",
                                 reason="connection") from None
        if "error" in result:
            error = token_error(result, during="sign_in")
            if isinstance(error, AuthError) and error.reason == "consent_required":
                raise self._admin_consent_needed(redirect_uri, "AADSTS65001") from None
            raise error
        return _token_set(result, cache)

    def callback_notice(self, params: dict) -> str:
        if params.get("admin_consent") and not params.get("error"):
            return ("An administrator granted the helpdesk's Microsoft 365 permissions for "
                    f"the organization (tenant {str(params.get('tenant') or '')[:64]}). An "
                    "admin of the helpdesk can now connect its mailboxes: Email channels > "
                    "Add Email Account > Outlook / Microsoft 365.")
        return ""

    def _admin_consent_needed(self, redirect_uri: str, code: str) -> SignInRefused:
        try:
            url = admin_consent_url(_app(), redirect_uri)
        except ProviderError:
            url = ""
        return SignInRefused(
            f"Your organization lets only an administrator grant these permissions ({code}). "
            "An administrator of your Microsoft 365 organization must approve the helpdesk "
            "once for everyone (the link below, or Entra admin center > Enterprise "
            "applications > this app > Permissions > Grant admin consent); then connect the "
            "mailbox again.", help_url=url,
            help_label="Grant admin consent for your organization", reason="admin_consent")

    def _refusal(self, params: dict, redirect_uri: str) -> SignInRefused:
        error = str(params.get("error") or "")[:100]
        description = str(params.get("error_description") or "")
        codes = {int(c) for c in re.findall(r"AADSTS(\d+)", description)}
        if codes & {90094, 90095, 65001} or error == "consent_required":
            return self._admin_consent_needed(
                redirect_uri, "AADSTS90094" if codes & {90094, 90095} else "AADSTS65001")
        if 65004 in codes or error == "access_denied":
            return SignInRefused("The permissions were declined at Microsoft, so nothing was "
                                 "connected.", reason="access_denied", declined=True)
        if codes & {50020, 500200, 50034} or "personal" in description.lower():
            return SignInRefused(
                "That account cannot be connected here: sign in with a work or school "
                "Microsoft 365 account (a personal Outlook.com account works only if the "
                "server's MS_AUTHORITY ends in /common).", reason="wrong_account_type")
        if codes & {50011, 500113}:
            return SignInRefused(
                f"Microsoft does not know this helpdesk's address: add {redirect_uri} as a Web "
                "redirect URI of the app registration.", reason="redirect_mismatch")
        if codes & {700016}:
            return SignInRefused("The helpdesk's Microsoft app is not known in your "
                                 "organization (AADSTS700016).", reason="unknown_app")
        detail = _first_line(description) or error
        return SignInRefused(f"Microsoft did not sign you in ({detail}). Nothing was "
                             "connected.", reason=error or "error")

    def missing_scopes(self, tokens: TokenSet) -> set[str]:
        granted = {s[len(GRAPH_RESOURCE):] if s.startswith(GRAPH_RESOURCE) else s
                   for s in tokens.scopes}
        granted = {s.lower() for s in granted}
        return {s for s in SCOPES if s.lower() not in granted}

    def refresh(self, credentials: dict) -> TokenSet:
        blob = (credentials or {}).get("token_cache") or ""
        if not blob:
            raise AuthError("The connection has no Microsoft token cache",
                            reason="invalid_grant")
        cache = msal.SerializableTokenCache()
        try:
            cache.deserialize(blob)
        except ValueError:
            raise AuthError("The stored Microsoft token cache is unreadable",
                            reason="invalid_grant") from None
        app = _app(cache)
        wanted = credentials.get("account") or ""
        accounts = [a for a in app.get_accounts()
                    if not wanted or a.get("home_account_id") == wanted]
        if not accounts:
            raise AuthError("The Microsoft token cache holds no account for this mailbox",
                            reason="invalid_grant")
        try:
            result = app.acquire_token_silent_with_error(list(SCOPES), account=accounts[0],
                                                         force_refresh=True)
        except requests.RequestException as exc:
            raise TransientError(f"Microsoft sign-in unreachable: {type(exc).__name__}",
                                 reason="connection") from None
        if result is None:
            raise AuthError("Microsoft has no refresh token for this mailbox any more",
                            reason="invalid_grant")
        if "error" in result:
            error = token_error(result, during="refresh")
            if isinstance(error, AuthError) and error.reason == "consent_required":
                raise self._consent_withdrawn(app, error) from None
            raise error
        return _token_set(result, cache, previous=credentials)

    def _consent_withdrawn(self, app: msal.ConfidentialClientApplication,
                           error: AuthError) -> AuthError:
        """AADSTS65001 at refresh: the message (the connection's last error) carries the
        tenant-wide admin-consent link, as the connect flow's consent error does."""
        callback = settings.PUBLIC_BASE_URL.rstrip("/") + reverse(
            "oauth_callback", kwargs={"provider": self.name})
        url = admin_consent_url(app, callback)
        return AuthError(
            "The organization's consent for this app was withdrawn (AADSTS65001): an "
            "administrator of the Microsoft 365 organization must grant it again for "
            f"everyone at {url} (or Entra admin center > Enterprise applications > this app "
            "> Permissions > Grant admin consent), then reconnect the mailbox.",
            status=error.status, reason=error.reason)

    def revoke(self, credentials: dict) -> None:
        """Microsoft has no endpoint for an app to give up its grant: the token cache is
        dropped with the credentials, and ``disconnect_hint`` says where an admin removes
        the permissions."""
        return None

    def mailbox_address(self, credentials: dict) -> str:
        """``mail`` of ``GET /me``, else its ``userPrincipalName``."""
        token = (credentials or {}).get("access_token") or ""
        if not token:
            raise AuthError("The connection has no access token", reason="no_credentials")
        try:
            response = http_client().get(
                settings.GRAPH_BASE_URL.rstrip("/") + "/me",
                params={"$select": "mail,userPrincipalName"},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=float(settings.PROVIDER_HTTP_TIMEOUT_SECONDS))
        except requests.RequestException as exc:
            raise TransientError(f"Microsoft Graph unreachable: {type(exc).__name__}",
                                 reason="connection") from None
        if response.status_code == 401:
            raise AuthError("Graph refused the access token", status=401,
                            reason=ACCESS_TOKEN_REFUSED)
        if response.status_code != 200:
            error = TransientError if response.status_code >= 500 else PermanentError
            raise error(f"Graph /me answered {response.status_code}",
                        status=response.status_code, reason="graph_me")
        try:
            me = response.json()
        except ValueError:
            raise TransientError("Graph /me answered no JSON", reason="malformed") from None
        return str(me.get("mail") or me.get("userPrincipalName") or "").strip().lower()
