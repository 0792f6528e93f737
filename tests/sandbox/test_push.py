"""Gmail watch -> Pub/Sub push with an OIDC JWT, verified like the helpdesk webhook will."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests
from google.auth.transport.requests import Request
from google.oauth2 import id_token

from tests.sandbox_support import PushCatcher

AUDIENCE = "https://helpdesk.test/webhooks/google/pubsub/"
SERVICE_ACCOUNT = "gmail-push@helpdesk-test.iam.gserviceaccount.com"
TOPIC = "projects/helpdesk-test/topics/gmail"
SUBSCRIPTION = "projects/helpdesk-test/subscriptions/gmail-push"


@pytest.fixture
def receiver(sandbox):
    rec = PushCatcher()
    requests.post(sandbox + "/_sandbox/settings", json={"topics": {TOPIC: {
        "subscription": SUBSCRIPTION, "push_endpoint": rec.url, "audience": AUDIENCE,
        "service_account": SERVICE_ACCOUNT}}}, timeout=5).raise_for_status()
    yield rec
    rec.close()


def decode(push: dict) -> dict:
    data = push["body"]["message"]["data"]
    data = data.replace("-", "+").replace("_", "/")
    return json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))


def verify(sandbox: str, push: dict, certs: str = "/oauth2/v1/certs") -> dict:
    assert push["auth"].startswith("Bearer ")
    claims = id_token.verify_token(push["auth"][7:], Request(), audience=AUDIENCE,
                                   certs_url=sandbox + certs)
    assert claims["iss"] in ("https://accounts.google.com", "accounts.google.com")
    assert claims["email"] == SERVICE_ACCOUNT and claims["email_verified"] is True
    return claims


def deliver(url: str, **spec) -> dict:
    response = requests.post(url + "/_sandbox/deliver", json=spec, timeout=5)
    response.raise_for_status()
    return response.json()


def test_watch_push_body_and_jwt(connect, sandbox, receiver):
    _, _, gmail = connect()
    watch = gmail.users().watch(userId="me", body={
        "topicName": TOPIC, "labelIds": ["INBOX"], "labelFilterBehavior": "INCLUDE"}).execute()
    assert watch["historyId"].isdigit()
    assert int(watch["expiration"]) > (time.time() + 6 * 86400) * 1000
    first = receiver.wait_for(1)[0]  # a successful watch notifies once right away
    assert decode(first) == {"emailAddress": "support@acme.test",
                             "historyId": int(watch["historyId"])}
    sent = deliver(sandbox, to="support@acme.test", subject="Hello", body="hi")
    push = receiver.wait_for(2)[1]
    body = push["body"]
    assert body["subscription"] == SUBSCRIPTION
    message = body["message"]
    assert message["messageId"] == message["message_id"] and message["messageId"].isdigit()
    assert message["publishTime"].endswith("Z") and message["attributes"] == {}
    assert decode(push) == {"emailAddress": "support@acme.test",
                            "historyId": int(sent["historyId"])}
    claims = verify(sandbox, push)
    assert claims["aud"] == AUDIENCE and claims["sub"] and claims["azp"]
    verify(sandbox, push, certs="/oauth2/v3/certs")  # JWKS works too
    with pytest.raises(ValueError):
        id_token.verify_token(push["auth"][7:], Request(), audience="https://other/",
                              certs_url=sandbox + "/oauth2/v1/certs")
    # Sent mail is not in the watched INBOX label: no push. Stop ends pushes.
    assert gmail.users().stop(userId="me").execute() == ""
    deliver(sandbox, to="support@acme.test", subject="After stop", body="x")
    time.sleep(0.5)
    assert len(receiver.received) == 2


def test_retries_until_acked(connect, sandbox, receiver):
    _, _, gmail = connect()
    gmail.users().watch(userId="me", body={"topicName": TOPIC, "labelIds": ["INBOX"]}).execute()
    receiver.wait_for(1)
    receiver.statuses = [500, 503]
    deliver(sandbox, to="support@acme.test", subject="retry me", body="x")
    pushes = receiver.wait_for(4)[1:]
    assert [p["status"] for p in pushes] == [500, 503, 204]
    assert len({p["body"]["message"]["messageId"] for p in pushes}) == 1
    history_id = str(decode(pushes[0])["historyId"])

    def attempts() -> list[int]:
        log = requests.get(sandbox + "/_sandbox/pushes", timeout=5).json()["pushes"]
        return [e["attempt"] for e in log if e.get("historyId") == history_id
                and "attempt" in e]

    # The sandbox logs an attempt once it has the answer: the third may trail its arrival.
    deadline = time.monotonic() + 5
    while len(attempts()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attempts() == [1, 2, 3]


def test_duplicates_and_reordering_when_switched_on(connect, sandbox, receiver):
    _, _, gmail = connect()
    gmail.users().watch(userId="me", body={"topicName": TOPIC, "labelIds": ["INBOX"]}).execute()
    receiver.wait_for(1)
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "push_duplicate", "count": 1},
                  timeout=5)
    deliver(sandbox, to="support@acme.test", subject="dup", body="x")
    dup = receiver.wait_for(3)[1:3]
    assert dup[0]["body"]["message"]["messageId"] == dup[1]["body"]["message"]["messageId"]
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "push_reorder"}, timeout=5)
    older = deliver(sandbox, to="support@acme.test", subject="one", body="x")
    newer = deliver(sandbox, to="support@acme.test", subject="two", body="x")
    pushed = [decode(p)["historyId"] for p in receiver.wait_for(5)[3:5]]
    assert pushed == [int(newer["historyId"]), int(older["historyId"])]


def test_exclude_filter_and_unwatched_mailbox(connect, sandbox, receiver):
    _, _, gmail = connect()
    gmail.users().watch(userId="me", body={"topicName": TOPIC, "labelIds": ["SPAM"],
                                           "labelFilterBehavior": "exclude"}).execute()
    receiver.wait_for(1)
    deliver(sandbox, to="support@acme.test", subject="in", body="x")
    deliver(sandbox, to="nobody@acme.test", subject="unwatched", body="x")
    assert len(receiver.wait_for(2)) == 2
    time.sleep(0.5)
    assert len(receiver.received) == 2
