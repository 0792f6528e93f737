"""GmailProvider against the Google sandbox (a real subprocess over HTTP): OAuth connect,
watch, history sync with paging and expiry, raw fetch, send/find_sent, error mapping under
the sandbox's fault switches, token refresh/revoke, and Pub/Sub push verification."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt
from google.auth import jwt as google_jwt

from channels_email.models import EmailConnection
from channels_email.providers import get as get_provider
from channels_email.providers import gmail as gmail_module
from channels_email.providers.base import (
    AuthError,
    CursorExpired,
    PermanentError,
    RateLimited,
    TokenSet,
    TransientError,
)
from channels_email.providers.gmail import GmailProvider, verify_push
from tests.sandbox_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    SCOPES,
    PushCatcher,
    forms_of,
    pkce_pair,
)

MAILBOX = "support@acme.test"
TOPIC = "projects/helpdesk-test/topics/gmail"
SUBSCRIPTION = "projects/helpdesk-test/subscriptions/gmail-push"
AUDIENCE = "https://helpdesk.test/webhooks/google/pubsub/"
SERVICE_ACCOUNT = "gmail-push@helpdesk-test.iam.gserviceaccount.com"


# ------------------------------------------------------------------------------- fixtures


def _topic(url: str, push_endpoint: str = "") -> None:
    requests.post(url + "/_sandbox/settings", json={"topics": {TOPIC: {
        "subscription": SUBSCRIPTION, "push_endpoint": push_endpoint, "audience": AUDIENCE,
        "service_account": SERVICE_ACCOUNT}}}, timeout=5).raise_for_status()


@pytest.fixture
def google(settings, sandbox):
    """Every Google setting pointed at the sandbox; the topic pushes nowhere by default."""
    settings.GOOGLE_CLIENT_ID = CLIENT_ID
    settings.GOOGLE_CLIENT_SECRET = CLIENT_SECRET
    settings.GOOGLE_AUTH_URI = sandbox + "/o/oauth2/v2/auth"
    settings.GOOGLE_TOKEN_URI = sandbox + "/token"
    settings.GOOGLE_REVOKE_URI = sandbox + "/revoke"
    settings.GOOGLE_CERTS_URL = sandbox + "/oauth2/v1/certs"
    settings.GMAIL_API_ENDPOINT = sandbox + "/"
    settings.GMAIL_SCOPES = tuple(SCOPES)
    settings.GMAIL_PUBSUB_TOPIC = TOPIC
    settings.GMAIL_WATCH_LABEL = "INBOX"
    settings.PUBSUB_AUDIENCE = AUDIENCE
    settings.PUBSUB_SERVICE_ACCOUNT = SERVICE_ACCOUNT
    settings.PROVIDER_HTTP_TIMEOUT_SECONDS = 10.0
    _topic(sandbox)
    gmail_module._CERTS_REQUEST.clear()
    yield sandbox
    gmail_module._CERTS_REQUEST.clear()


@pytest.fixture
def provider():
    return GmailProvider()


def consent(auth_url: str, decision: str = "allow") -> dict:
    """Drive the sandbox's consent page from the URL the provider built (login_hint names
    a known mailbox, so the account picker is skipped); return the redirect's query."""
    session = requests.Session()
    page = session.get(auth_url, timeout=5)
    assert page.status_code == 200, page.text
    base = auth_url.split("?")[0]
    form = forms_of(page.text)[0]
    answer = session.post(base, data=form["fields"] + [("decision", decision)],
                          allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI)
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def connect_mailbox(url: str, provider: GmailProvider, email: str = MAILBOX,
                    ) -> tuple[TokenSet, EmailConnection]:
    requests.post(url + "/_sandbox/mailboxes", json={"email": email}, timeout=5)
    verifier, challenge = pkce_pair()
    query = consent(provider.authorization_url(state="st-1", code_challenge=challenge,
                                               redirect_uri=REDIRECT_URI, login_hint=email))
    tokens = provider.exchange_code(code=query["code"], code_verifier=verifier,
                                    redirect_uri=REDIRECT_URI)
    connection = EmailConnection(provider="gmail", address=email,
                                 credentials=tokens.as_credentials(), cursor="")
    return tokens, connection


@pytest.fixture
def connected(google, provider):
    return connect_mailbox(google, provider)[1]


def deliver(url: str, **spec) -> dict:
    spec.setdefault("to", MAILBOX)
    spec.setdefault("from", "customer@example.net")
    spec.setdefault("body", "Hello")
    response = requests.post(url + "/_sandbox/deliver", json=spec, timeout=5)
    response.raise_for_status()
    return response.json()


