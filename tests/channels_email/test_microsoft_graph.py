"""Microsoft 365 through the sandbox's Graph side over HTTP (requests, the real webhook
view): the validation handshake on both URLs, clientState checks, change and lifecycle
notifications, delta with an expired link, renewal by beat, send and find in Sent Items.
Tasks run in-process here; test_microsoft_worker.py runs them on a real Celery worker."""

from __future__ import annotations

import base64
import time
import urllib.parse
from datetime import timedelta
from email import message_from_bytes
from email.policy import default

import pytest
import requests
from django.utils import timezone

from channels_email.models import ConnectionStatus, EmailConnection, InboundEmail
from channels_email.sync import connection_sync, push_mark, push_unmark
from channels_email.tasks import process_inbound_email, renew_watches, start_watch
from helpdesk.coordination import redis_client, redis_key
from helpdesk.tenancy import tenant_scope, unscoped
from tests.channels_email.graph_support import (
    LIFECYCLE_PATH,
    NOTIFY_PATH,
    GraphCatcher,
    graph_fault,
    lifecycle,
    post_items,
    subscriptions,
    use_sandbox_graph,
)
from tests.sandbox_support import ms_mailbox, ms_sign_in, use_sandbox_microsoft
from tickets.models import Ticket

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.filterwarnings("ignore:response_mode='form_post':UserWarning")]
MAILBOX = "support@contoso.test"


