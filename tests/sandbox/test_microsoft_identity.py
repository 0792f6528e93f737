"""The sandbox's Microsoft identity platform, driven by the real msal library over the
sandbox's TLS listener (its CA trusted through ``verify``, ``instance_discovery=False``),
with the browser's part played by requests on the sign-in pages."""

from __future__ import annotations

import base64
import hashlib
import json

import msal
import pytest
import requests

from tests.sandbox_support import (
    MS_CLIENT_ID,
    MS_REDIRECT_URI,
    MS_SCOPES,
    ms_app,
    ms_http_client,
    ms_mailbox,
    ms_register,
    ms_sign_in,
)


@pytest.fixture
def ms(sandbox, sandbox_https_url, sandbox_ca_file):
    ms_register(sandbox)
    ms_mailbox(sandbox, "support@contoso.test", "contoso")
    ms_mailbox(sandbox, "help@fabrikam.test", "fabrikam")
    ms_mailbox(sandbox, "admin@fabrikam.test", "fabrikam")

    class MS:
        http = sandbox
        https = sandbox_https_url
        ca = sandbox_ca_file

        def app(self, **kw):
            return ms_app(sandbox_https_url, sandbox_ca_file, **kw)

        def me(self, token: str) -> requests.Response:
            return ms_http_client(sandbox_ca_file).get(
                sandbox_https_url + "/v1.0/me", headers={"Authorization": f"Bearer {token}"},
                timeout=5)

        def connect(self, email="support@contoso.test", **kw):
            app = self.app(**kw)
            flow = app.initiate_auth_code_flow(MS_SCOPES, redirect_uri=MS_REDIRECT_URI,
                                               prompt="select_account")
            return app, flow, ms_sign_in(flow["auth_uri"], email)

    return MS()


def _claims(jwt: str) -> dict:
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_auth_code_flow_with_pkce_and_nonce_then_cache_and_rotation(ms):
    cache = msal.SerializableTokenCache()
    app, flow, answer = ms.connect(cache=cache)
    # The browser never sees the https listener: the authorize page is on plain http.
    assert flow["auth_uri"].startswith(ms.http + "/organizations/oauth2/v2.0/authorize?")
    assert answer["state"] == flow["state"] and answer["code"]
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert "access_token" in result, result
    # msal checked the id_token's nonce (the hash of its secret one) and read client_info.
    assert result["id_token_claims"]["nonce"] == hashlib.sha256(
        flow["nonce"].encode()).hexdigest()
    assert result["id_token_claims"]["preferred_username"] == "support@contoso.test"
    assert set(result["scope"].split()) >= set(MS_SCOPES)
    me = ms.me(result["access_token"])
    assert me.status_code == 200 and me.json()["mail"] == "support@contoso.test"

    # The cache, serialized and loaded in another app object, serves the token, then
    # refreshes it with a new refresh token each time.
    blob = cache.serialize()
    first_refresh = next(iter(json.loads(blob)["RefreshToken"].values()))["secret"]
    again = msal.SerializableTokenCache()
    again.deserialize(blob)
    other = ms.app(cache=again)
    account = other.get_accounts(username="support@contoso.test")[0]
    silent = other.acquire_token_silent(MS_SCOPES, account=account)
    assert silent["token_source"] == "cache"
    refreshed = other.acquire_token_silent(MS_SCOPES, account=account, force_refresh=True)
    assert refreshed["token_source"] == "identity_provider", refreshed
    assert refreshed["access_token"] != result["access_token"]
    assert again.has_state_changed
    rotated = next(iter(json.loads(again.serialize())["RefreshToken"].values()))["secret"]
    assert rotated != first_refresh
    assert ms.me(refreshed["access_token"]).status_code == 200


def test_pkce_verifier_is_checked(ms):
    app, flow, answer = ms.connect()
    tampered = {**flow, "code_verifier": flow["code_verifier"][::-1]}
    result = app.acquire_token_by_auth_code_flow(tampered, answer)
    assert result["error"] == "invalid_grant" and 501481 in result["error_codes"]
    # ...and the code is single use.
    result = ms.app().acquire_token_by_auth_code_flow(flow, answer)
    assert 54005 in result["error_codes"]


def test_a_state_from_another_flow_is_refused_by_msal(ms):
    app, flow, answer = ms.connect()
    with pytest.raises(ValueError):
        app.acquire_token_by_auth_code_flow(flow, {**answer, "state": "forged"})


