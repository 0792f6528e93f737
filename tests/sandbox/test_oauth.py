"""OAuth web-server flow with PKCE, refresh and revocation, through requests and google-auth."""

from __future__ import annotations

import pytest
import requests
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.oauth2.credentials import Credentials

from tests.sandbox_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    SCOPES,
    authorize,
    exchange,
    pkce_pair,
)


def test_allow_redirects_with_code_and_state_and_pkce_exchange(sandbox):
    verifier, challenge = pkce_pair()
    redirect = authorize(sandbox, "support@acme.test", challenge=challenge, state="xyz")
    assert redirect["state"] == "xyz" and redirect["code"].startswith("4/")
    assert set(redirect["scope"].split()) == set(SCOPES)
    response = exchange(sandbox, redirect["code"], verifier, basic=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599
    assert body["refresh_token"] and body["access_token"]
    assert set(body["scope"].split()) == set(SCOPES)
    # codes are single use
    again = exchange(sandbox, redirect["code"], verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_body_client_auth_is_accepted(sandbox):
    verifier, challenge = pkce_pair()
    redirect = authorize(sandbox, "a@acme.test", challenge=challenge)
    assert exchange(sandbox, redirect["code"], verifier, basic=False).status_code == 200


def test_wrong_or_missing_verifier_is_invalid_grant(sandbox):
    _, challenge = pkce_pair()
    redirect = authorize(sandbox, "support@acme.test", challenge=challenge)
    wrong = exchange(sandbox, redirect["code"], "x" * 50)
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_grant", "error_description": "Invalid code verifier."}
    redirect = authorize(sandbox, "support@acme.test", challenge=challenge)
    missing = exchange(sandbox, redirect["code"], None)
    assert missing.json()["error_description"] == "Missing code verifier."


def test_deny_redirects_with_access_denied(sandbox):
    redirect = authorize(sandbox, "support@acme.test", decision="deny", state="s1")
    assert redirect == {"error": "access_denied", "state": "s1"}


def test_authorize_validation(sandbox):
    base = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "response_type": "code",
            "scope": " ".join(SCOPES), "state": "s"}
    url = sandbox + "/o/oauth2/v2/auth"
    ok = requests.get(url, params=base, timeout=5)
    assert ok.status_code == 200 and "Choose an account" in ok.text
    for bad, needle in [
        ({"redirect_uri": "http://evil.example/cb"}, "redirect_uri_mismatch"),
        ({"response_type": "token"}, "invalid_request"),
        ({"scope": "https://www.googleapis.com/auth/nope"}, "invalid_scope"),
        ({"code_challenge": "a" * 43, "code_challenge_method": "S512"}, "invalid_request"),
        ({"access_type": "sometimes"}, "invalid_request"),
    ]:
        page = requests.get(url, params={**base, **bad}, timeout=5, allow_redirects=False)
        assert page.status_code == 400 and needle in page.text, bad


def test_wrong_client_secret_is_invalid_client(sandbox):
    verifier, challenge = pkce_pair()
    redirect = authorize(sandbox, "support@acme.test", challenge=challenge)
    response = requests.post(sandbox + "/token", auth=(CLIENT_ID, "wrong"), timeout=5, data={
        "grant_type": "authorization_code", "code": redirect["code"],
        "redirect_uri": REDIRECT_URI, "code_verifier": verifier})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_google_auth_refresh_and_revocation(connect, sandbox):
    tokens, creds, _ = connect()
    creds.refresh(Request())
    assert creds.token != tokens["access_token"] and creds.valid
    revoke = requests.post(sandbox + "/revoke", data={"token": tokens["refresh_token"]},
                           timeout=5)
    assert revoke.status_code == 200
    with pytest.raises(RefreshError) as excinfo:
        creds.refresh(Request())
    assert "invalid_grant" in str(excinfo.value)
    again = requests.post(sandbox + "/revoke?token=" + tokens["refresh_token"], timeout=5)
    assert again.status_code == 400 and again.json()["error"] == "invalid_token"


def test_invalid_grant_fault_switch(connect, sandbox):
    _, creds, _ = connect()
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "invalid_grant", "count": 1},
                  timeout=5).raise_for_status()
    with pytest.raises(RefreshError) as excinfo:
        creds.refresh(Request())
    assert excinfo.value.args[1]["error_description"] == "Token has been expired or revoked."
    creds.refresh(Request())  # count exhausted: works again
    assert creds.valid


def test_refresh_token_only_on_first_offline_consent(sandbox):
    verifier, challenge = pkce_pair()
    first = authorize(sandbox, "x@acme.test", challenge=challenge)
    assert "refresh_token" in exchange(sandbox, first["code"], verifier).json()
    second = authorize(sandbox, "x@acme.test", challenge=challenge, extra={"prompt": ""})
    assert "refresh_token" not in exchange(sandbox, second["code"], verifier).json()
    third = authorize(sandbox, "x@acme.test", challenge=challenge)  # prompt=consent
    assert "refresh_token" in exchange(sandbox, third["code"], verifier).json()


def test_credentials_built_without_access_token_refresh_first(connect, sandbox):
    tokens, _, _ = connect()
    creds = Credentials(None, refresh_token=tokens["refresh_token"],
                        token_uri=sandbox + "/token", client_id=CLIENT_ID,
                        client_secret=CLIENT_SECRET)
    creds.refresh(Request())
    assert creds.token.startswith("ya29.")