@pytest.fixture
def graph(settings, sandbox, sandbox_https_url, sandbox_ca_file):
    """Microsoft 365 through the sandbox: msal and Graph over its TLS listener (its CA
    trusted by the provider's sessions), our webhooks behind a catcher."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    use_sandbox_microsoft(settings, sandbox, sandbox_https_url, sandbox_ca_file)
    catcher = GraphCatcher()
    use_sandbox_graph(settings, sandbox, catcher, sandbox_https_url)
    yield sandbox, catcher, (sandbox_https_url, sandbox_ca_file)
    catcher.close()


def connect(graph, tenant, address: str = MAILBOX) -> EmailConnection:
    """An admin connects ``address`` (Add Email Account > Outlook / Microsoft 365, the
    sandbox's sign-in pages, our callback: msal's auth code flow), then the start-watch
    task the callback queued runs (here, in-process): the Graph subscription."""
    from django.test import Client

    from tests.factories import MembershipFactory, UserFactory

    sandbox, _, _ = graph
    ms_mailbox(sandbox, address, address.split("@")[1].split(".")[0])
    admin = UserFactory()
    MembershipFactory(tenant=tenant, user=admin, role="admin")
    browser = Client()
    browser.force_login(admin)
    start = browser.post(f"/{tenant.slug}/settings/email/connect/microsoft/")
    assert start.status_code == 302, start.content
    query = ms_sign_in(start["Location"], address)
    assert isinstance(query, dict), query.text
    answer = browser.get("/oauth/microsoft/callback/?" + urllib.parse.urlencode(query))
    assert answer.status_code == 302, answer.content
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get(provider="microsoft", address=address)
    assert conn.cursor and not conn.subscription_id  # the subscription waits for the task
    assert start_watch.run(connection_id=conn.pk) is True
    with tenant_scope(tenant):
        conn.refresh_from_db()
    return conn


def deliver(sandbox, subject: str, address: str = MAILBOX, **extra) -> dict:
    answer = requests.post(sandbox + "/_sandbox/deliver", json={
        "to": address, "from": "Maria Lopez <maria@customer.example>", "subject": subject,
        "body": "Hello, the printer is on fire.", **extra}, timeout=5)
    answer.raise_for_status()
    return answer.json()


def sync_and_ingest(connection_id: int):
    push_unmark(connection_id)
    result = connection_sync(connection_id)
    for pk in result.new_rows:
        process_inbound_email.run(inbound_email_id=pk)
    return result


def titles(tenant) -> list[str]:
    with tenant_scope(tenant):
        return sorted(Ticket.objects.values_list("title", flat=True))


def pending(connection_id: int) -> bool:
    return bool(redis_client().exists(redis_key("sync-pending", connection_id)))


def test_the_handshake_answers_as_graph_requires_on_both_urls(client):
    token = "Validation: Testing client application reachability for subscription " \
            "Request-Id: 5a1e3c2b-1111-4222-8333-944445555666"
    for path in (NOTIFY_PATH, LIFECYCLE_PATH):
        answer = client.post(path + "?validationToken=" + requests.utils.quote(token),
                             data=b"", content_type="text/plain")
        assert answer.status_code == 200
        assert answer["Content-Type"].startswith("text/plain")
        assert answer.content.decode() == token


def test_subscription_is_created_through_the_handshake_with_its_own_secret(graph, tenant):
    sandbox, catcher, _ = graph
    conn = connect(graph, tenant)
    other = connect(graph, tenant, "sales@contoso.test")
    assert [h["path"] for h in catcher.handshakes] == [NOTIFY_PATH, LIFECYCLE_PATH] * 2
    assert all(h["status"] == 200 and h["body"].decode() == h["token"]
               for h in catcher.handshakes)
    [sub] = [s for s in subscriptions(sandbox) if s["id"] == conn.subscription_id]
    assert sub["clientState"] == conn.subscription_secret and len(conn.subscription_secret) > 40
    assert conn.subscription_secret != other.subscription_secret
    assert abs((conn.subscription_expires_at - timezone.now()).days - 7) <= 1


def test_a_notification_becomes_a_ticket(graph, client, tenant):
    sandbox, catcher, _ = graph
    conn = connect(graph, tenant)
    deliver(sandbox, "Printer on fire")
    push = catcher.next()
    push_unmark(conn.pk)
    answer = client.post(push["path"], data=push["raw"], content_type="application/json")
    assert answer.status_code == 202 and pending(conn.pk)
    assert len(sync_and_ingest(conn.pk).new_rows) == 1
    assert titles(tenant) == ["Printer on fire"]
    with unscoped():
        row = InboundEmail.objects.get()
    assert row.provider_thread_id.startswith("AAQk")  # Graph's conversationId


def test_a_wrong_client_state_changes_nothing(graph, client, tenant):
    sandbox, catcher, _ = graph
    conn = connect(graph, tenant)
    deliver(sandbox, "Forged")
    [(path, item)] = catcher.items(1)
    push_unmark(conn.pk)
    for forged in ("x" * len(conn.subscription_secret), "", None):
        answer = post_items(client, path, [{**item, "clientState": forged}])
        assert answer.status_code == 202
    unknown = post_items(client, path, [{**item, "subscriptionId": "not-ours"}])
    assert unknown.status_code == 202
    assert not pending(conn.pk)
    with unscoped():
        assert InboundEmail.objects.count() == 0
    assert client.post(path, data=b"{not json", content_type="application/json"
                       ).status_code == 400


def test_an_expired_delta_link_recovers_every_message(graph, tenant):
    sandbox, _, _ = graph
    conn = connect(graph, tenant)
    sync_and_ingest(conn.pk)  # the first round: the cursor is a delta link now
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.cursor.startswith(graph[2][0] + "/v1.0/")
    for n in range(3):
        deliver(sandbox, f"Lost {n}")
    requests.post(sandbox + "/_sandbox/graph/expire-delta", json={"mailbox": MAILBOX},
                  timeout=5).raise_for_status()
    result = sync_and_ingest(conn.pk)
    assert result.full_sync and len(result.new_rows) == 3
    assert titles(tenant) == ["Lost 0", "Lost 1", "Lost 2"]
    deliver(sandbox, "After")
    assert not sync_and_ingest(conn.pk).full_sync
    assert titles(tenant)[-1] == "Lost 2" and "After" in titles(tenant)


def test_missed_leads_to_a_catch_up(graph, client, tenant):
    sandbox, catcher, _ = graph
    conn = connect(graph, tenant)
    deliver(sandbox, "Never announced")
    catcher.next()  # Graph lost this one
    push_unmark(conn.pk)
    lifecycle(sandbox, MAILBOX, "missed")
    push = catcher.next()
    assert push["path"] == LIFECYCLE_PATH
    assert client.post(push["path"], data=push["raw"],
                       content_type="application/json").status_code == 202
    assert pending(conn.pk)
    sync_and_ingest(conn.pk)
    assert titles(tenant) == ["Never announced"]


def _webhook_queues_watch(monkeypatch) -> list[tuple[int, bool]]:
    """What the webhook queues, instead of queueing it (no worker runs here)."""
    queued: list[tuple[int, bool]] = []

    def delay(*, connection_id: int, fresh_token: bool = False) -> None:
        queued.append((connection_id, fresh_token))

    monkeypatch.setattr(start_watch, "delay", delay)
    return queued


@pytest.mark.parametrize("event", ["reauthorizationRequired", "subscriptionRemoved"])
def test_lifecycle_renews_or_recreates_and_the_mail_meanwhile_becomes_tickets(
        graph, client, tenant, monkeypatch, event):
    sandbox, catcher, _ = graph
    conn = connect(graph, tenant)
    old = conn.subscription_id
    queued = _webhook_queues_watch(monkeypatch)
    lifecycle(sandbox, MAILBOX, event)
    push = catcher.next()
    assert client.post(push["path"], data=push["raw"],
                       content_type="application/json").status_code == 202
    assert queued == [(conn.pk, True)]  # renew with a fresh token, in a task
    deliver(sandbox, "Meanwhile")  # no notification reaches us for this one
    time.sleep(0.3)
    push_unmark(conn.pk)
    used = conn.credentials["access_token"]
    assert start_watch.run(connection_id=conn.pk, fresh_token=True) is True  # the worker
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.credentials["access_token"] != used  # refreshed through msal first
    [sub] = [s for s in subscriptions(sandbox) if s["id"] == conn.subscription_id]
    assert sub["alive"] and not sub["needs_reauthorization"]
    assert (conn.subscription_id == old) == (event == "reauthorizationRequired")
    assert pending(conn.pk)  # the catch-up sync is queued
    sync_and_ingest(conn.pk)
    assert titles(tenant) == ["Meanwhile"]
    deliver(sandbox, "Announced again")
    [(_, item)] = catcher.items(1)[-1:]
    assert item["subscriptionId"] == conn.subscription_id


def test_beat_renews_a_subscription_near_expiry_and_recreates_a_lost_one(graph, tenant):
    sandbox, _, _ = graph
    conn = connect(graph, tenant)
    soon = timezone.now() + timedelta(hours=2)
    with tenant_scope(tenant):
        EmailConnection.objects.filter(pk=conn.pk).update(subscription_expires_at=soon)
    later = connect(graph, tenant, "sales@contoso.test")
    assert renew_watches.run() == 1  # only the one near expiry
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.subscription_expires_at > timezone.now() + timedelta(days=6)
    [sub] = [s for s in subscriptions(sandbox) if s["id"] == conn.subscription_id]
    assert sub["alive"]
    # Gone at Graph (a 404 on PATCH): recreated with a new secret, and caught up.
    lifecycle(sandbox, "sales@contoso.test", "subscriptionRemoved")
    with tenant_scope(tenant):
        EmailConnection.objects.filter(pk=later.pk).update(subscription_expires_at=soon)
    push_unmark(later.pk)
    assert renew_watches.run() == 1
    with tenant_scope(tenant):
        fresh = EmailConnection.objects.get(pk=later.pk)
    assert fresh.subscription_id != later.subscription_id
    assert fresh.subscription_secret != later.subscription_secret
    assert pending(later.pk)


def test_throttled_is_rate_limited_then_active(graph, tenant):
    sandbox, _, _ = graph
    conn = connect(graph, tenant)
    deliver(sandbox, "Busy day")
    graph_fault(sandbox, "too_many_requests", retry_after=30)
    from channels_email import providers

    with pytest.raises(providers.RateLimited) as raised:
        sync_and_ingest(conn.pk)
    assert raised.value.retry_after == 30
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.RATE_LIMITED
        assert 25 < (conn.rate_limited_until - timezone.now()).total_seconds() <= 30
        EmailConnection.objects.filter(pk=conn.pk).update(rate_limited_until=None)
    sync_and_ingest(conn.pk)
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.ACTIVE and titles(tenant) == ["Busy day"]


def test_send_keeps_our_headers_and_find_sent_finds_it(graph, tenant):
    from channels_email.tokens import authorized

    sandbox, _, _ = graph
    conn = connect(graph, tenant)
    ms_mailbox(sandbox, "maria@contoso.test", "contoso")
    raw = (b"From: support@contoso.test\r\nTo: maria@contoso.test\r\nSubject: Re: Help\r\n"
           b"Message-ID: <reply-1@helpdesk.test>\r\nIn-Reply-To: <q-1@customer.example>\r\n"
           b"References: <q-0@customer.example> <q-1@customer.example>\r\n\r\nOn it.\r\n")
    with tenant_scope(tenant):
        client = authorized(conn)
        assert client.find_sent("reply-1@helpdesk.test") is None
        sent = client.send(raw)
        assert client.find_sent("<reply-1@helpdesk.test>") == sent
    assert sent.provider_message_id.startswith("AAMk")
    assert sent.message_id_header == "reply-1@helpdesk.test"
    received = [m for m in requests.get(sandbox + "/_sandbox/messages",
                                        params={"mailbox": "maria@contoso.test"},
                                        timeout=5).json()["messages"]]
    [mail] = [message_from_bytes(base64.b64decode(m["raw"]), policy=default) for m in received]
    assert mail["Message-ID"] == "<reply-1@helpdesk.test>"
    assert mail["In-Reply-To"] == "<q-1@customer.example>"
    assert mail["References"] == "<q-0@customer.example> <q-1@customer.example>"


def test_find_sent_finds_a_reply_exchange_still_holds_in_drafts(graph, tenant):
    # Exchange's 202 means "saved in Drafts"; the transport moves it to Sent Items later.
    # A retry in between must see it was sent.
    from channels_email.tokens import authorized

    sandbox, _, _ = graph
    conn = connect(graph, tenant)
    requests.post(sandbox + "/_sandbox/settings", json={"graph_transport_delay_ms": 1500},
                  timeout=5).raise_for_status()
    raw = (b"From: support@contoso.test\r\nTo: x@example.net\r\nSubject: Re: Help\r\n"
           b"Message-ID: <reply-2@helpdesk.test>\r\n\r\nOn it.\r\n")
    with tenant_scope(tenant):
        client = authorized(conn)
        sent = client.send(raw)
        assert client.find_sent("<reply-2@helpdesk.test>") == sent

    def folder(name):
        return [m["internetMessageId"] for m in requests.get(
            f"{sandbox}/v1.0/me/mailFolders('{name}')/messages", timeout=5,
            headers={"Authorization": "Bearer " + conn.credentials["access_token"]},
            verify=False).json()["value"]]

    assert folder("drafts") == ["<reply-2@helpdesk.test>"] and folder("sentitems") == []
    time.sleep(1.6)
    assert folder("drafts") == [] and folder("sentitems") == ["<reply-2@helpdesk.test>"]


def test_a_message_over_the_request_limit_is_refused_before_sending(graph, tenant):
    from channels_email import providers
    from channels_email.tokens import authorized

    sandbox, _, _ = graph
    conn = connect(graph, tenant)
    raw = b"From: support@contoso.test\r\nTo: x@example.net\r\nSubject: big\r\n\r\n" + \
        b"x" * 3_100_000
    with tenant_scope(tenant), pytest.raises(providers.PermanentError) as refused:
        authorized(conn).send(raw)
    assert "4 MB" in str(refused.value)
    sent = requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]
    assert sent == []


def test_disconnect_deletes_the_subscription(graph, tenant, admin_user):
    from channels_email.connect import connection_disconnect

    sandbox, _, _ = graph
    conn = connect(graph, tenant)
    with tenant_scope(tenant):
        connection_disconnect(connection=conn, actor=admin_user)
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.DISCONNECTED and not conn.subscription_id
    assert [s for s in subscriptions(sandbox) if s["alive"]] == []


def test_a_duplicate_and_reordered_batch_is_one_sync(graph, client, tenant):
    sandbox, catcher, _ = graph
    conn = connect(graph, tenant)
    requests.post(sandbox + "/_sandbox/faults", json=[{"kind": "push_duplicate"},
                                                      {"kind": "push_reorder"}],
                  timeout=5).raise_for_status()
    for n in range(5):
        deliver(sandbox, f"Question {n}")
    items = []
    while len(items) < 10:
        items += catcher.items(1)
    push_mark(conn.pk)  # a sync is pending already: the notifications coalesce into it
    for path, item in items:
        assert post_items(client, path, [item]).status_code == 202
    assert len(sync_and_ingest(conn.pk).new_rows) == 5
    assert sync_and_ingest(conn.pk).new_rows == []
    assert titles(tenant) == [f"Question {n}" for n in range(5)]


def _a_ticket(graph, tenant):
    sandbox, _, _ = graph
    conn = connect(graph, tenant)
    deliver(sandbox, "Printer on fire")
    sync_and_ingest(conn.pk)
    with tenant_scope(tenant):
        return conn, Ticket.objects.get()


def test_the_composer_refuses_a_reply_too_big_for_graph_before_writing_anything(
        graph, tenant, admin_user):
    from helpdesk.errors import ApplicationError
    from tickets.models import Message
    from tickets.services import ticket_reply

    conn, ticket = _a_ticket(graph, tenant)
    scan = ("scan.pdf", b"%PDF" + b"\x00" * 2_400_000, "application/pdf")
    with tenant_scope(tenant):
        before = Message.objects.count()
        with pytest.raises(ApplicationError) as refused:
            ticket_reply(ticket=ticket, author=admin_user, body_text="See attached.",
                         public=True, attachments=[scan])
        assert refused.value.code == "message_too_large_for_mailbox"
        assert refused.value.field == "attachments"
        assert "Microsoft 365" in refused.value.message and MAILBOX in refused.value.message
        assert Message.objects.count() == before
        small = ("scan.pdf", b"%PDF" + b"\x00" * 1_500_000, "application/pdf")
        ticket_reply(ticket=ticket, author=admin_user, body_text="See attached.",
                     public=True, attachments=[small])
        assert Message.objects.count() == before + 1


NDR = """\
From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.test>
To: support@contoso.test
Date: Thu, 03 Dec 2026 14:30:00 +0000
Subject: Undeliverable: {subject}
Message-ID: <ndr-{n}@SN6PR01MB0000.namprd01.prod.outlook.com>
Auto-Submitted: auto-replied
X-MS-Exchange-Message-Is-Ndr:
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="ndr-b"

