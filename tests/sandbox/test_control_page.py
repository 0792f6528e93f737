"""The control page a newcomer uses in the demo: the account picker's suggestion, the
confirmation after Deliver, and replying as the customer to mail the helpdesk sent."""

from __future__ import annotations

import base64
import time
import urllib.parse

import requests

from tests.sandbox.test_push import TOPIC, decode, receiver  # noqa: F401 - the fixture
from tests.sandbox_support import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, SCOPES, forms_of


def _picker(sandbox: str) -> str:
    page = requests.get(sandbox + "/o/oauth2/v2/auth", timeout=5, params={
        "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "response_type": "code",
        "scope": " ".join(SCOPES), "state": "s"})
    assert page.status_code == 200, page.text
    return page.text


def test_picker_offers_the_suggested_account_first_and_once(sandbox):
    requests.post(sandbox + "/_sandbox/mailboxes", json={"email": "other@acme.test"}, timeout=5)
    assert "suggested" not in _picker(sandbox)
    requests.post(sandbox + "/_sandbox/settings", timeout=5,
                  json={"suggested_accounts": ["Support@Acme.test"]}).raise_for_status()
    page = _picker(sandbox)
    choices = [dict(f["buttons"])["email"] for f in forms_of(page) if f["buttons"]]
    assert choices == ["support@acme.test", "other@acme.test"]
    assert "support@acme.test</button> <small>suggested</small>" in page

    # Once the suggested mailbox exists it is still offered once, first.
    requests.post(sandbox + "/_sandbox/mailboxes", json={"email": "support@acme.test"},
                  timeout=5)
    page = _picker(sandbox)
    assert [dict(f["buttons"])["email"] for f in forms_of(page) if f["buttons"]] == \
        ["support@acme.test", "other@acme.test"]
    home = requests.get(sandbox + "/_sandbox/", timeout=5).text
    assert home.index("<option>support@acme.test</option>") < \
        home.index("<option>other@acme.test</option>")  # Deliver's default: the suggestion
    chosen = next(f for f in forms_of(page) if f["buttons"])
    consent = requests.post(sandbox + "/o/oauth2/v2/auth", timeout=5,
                            data=chosen["fields"] + chosen["buttons"])
    assert "wants access to your Google Account</h1><p>support@acme.test</p>" in consent.text


