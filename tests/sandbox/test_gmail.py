"""Gmail API v1 through google-api-python-client (static discovery, api_endpoint)."""

from __future__ import annotations

import base64
import time
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default

import pytest
import requests
from googleapiclient.errors import HttpError


def deliver(url: str, **spec) -> dict:
    response = requests.post(url + "/_sandbox/deliver", json=spec, timeout=5)
    response.raise_for_status()
    return response.json()


def test_profile_history_get_and_list(connect, sandbox):
    _, _, gmail = connect("support@acme.test")
    profile = gmail.users().getProfile(userId="me").execute()
    assert profile["emailAddress"] == "support@acme.test"
    start = profile["historyId"]
    assert isinstance(start, str) and start.isdigit()
    attachment = base64.b64encode(b"%PDF-1.4 fake").decode()
    sent = deliver(sandbox, to="support@acme.test", subject="Printer on fire",
                   body="Help!", attachments=[{"filename": "a.pdf", "data_base64": attachment,
                                               "content_type": "application/pdf"}])
    history = gmail.users().history().list(userId="me", startHistoryId=start,
                                           historyTypes="messageAdded",
                                           labelId="INBOX").execute()
    added = history["history"][0]["messagesAdded"][0]["message"]
    assert added["id"] == sent["id"] and "INBOX" in added["labelIds"]
    assert int(history["historyId"]) > int(start)
    msg = gmail.users().messages().get(userId="me", id=sent["id"], format="raw").execute()
    assert all(c not in msg["raw"] for c in "+/")
    parsed = BytesParser(policy=default).parsebytes(base64.urlsafe_b64decode(msg["raw"]))
    assert parsed["Subject"] == "Printer on fire"
    assert msg["internalDate"].isdigit() and msg["historyId"].isdigit()
    assert int(msg["id"], 16) and msg["sizeEstimate"] > 0
    meta = gmail.users().messages().get(userId="me", id=sent["id"], format="metadata",
                                        metadataHeaders=["Message-ID", "Subject"]).execute()
    names = {h["name"].lower() for h in meta["payload"]["headers"]}
    assert names == {"message-id", "subject"}
    full = gmail.users().messages().get(userId="me", id=sent["id"]).execute()
    part = [p for p in full["payload"]["parts"] if p["filename"] == "a.pdf"][0]
    att = gmail.users().messages().attachments().get(
        userId="me", messageId=sent["id"], id=part["body"]["attachmentId"]).execute()
    assert base64.urlsafe_b64decode(att["data"]) == b"%PDF-1.4 fake"
    found = gmail.users().messages().list(
        userId="me", q=f"rfc822msgid:{sent['messageId']}").execute()
    assert found["messages"] == [{"id": sent["id"], "threadId": sent["threadId"]}]
    after = gmail.users().messages().list(userId="me", labelIds=["INBOX"],
                                          q=f"after:{int(time.time()) + 60}").execute()
    assert after == {"resultSizeEstimate": 0}
    with pytest.raises(HttpError) as excinfo:
        gmail.users().messages().get(userId="me", id="ffffffffffffffff").execute()
    assert excinfo.value.resp.status == 404


def test_paging(connect, sandbox):
    _, _, gmail = connect()
    start = gmail.users().getProfile(userId="me").execute()["historyId"]
    for i in range(5):
        deliver(sandbox, to="support@acme.test", subject=f"n{i}", body="x")
    ids, token = [], None
    while True:
        page = gmail.users().history().list(userId="me", startHistoryId=start, maxResults=2,
                                            pageToken=token).execute()
        ids += [h["messagesAdded"][0]["message"]["id"] for h in page.get("history", [])]
        token = page.get("nextPageToken")
        if not token:
            break
    assert len(ids) == 5 and ids == sorted(ids)
    listed, token = [], None
    while True:
        page = gmail.users().messages().list(userId="me", maxResults=2, pageToken=token).execute()
        listed += [m["id"] for m in page["messages"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert listed == sorted(ids, reverse=True)


def test_expired_cursor_is_404_not_found(connect, sandbox):
    _, _, gmail = connect()
    start = gmail.users().getProfile(userId="me").execute()["historyId"]
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "expired_history", "count": 1},
                  timeout=5)
    with pytest.raises(HttpError) as excinfo:
        gmail.users().history().list(userId="me", startHistoryId=start).execute()
    assert excinfo.value.resp.status == 404
    assert excinfo.value.error_details[0]["reason"] == "notFound"
    gmail.users().history().list(userId="me", startHistoryId=start).execute()  # fault used up
    deliver(sandbox, to="support@acme.test", subject="s", body="b")
    requests.post(sandbox + "/_sandbox/expire-history", json={"email": "support@acme.test"},
                  timeout=5)
    with pytest.raises(HttpError) as excinfo:
        gmail.users().history().list(userId="me", startHistoryId=start).execute()
    assert excinfo.value.resp.status == 404