--ndr-b
Content-Type: text/plain; charset=us-ascii

Your message to nobody@fabrikam.test couldn't be delivered.
nobody wasn't found at fabrikam.test.

--ndr-b
Content-Type: message/delivery-status

Reporting-MTA: dns;SN6PR01MB0000.namprd01.prod.outlook.com
Received-From-MTA: dns;SN6PR01MB0001.namprd01.prod.outlook.com
Arrival-Date: Thu, 3 Dec 2026 14:29:58 +0000

Final-Recipient: rfc822;nobody@fabrikam.test
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found

--ndr-b
Content-Type: text/rfc822-headers

From: support@contoso.test
To: nobody@fabrikam.test
Subject: {subject}
Message-ID: <{message_id}>

--ndr-b--
"""


def test_an_exchange_ndr_marks_the_reply_bounced(graph, tenant, admin_user):
    from django.db import transaction

    from channels_email.outbound import deliver as deliver_reply
    from channels_email.outbound import reply_create
    from tickets.models import DeliveryStatus, Message

    sandbox, _, _ = graph
    conn, ticket = _a_ticket(graph, tenant)
    with tenant_scope(tenant), transaction.atomic():
        reply = reply_create(ticket=ticket, author=admin_user, body_text="On it.",
                             to=["nobody@fabrikam.test"])
    assert deliver_reply(reply.pk) == DeliveryStatus.DELIVERED
    with tenant_scope(tenant):
        reply.refresh_from_db()
    ndr = NDR.format(subject=reply.subject, message_id=reply.message_id_header, n=1)
    deliver(sandbox, "", raw=base64.b64encode(ndr.replace("\n", "\r\n").encode()).decode())
    sync_and_ingest(conn.pk)
    with tenant_scope(tenant):
        reply.refresh_from_db()
        assert reply.delivery_status == DeliveryStatus.BOUNCED
        assert "5.1.10" in reply.delivery_error
        assert Ticket.objects.count() == 1  # the NDR opened no ticket
        assert Message.objects.filter(ticket=ticket).count() == 2


def test_exchange_sending_limit_is_rate_limited_not_failed(graph, tenant, admin_user):
    from django.db import transaction

    from channels_email.outbound import SendDeferred, reply_create
    from channels_email.outbound import deliver as deliver_reply
    from tickets.models import DeliveryStatus

    sandbox, _, _ = graph
    requests.post(sandbox + "/_sandbox/settings", json={"graph_send_per_minute": 1},
                  timeout=5).raise_for_status()
    conn, ticket = _a_ticket(graph, tenant)
    with tenant_scope(tenant), transaction.atomic():
        first = reply_create(ticket=ticket, author=admin_user, body_text="One.")
        second = reply_create(ticket=ticket, author=admin_user, body_text="Two.")
    assert deliver_reply(first.pk) == DeliveryStatus.DELIVERED
    with pytest.raises(SendDeferred) as deferred:
        deliver_reply(second.pk)  # Exchange: 429 ErrorExceededMessageLimit, Retry-After
    assert 0 < deferred.value.wait <= 61
    with tenant_scope(tenant):
        second.refresh_from_db()
        conn.refresh_from_db()
    assert second.delivery_status == DeliveryStatus.PENDING and not second.delivery_error
    assert conn.status == ConnectionStatus.RATE_LIMITED
    assert "ErrorExceededMessageLimit" in conn.last_error