def fault(url: str, kind: str, **spec) -> None:
    requests.post(url + "/_sandbox/faults", json={"kind": kind, **spec},
                  timeout=5).raise_for_status()


@pytest.fixture
def receiver(google):
    rec = PushCatcher()
    _topic(google, rec.url)
    yield rec
    rec.close()


@pytest.fixture
def signing_key(sandbox_var) -> str:
    return (sandbox_var / "sandbox" / "signing_key.pem").read_text()


def sign(pem: str, kid: str, **claims) -> str:
    now = int(time.time())
    payload = {"iss": "https://accounts.google.com", "aud": AUDIENCE,
               "email": SERVICE_ACCOUNT, "email_verified": True, "sub": "1234",
               "azp": "1234", "iat": now, "exp": now + 3600, **claims}
    return google_jwt.encode(crypt.RSASigner.from_string(pem, key_id=kid), payload).decode()


def kid_of(google_url: str) -> str:
    return next(iter(requests.get(google_url + "/oauth2/v1/certs", timeout=5).json()))


def other_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def reply_mime(subject: str, in_reply_to: str, message_id: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = MAILBOX
    msg["To"] = "customer@example.net"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{message_id}>"
    msg["In-Reply-To"] = in_reply_to
    msg["References"] = in_reply_to
    msg.set_content("We are on it.")
    return msg.as_bytes()


# ------------------------------------------------------------------------------ OAuth


def test_registered_under_gmail():
    assert isinstance(get_provider("gmail"), GmailProvider)


def test_authorization_url_connect_and_exchange(google, provider):
    requests.post(google + "/_sandbox/mailboxes", json={"email": MAILBOX}, timeout=5)
    verifier, challenge = pkce_pair()
    url = provider.authorization_url(state="st-xyz", code_challenge=challenge,
                                     redirect_uri=REDIRECT_URI, login_hint=MAILBOX)
    assert url.startswith(google + "/o/oauth2/v2/auth?")
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert params == {
        "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "response_type": "code",
        "scope": " ".join(SCOPES), "state": "st-xyz", "code_challenge": challenge,
        "code_challenge_method": "S256", "access_type": "offline", "prompt": "consent",
        "include_granted_scopes": "true", "login_hint": MAILBOX}
    no_hint = provider.authorization_url(state="s", code_challenge=challenge,
                                         redirect_uri=REDIRECT_URI)
    assert "login_hint" not in no_hint

    query = consent(url)
    assert query["state"] == "st-xyz" and query["code"]
    before = datetime.now(UTC)
    tokens = provider.exchange_code(code=query["code"], code_verifier=verifier,
                                    redirect_uri=REDIRECT_URI)
    assert tokens.access_token and tokens.refresh_token
    assert set(tokens.scopes) == set(SCOPES)
    assert before + timedelta(seconds=3500) < tokens.expires_at < \
        datetime.now(UTC) + timedelta(seconds=3600)
    assert provider.mailbox_address(tokens.as_credentials()) == MAILBOX

    # Codes are single use; a wrong verifier is refused too.
    with pytest.raises(AuthError) as used:
        provider.exchange_code(code=query["code"], code_verifier=verifier,
                               redirect_uri=REDIRECT_URI)
    assert used.value.reason == "invalid_grant"
    query = consent(url)
    with pytest.raises(AuthError) as wrong:
        provider.exchange_code(code=query["code"], code_verifier=pkce_pair()[0],
                               redirect_uri=REDIRECT_URI)
    assert wrong.value.reason == "invalid_grant" and wrong.value.status == 400


def test_mailbox_address_is_lower_cased(google, provider):
    _, connection = connect_mailbox(google, provider, "Help.Desk@ACME.test")
    assert provider.mailbox_address(connection.credentials) == "help.desk@acme.test"


def test_refresh_then_revoke(google, provider):
    tokens, connection = connect_mailbox(google, provider)
    fresh = provider.refresh(connection.credentials)
    assert fresh.access_token and fresh.access_token != tokens.access_token
    assert set(fresh.scopes) == set(SCOPES)
    stored = fresh.as_credentials(previous=connection.credentials)
    # Sandbox (like Google) does not rotate: the old refresh token is kept.
    assert stored["refresh_token"] == (fresh.refresh_token or tokens.refresh_token)
    assert provider.mailbox_address(stored) == MAILBOX

    provider.revoke(stored)
    with pytest.raises(AuthError) as refused:
        provider.refresh(stored)
    assert refused.value.reason == "invalid_grant"
    with pytest.raises(AuthError) as api:
        provider.mailbox_address(stored)  # the access token went with the grant
    assert api.value.status == 401 and api.value.reason == "authError"
    provider.revoke(stored)  # already revoked: fine
    provider.revoke({})  # nothing to revoke: fine


def test_refresh_errors(google, provider):
    _, connection = connect_mailbox(google, provider)
    fault(google, "invalid_grant", count=1)
    with pytest.raises(AuthError) as gone:
        provider.refresh(connection.credentials)
    assert gone.value.reason == "invalid_grant"
    fault(google, "server_error", count=1, target="token", status=503)
    with pytest.raises(TransientError) as down:
        provider.refresh(connection.credentials)
    assert down.value.status == 503
    assert provider.refresh(connection.credentials).access_token  # faults used up
    with pytest.raises(AuthError):
        provider.refresh({"access_token": "x"})  # no refresh token stored


def test_token_endpoint_unreachable(google, provider, settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.GOOGLE_TOKEN_URI = f"http://127.0.0.1:{port}/token"
    with pytest.raises(TransientError):
        provider.refresh({"refresh_token": "1//r"})


# ----------------------------------------------------------------------- watch and sync


def test_watch_delivery_history_and_fetch(google, provider, connected):
    watch = provider.start_watch(connected)
    assert watch.subscription_id == "" and watch.cursor.isdigit()
    assert watch.expires_at > datetime.now(UTC) + timedelta(days=6)
    assert provider.current_cursor(connected) == watch.cursor

    delivered = deliver(google, subject="Printer on fire", body="Help!")
    page = provider.changes_since(connected, watch.cursor)
    assert [m.provider_message_id for m in page.messages] == [delivered["id"]]
    assert page.messages[0].provider_thread_id == delivered["threadId"]
    assert page.next_page == "" and int(page.cursor) > int(watch.cursor)

    raw = provider.fetch_raw(connected, delivered["id"])
    assert isinstance(raw, bytes) and b"Subject: Printer on fire" in raw
    assert provider.changes_since(connected, page.cursor).messages == []

    with pytest.raises(PermanentError) as missing:
        provider.fetch_raw(connected, "ffff0000")
    assert missing.value.status == 404 and missing.value.reason == "notFound"
    provider.stop_watch(connected)


def test_history_paging(google, connected):
    small = GmailProvider(page_size=2)
    cursor = small.current_cursor(connected)
    ids = [deliver(google, subject=f"Mail {i}")["id"] for i in range(3)]
    first = small.changes_since(connected, cursor)
    assert [m.provider_message_id for m in first.messages] == ids[:2]
    assert first.next_page and first.cursor == ""
    last = small.changes_since(connected, cursor, first.next_page)
    assert [m.provider_message_id for m in last.messages] == ids[2:]
    assert last.next_page == "" and last.cursor.isdigit()
    assert int(last.cursor) > int(cursor)


def test_expired_cursor_then_list_since(google, provider, connected):
    cursor = provider.current_cursor(connected)
    since = datetime.now(UTC) - timedelta(minutes=1)
    delivered = deliver(google, subject="Lost in history")
    requests.post(google + "/_sandbox/expire-history", json={"email": MAILBOX},
                  timeout=5).raise_for_status()
    with pytest.raises(CursorExpired) as expired:
        provider.changes_since(connected, cursor)
    assert expired.value.status == 404
    found = provider.list_since(connected, since)
    assert delivered["id"] in [m.provider_message_id for m in found.messages]
    assert found.next_page == "" and found.cursor == ""
    later = provider.list_since(connected, datetime.now(UTC) + timedelta(minutes=5))
    assert later.messages == []

    fresh = provider.current_cursor(connected)
    fault(google, "expired_history", count=1)
    with pytest.raises(CursorExpired):
        provider.changes_since(connected, fresh)
    assert provider.changes_since(connected, fresh).messages == []
    with pytest.raises(CursorExpired):
        provider.changes_since(connected, "")  # nothing usable stored


def test_send_in_thread_and_find_sent(google, provider, connected):
    cursor = provider.current_cursor(connected)
    inbound = deliver(google, subject="Order 42", message_id="<cust-1@example.net>")
    ref = provider.changes_since(connected, cursor).messages[0]
    assert ref.provider_thread_id == inbound["threadId"]

    ours = "reply-1.abc@helpdesk.test"
    sent = provider.send(connected, reply_mime("Re: Order 42", "<cust-1@example.net>", ours),
                         thread_id=ref.provider_thread_id)
    assert sent.provider_message_id and sent.provider_thread_id == inbound["threadId"]
    assert sent.message_id_header == ours
    outbox = requests.get(google + "/_sandbox/sent", params={"mailbox": MAILBOX},
                          timeout=5).json()
    assert ours in json.dumps(outbox)

    found = provider.find_sent(connected, f"<{ours}>")
    assert found == sent
    assert provider.find_sent(connected, "<never-sent@helpdesk.test>") is None
    assert provider.find_sent(connected, "") is None
    # Our own reply is not inbound mail.
    assert [m.provider_message_id for m in
            provider.changes_since(connected, cursor).messages] == [ref.provider_message_id]


def test_big_mail_is_sent_by_upload_and_too_big_mail_is_refused_unsent(google, provider,
                                                                       connected):
    big = reply_mime("Re: Order 42", "<cust-1@example.net>", "big-1@helpdesk.test") + \
        b"x" * (6 * 1024 * 1024)  # above the JSON body limit, as a raw body
    # Google refuses such a body as JSON (the sandbox does too)...
    answer = requests.post(google + "/gmail/v1/users/me/messages/send", json={
        "raw": base64.urlsafe_b64encode(big).decode()},
        headers={"Authorization": f"Bearer {gmail_module._access_token(connected.credentials)}"},
        timeout=10)
    assert answer.status_code == 400 and "payload size exceeds" in answer.text
    # ...so the provider uploads it.
    sent = provider.send(connected, big)
    assert sent.message_id_header == "big-1@helpdesk.test"
    with pytest.raises(PermanentError) as caught:
        provider.send(connected, b"x" * (gmail_module.SEND_MAX_BYTES + 1))
    assert caught.value.reason == "messageTooLarge"
    outbox = requests.get(google + "/_sandbox/sent", params={"mailbox": MAILBOX},
                          timeout=5).json()
    assert len(outbox["messages"]) == 1


# ------------------------------------------------------------------------------ faults


@pytest.mark.parametrize(("kind", "spec", "error", "status", "reason"), [
    ("too_many_requests", {"retry_after": 7}, RateLimited, 429, "rateLimitExceeded"),
    ("user_rate_limit", {}, RateLimited, 403, "userRateLimitExceeded"),
    ("rate_limit", {}, RateLimited, 403, "rateLimitExceeded"),
    ("server_error", {}, TransientError, 500, "backendError"),
    ("server_error", {"status": 503}, TransientError, 503, "backendError"),
])
def test_api_faults(google, provider, connected, kind, spec, error, status, reason):
    fault(google, kind, count=1, **spec)
    with pytest.raises(error) as caught:
        provider.current_cursor(connected)
    assert type(caught.value) is error
    assert caught.value.status == status and caught.value.reason == reason
    if kind == "too_many_requests":
        assert caught.value.retry_after == 7.0
    elif error is RateLimited:
        assert caught.value.retry_after is None
    assert provider.current_cursor(connected).isdigit()  # one request: the fault is used up


def test_slow_answer_times_out(google, provider, connected, settings):
    settings.PROVIDER_HTTP_TIMEOUT_SECONDS = 0.3
    fault(google, "slow", count=1, delay=1.5)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        provider.current_cursor(connected)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 1.4
    time.sleep(1.3)  # let the sandbox finish the slow answer


def test_bad_token_and_unreachable_api(google, provider, connected, settings):
    bad = EmailConnection(provider="gmail", address=MAILBOX,
                          credentials={**connected.credentials, "access_token": "ya29.bad"})
    with pytest.raises(AuthError) as caught:
        provider.current_cursor(bad)
    assert caught.value.status == 401 and caught.value.reason == "authError"
    with pytest.raises(AuthError):
        provider.current_cursor(EmailConnection(provider="gmail", credentials=None))

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.GMAIL_API_ENDPOINT = f"http://127.0.0.1:{port}/"
    with pytest.raises(TransientError) as down:
        provider.current_cursor(connected)
    assert down.value.reason == "connection"


def test_bad_request_is_permanent(google, provider, connected, settings):
    settings.GMAIL_PUBSUB_TOPIC = "not-a-topic"
    with pytest.raises(PermanentError) as caught:
        provider.start_watch(connected)
    assert caught.value.status == 400 and caught.value.reason == "invalidArgument"


# -------------------------------------------------------------------------- push


def test_push_verified_and_parsed(google, provider, connected, receiver, settings):
    watch = provider.start_watch(connected)
    first = receiver.wait_for(1)[0]  # a successful watch notifies right away
    gmail_module._CERTS_REQUEST.clear()
    claims = verify_push(first["auth"])
    assert claims["aud"] == AUDIENCE and claims["email"] == SERVICE_ACCOUNT
    assert claims["iss"] in ("https://accounts.google.com", "accounts.google.com")
    assert provider.verify_push(first["auth"]) == claims
    [note] = provider.parse_notification(first["raw"], first["headers"])
    assert note.mailbox == MAILBOX and note.cursor_hint == watch.cursor

    delivered = deliver(google, subject="Pushed")
    second = receiver.wait_for(2)[1]
    assert verify_push(second["auth"])["email"] == SERVICE_ACCOUNT
    [note] = provider.parse_notification(second["raw"], second["headers"])
    assert note.cursor_hint == str(delivered["historyId"])
    assert gmail_module._CERTS_REQUEST.fetches == 1  # certs fetched once, then cached

    # JWKS works as well.
    settings.GOOGLE_CERTS_URL = google + "/oauth2/v3/certs"
    assert verify_push(second["auth"])["aud"] == AUDIENCE


def test_push_refused(google, connected, provider, receiver, settings, signing_key):
    provider.start_watch(connected)
    auth = receiver.wait_for(1)[0]["auth"]
    kid = kid_of(google)

    settings.PUBSUB_AUDIENCE = "https://other.test/webhooks/google/pubsub/"
    with pytest.raises(AuthError) as caught:
        verify_push(auth)
    assert caught.value.reason == "wrong_audience"
    settings.PUBSUB_AUDIENCE = AUDIENCE

    settings.PUBSUB_SERVICE_ACCOUNT = "someone-else@helpdesk-test.iam.gserviceaccount.com"
    with pytest.raises(AuthError) as caught:
        verify_push(auth)
    assert caught.value.reason == "wrong_email"
    settings.PUBSUB_SERVICE_ACCOUNT = SERVICE_ACCOUNT
    assert verify_push(auth)

    cases = {
        "": "missing_token",
        "Basic abc": "missing_token",
        "Bearer ": "missing_token",
        "Bearer garbage": "malformed_token",
        "Bearer a.b.c": "malformed_token",
        "Bearer " + sign(other_key_pem(), kid): "bad_signature",
        "Bearer " + sign(signing_key, kid, exp=int(time.time()) - 600,
                         iat=int(time.time()) - 4000): "expired_token",
        "Bearer " + sign(signing_key, kid, iss="https://evil.test"): "wrong_issuer",
        "Bearer " + sign(signing_key, kid, email_verified=False): "email_not_verified",
        "Bearer " + sign(signing_key, kid, aud="https://other.test/"): "wrong_audience",
    }
    for header, reason in cases.items():
        with pytest.raises(AuthError) as caught:
            verify_push(header)
        assert caught.value.reason == reason, header[:40]
    unknown_kid = sign(other_key_pem(), "some-other-kid")
    with pytest.raises(AuthError):
        verify_push("Bearer " + unknown_kid)
    # A token we signed with the sandbox key and valid claims is accepted (control).
    assert verify_push("Bearer " + sign(signing_key, kid))["sub"] == "1234"


def test_push_without_audience_setting_is_refused(google, settings, signing_key):
    settings.PUBSUB_AUDIENCE = ""
    with pytest.raises(AuthError) as caught:
        verify_push("Bearer " + sign(signing_key, kid_of(google)))
    assert caught.value.reason == "not_configured"


def test_parse_notification_variants(provider):
    def body(payload, encode=base64.b64encode) -> bytes:
        data = encode(json.dumps(payload).encode()).decode()
        return json.dumps({"message": {"data": data, "messageId": "1"},
                           "subscription": SUBSCRIPTION}).encode()

    [note] = provider.parse_notification(
        body({"emailAddress": "Support@ACME.test", "historyId": 12345}), {})
    assert (note.mailbox, note.cursor_hint) == ("support@acme.test", "12345")
    unpadded = body({"emailAddress": "a@b.test", "historyId": "77"},
                    lambda b: base64.urlsafe_b64encode(b).rstrip(b"="))
    assert provider.parse_notification(unpadded, {})[0].cursor_hint == "77"

    malformed = [
        b"not json",
        b"[]",
        json.dumps({"message": {}}).encode(),
        json.dumps({"message": {"data": "%%%not base64%%%"}}).encode(),
        json.dumps({"message": {"data": base64.b64encode(b"not json").decode()}}).encode(),
        body({"historyId": 1}),
        body({"emailAddress": "nobody", "historyId": 1}),
        body({"emailAddress": "a@b.test", "historyId": "abc"}),
    ]
    for raw in malformed:
        with pytest.raises(PermanentError) as caught:
            provider.parse_notification(raw, {})
        assert caught.value.reason == "malformed", raw