def test_form_deliver_confirms_what_landed_and_whether_a_push_follows(sandbox, connect):
    requests.post(sandbox + "/_sandbox/mailboxes", json={"email": "web@acme.test"}, timeout=5)
    response = requests.post(sandbox + "/_sandbox/deliver", allow_redirects=False, timeout=5,
                             data={"to": "web@acme.test", "from": "Dana <dana@example.net>",
                                   "subject": "Where is my <order>?", "body": "typed"})
    assert response.status_code == 302
    location = response.headers["Location"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    page = requests.get(urllib.parse.urljoin(sandbox, location), timeout=5).text
    assert (f"<strong>Delivered</strong> a new email into the INBOX of web@acme.test: "
            f"&ldquo;Where is my &lt;order&gt;?&rdquo; from Dana &lt;dana@example.net&gt; "
            f"(id {query['delivered']})") in page
    assert "Nobody watches this mailbox" in page
    # Deliver's list keeps the mailbox just delivered to (not the first one again).
    assert "<option selected>web@acme.test</option>" in page
    assert "Delivered</strong>" not in requests.get(sandbox + "/_sandbox/", timeout=5).text

    _, _, gmail = connect("watched@acme.test")
    gmail.users().watch(userId="me", body={"topicName": TOPIC}).execute()
    response = requests.post(sandbox + "/_sandbox/deliver", timeout=5,
                             data={"to": "watched@acme.test", "subject": "Hi", "body": "x"})
    assert "The helpdesk watches this mailbox: a push tells it now." in response.text


def test_reply_as_the_customer_threads_and_pushes(sandbox, connect, receiver):  # noqa: F811
    _, _, gmail = connect("support@acme.test")
    gmail.users().watch(userId="me", body={"topicName": TOPIC, "labelIds": ["INBOX"]}).execute()
    receiver.wait_for(1)  # the watch's own first notification
    older = (b"From: support@acme.test\r\nTo: dev@northwind.example\r\nSubject: Older\r\n"
             b"\r\nEarlier.\r\n")
    gmail.users().messages().send(userId="me", body={
        "raw": base64.urlsafe_b64encode(older).decode()}).execute()
    time.sleep(0.01)  # a later internalDate (milliseconds)
    raw = (b"From: Acme Support <support@acme.test>\r\nTo: Maria Lopez <maria@example.com>\r\n"
           b"Subject: Re: Charged twice\r\nMessage-ID: <reply-1@acme.test>\r\n"
           b"In-Reply-To: <ask-1@example.com>\r\nReferences: <ask-1@example.com>\r\n\r\n"
           b"Refunded.\r\n")
    sent = gmail.users().messages().send(userId="me", body={
        "raw": base64.urlsafe_b64encode(raw).decode()}).execute()

    page = requests.get(sandbox + "/_sandbox/", timeout=5).text
    forms = [f for f in forms_of(page) if f["action"] == "/_sandbox/reply"]
    assert len(forms) == 2
    form = forms[0]
    assert dict(form["fields"])["id"] == sent["id"]  # newest first
    fields = [(k, v) for k, v in form["fields"] if k != "body"] + [("body", "All good now")]
    answer = requests.post(sandbox + "/_sandbox/reply", data=fields, timeout=5)
    assert answer.status_code == 200
    assert ("<strong>Delivered</strong> a reply to &lt;reply-1@acme.test&gt; into the INBOX "
            "of support@acme.test: &ldquo;Re: Charged twice&rdquo; from Maria Lopez "
            "&lt;maria@example.com&gt;") in answer.text

    messages = requests.get(sandbox + "/_sandbox/messages?mailbox=support@acme.test",
                            timeout=5).json()["messages"]
    reply = messages[-1]
    assert "INBOX" in reply["labelIds"] and "SENT" not in reply["labelIds"]
    assert reply["from"] == "Maria Lopez <maria@example.com>"
    assert reply["subject"] == "Re: Charged twice"  # not "Re: Re:"
    assert reply["inReplyTo"] == "<reply-1@acme.test>"
    assert reply["references"] == "<ask-1@example.com> <reply-1@acme.test>"
    assert reply["threadId"] == sent["threadId"]
    assert b"All good now" in base64.b64decode(reply["raw"])
    push = receiver.wait_for(2)[-1]
    assert decode(push) == {"emailAddress": "support@acme.test",
                            "historyId": int(reply["historyId"])}


def test_reply_needs_a_sent_message(sandbox):
    delivered = requests.post(sandbox + "/_sandbox/deliver", timeout=5, json={
        "to": "support@acme.test", "from": "c@example.net", "subject": "s"}).json()
    refused = requests.post(sandbox + "/_sandbox/reply", timeout=5,
                            json={"mailbox": "support@acme.test", "id": delivered["id"]})
    assert refused.status_code == 400
    missing = requests.post(sandbox + "/_sandbox/reply", timeout=5,
                            json={"mailbox": "support@acme.test", "id": "ffff"})
    assert missing.status_code == 404


def test_the_page_revokes_the_apps_access_to_a_mailbox(sandbox, connect):
    tokens, _, _ = connect("support@acme.test")
    page = requests.get(sandbox + "/_sandbox/", timeout=5).text
    [revoke] = [f for f in forms_of(page) if f.get("action") == "/_sandbox/revoke-all"]
    answer = requests.post(sandbox + "/_sandbox/revoke-all", data=dict(revoke["fields"]),
                           allow_redirects=False, timeout=5)
    assert answer.status_code == 302 and answer.headers["Location"] == "/_sandbox/"
    refresh = requests.post(sandbox + "/token", timeout=5, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    profile = requests.get(sandbox + "/gmail/v1/users/me/profile", timeout=5,
                           headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert profile.status_code == 401