def test_send_keeps_message_id_and_threads(connect, sandbox):
    _, _, gmail = connect()
    inbound = deliver(sandbox, to="support@acme.test", subject="Order 42 late", body="Where?",
                      **{"from": "Cust <cust@example.net>"})
    reply = EmailMessage()
    reply["To"] = "cust@example.net"
    reply["From"] = "support@acme.test"
    reply["Subject"] = "Re: Order 42 late"
    reply["Message-ID"] = "<reply-1@helpdesk.test>"
    reply["In-Reply-To"] = inbound["messageId"]
    reply["References"] = inbound["messageId"]
    reply.set_content("On its way.")
    raw = base64.urlsafe_b64encode(reply.as_bytes()).decode()
    sent = gmail.users().messages().send(
        userId="me", body={"raw": raw, "threadId": inbound["threadId"]}).execute()
    assert sent["threadId"] == inbound["threadId"] and sent["labelIds"] == ["SENT"]
    meta = gmail.users().messages().get(userId="me", id=sent["id"], format="metadata",
                                        metadataHeaders=["Message-ID"]).execute()
    assert meta["payload"]["headers"] == [{"name": "Message-ID",
                                           "value": "<reply-1@helpdesk.test>"}]
    # A different subject starts a new thread even with threadId set.
    other = EmailMessage()
    other["To"] = "cust@example.net"
    other["Subject"] = "Something else"
    other.set_content("x")
    new = gmail.users().messages().send(userId="me", body={
        "raw": base64.urlsafe_b64encode(other.as_bytes()).decode(),
        "threadId": inbound["threadId"]}).execute()
    assert new["threadId"] != inbound["threadId"]
    # The customer's answer joins the thread through References.
    answer = deliver(sandbox, to="support@acme.test", subject="Re: Order 42 late", body="ok",
                     headers={"In-Reply-To": "<reply-1@helpdesk.test>",
                              "References": f"{inbound['messageId']} <reply-1@helpdesk.test>"})
    assert answer["threadId"] == inbound["threadId"]
    sent_list = requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]
    assert [m["messageId"] for m in sent_list][0] == "<reply-1@helpdesk.test>"
    assert sent_list[0]["inReplyTo"] == inbound["messageId"]


def test_unauthenticated_and_wrong_scope(connect, sandbox):
    response = requests.get(sandbox + "/gmail/v1/users/me/profile",
                            headers={"Authorization": "Bearer nope"}, timeout=5)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["status"] == "UNAUTHENTICATED" and error["errors"][0]["reason"] == "authError"


@pytest.mark.parametrize("kind,status,reason", [
    ("user_rate_limit", 403, "userRateLimitExceeded"),
    ("rate_limit", 403, "rateLimitExceeded"),
    ("too_many_requests", 429, "rateLimitExceeded"),
    ("server_error", 500, "backendError"),
])
def test_rate_limit_and_server_faults(connect, sandbox, kind, status, reason):
    _, _, gmail = connect()
    requests.post(sandbox + "/_sandbox/faults", json={"kind": kind, "count": 1,
                                                      "retry_after": 7}, timeout=5)
    with pytest.raises(HttpError) as excinfo:
        gmail.users().getProfile(userId="me").execute()
    assert excinfo.value.resp.status == status
    assert excinfo.value.error_details[0]["reason"] == reason
    if status == 429:
        assert excinfo.value.resp["retry-after"] == "7"
    if status == 403:
        assert excinfo.value.error_details[0]["domain"] == "usageLimits"
    gmail.users().getProfile(userId="me").execute()


def test_faults_until_cleared_and_per_mailbox(connect, sandbox):
    _, _, gmail_a = connect("a@acme.test")
    _, _, gmail_b = connect("b@acme.test")
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "server_error",
                                                      "mailbox": "a@acme.test"}, timeout=5)
    for _ in range(3):
        with pytest.raises(HttpError):
            gmail_a.users().getProfile(userId="me").execute()
        gmail_b.users().getProfile(userId="me").execute()
    requests.delete(sandbox + "/_sandbox/faults", timeout=5)
    gmail_a.users().getProfile(userId="me").execute()


def test_library_retries_through_injected_429(connect, sandbox):
    _, _, gmail = connect()
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "too_many_requests", "count": 1,
                                                      "retry_after": 0}, timeout=5)
    assert gmail.users().getProfile(userId="me").execute(num_retries=2)["emailAddress"]


def test_slow_fault_makes_a_short_timeout_expire(connect, sandbox):
    tokens, _, gmail = connect()
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "slow", "count": 1, "delay": 1.5},
                  timeout=5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(sandbox + "/gmail/v1/users/me/profile", timeout=0.3,
                     headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert gmail.users().getProfile(userId="me").execute()["emailAddress"]