def test_declined_consent_and_need_admin_approval(ms):
    app = ms.app()
    flow = app.initiate_auth_code_flow(MS_SCOPES, redirect_uri=MS_REDIRECT_URI)
    page = requests.get(flow["auth_uri"], timeout=5)
    assert "Pick an account" in page.text
    denied = ms_sign_in(flow["auth_uri"], "support@contoso.test", decision="deny")
    assert denied["error"] == "access_denied" and "AADSTS65004" in denied["error_description"]
    assert app.acquire_token_by_auth_code_flow(flow, denied)["error"] == "access_denied"

    # fabrikam lets no user consent: "Need admin approval", back with AADSTS90094.
    flow = app.initiate_auth_code_flow(MS_SCOPES, redirect_uri=MS_REDIRECT_URI)
    blocked = ms_sign_in(flow["auth_uri"], "help@fabrikam.test", decision="accept")
    assert "Need admin approval" in blocked.text
    back = ms_sign_in(flow["auth_uri"], "help@fabrikam.test", decision="return")
    assert back["error"] == "access_denied" and "AADSTS90094" in back["error_description"]

    # An admin grants the app for the organization; then the user signs in, no consent.
    consent = requests.Session()
    url = f"{ms.http}/organizations/v2.0/adminconsent"
    params = {"client_id": MS_CLIENT_ID, "redirect_uri": MS_REDIRECT_URI, "state": "adm",
              "scope": "https://graph.microsoft.com/.default"}
    picker = consent.get(url, params=params, timeout=5)
    assert "admin@fabrikam.test" in picker.text
    page = consent.post(url, data={**params, "email": "admin@fabrikam.test"}, timeout=5)
    assert "Accept for your organization (fabrikam)" in page.text
    done = consent.post(url, data={**params, "email": "admin@fabrikam.test",
                                   "decision": "accept"}, allow_redirects=False, timeout=5)
    assert done.status_code == 302
    assert "admin_consent=True" in done.headers["Location"] and "state=adm" in \
        done.headers["Location"]
    app, flow, answer = ms.connect("help@fabrikam.test")
    assert "code" in answer, answer
    assert "access_token" in app.acquire_token_by_auth_code_flow(flow, answer)


def test_redirect_mismatch_and_personal_account(ms):
    app = ms.app()
    flow = app.initiate_auth_code_flow(MS_SCOPES, redirect_uri="http://evil.test/cb")
    page = requests.get(flow["auth_uri"], timeout=5)
    assert page.status_code == 400 and "AADSTS50011" in page.text
    flow = app.initiate_auth_code_flow(MS_SCOPES, redirect_uri=MS_REDIRECT_URI)
    answer = ms_sign_in(flow["auth_uri"], "someone@outlook.com")
    assert answer["error"] == "invalid_request" and "AADSTS50020" in answer["error_description"]


def test_client_secret_wrong_or_expired(ms):
    app, flow, answer = ms.connect(secret="not-the-secret")
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert result["error"] == "invalid_client" and 7000215 in result["error_codes"]
    ms_register(ms.http, secret_expired=True)
    app, flow, answer = ms.connect()
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert result["error"] == "invalid_client" and 7000222 in result["error_codes"]


def _connected(ms):
    cache = msal.SerializableTokenCache()
    app, flow, answer = ms.connect(cache=cache)
    token = app.acquire_token_by_auth_code_flow(flow, answer)["access_token"]
    return cache.serialize(), token


def _refresh(ms, blob: str) -> dict:
    cache = msal.SerializableTokenCache()
    cache.deserialize(blob)
    app = ms.app(cache=cache)
    account = app.get_accounts()[0]
    return app.acquire_token_silent_with_error(MS_SCOPES, account=account, force_refresh=True)


def test_revoked_grant_idle_token_mfa_and_consent_withdrawn(ms):
    blob, token = _connected(ms)
    for kind, error, code in (("idle_refresh_token", "invalid_grant", 700082),
                              ("interaction_required", "interaction_required", 50076),
                              ("consent_required", "invalid_grant", 65001)):
        requests.post(ms.http + "/_sandbox/faults", json={"kind": kind, "count": 1},
                      timeout=5).raise_for_status()
        result = _refresh(ms, blob)
        assert result["error"] == error and code in result["error_codes"], result
    assert "access_token" in _refresh(ms, blob)  # faults used up: the grant still works

    requests.post(ms.http + "/_sandbox/microsoft/withdraw-consent", json={"tenant": "contoso"},
                  timeout=5).raise_for_status()
    result = _refresh(ms, blob)
    assert result.get("suberror") == "consent_required" and 65001 in result["error_codes"]

    blob, token = _connected(ms)  # consented again
    revoked = requests.post(ms.http + "/_sandbox/revoke-all",
                            json={"email": "support@contoso.test"}, timeout=5).json()
    assert MS_CLIENT_ID in revoked["revoked_clients"]
    result = _refresh(ms, blob)
    assert result["error"] == "invalid_grant" and 50173 in result["error_codes"]
    assert ms.me(token).status_code == 401


def test_tokens_of_one_provider_open_nothing_at_the_other(ms, connect):
    _, token = _connected(ms)
    gmail = requests.get(ms.http + "/gmail/v1/users/me/profile",
                         headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert gmail.status_code == 401
    google_tokens, _, _ = connect("someone@acme.test")
    assert ms.me(google_tokens["access_token"]).status_code == 401
    # The Google account picker lists no Microsoft mailbox.
    page = requests.get(ms.http + "/o/oauth2/v2/auth", params={
        "client_id": "x.apps.googleusercontent.com", "redirect_uri": "http://x.test/cb",
        "response_type": "code", "scope": "openid"}, timeout=5)
    assert "support@contoso.test" not in page.text
    assert _claims(token)["upn"] == "support@contoso.test"
