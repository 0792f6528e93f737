"""Microsoft 365 with a real Celery worker on real Redis: Graph notifications -> webhook ->
sync task -> ingest task -> ticket; duplicate, reordered and concurrent notifications;
replies through sendMail (Delivered, throttled, a worker killed after Graph accepted)."""

from __future__ import annotations

import base64
import threading
import time
from email import message_from_bytes
from email.policy import default

import pytest
import requests
from django.conf import settings
from django.test import Client

from channels_email.models import ConnectionStatus, EmailConnection, InboundEmail
from helpdesk.tenancy import tenant_scope, unscoped
from tests.channels_email.graph_support import graph_fault, post_items
from tests.channels_email.test_gmail_worker import start_worker, wait_for
from tests.channels_email.test_microsoft_graph import (  # noqa: F401 - fixtures
    MAILBOX,
    connect,
    deliver,
    graph,
)
from tests.sandbox_support import ms_mailbox
from tickets.models import DeliveryStatus, Message, MessageKind, Ticket

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True),
              pytest.mark.filterwarnings("ignore:response_mode='form_post':UserWarning")]
CUSTOMER = "maria@fabrikam.test"


def _env() -> dict:
    return {"GRAPH_BASE_URL": settings.GRAPH_BASE_URL,
            "GRAPH_NOTIFICATION_URL": settings.GRAPH_NOTIFICATION_URL,
            "GRAPH_LIFECYCLE_URL": settings.GRAPH_LIFECYCLE_URL,
            "MS_CA_BUNDLE": settings.MS_CA_BUNDLE, "MS_CLIENT_ID": settings.MS_CLIENT_ID,
            "MS_CLIENT_SECRET": settings.MS_CLIENT_SECRET,
            "MS_AUTHORITY": settings.MS_AUTHORITY}


@pytest.fixture
def worker(tmp_path, graph):  # noqa: F811 - the fixture above
    sandbox, _, _ = graph
    log = tmp_path / "worker.log"
    proc = start_worker(sandbox, log, extra_env=_env())
    yield proc, log
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def forward(client, catcher, count: int) -> None:
    """Hand ``count`` notification items to our webhook, one POST each, as Graph would."""
    for path, item in catcher.items(count):
        assert post_items(client, path, [item]).status_code == 202


def _ticket_from_the_customer(graph, client, tenant, worker, **mail):  # noqa: F811
    sandbox, catcher, _ = graph
    proc, log = worker
    ms_mailbox(sandbox, CUSTOMER, "fabrikam")
    conn = connect(graph, tenant)
    sent = deliver(sandbox, "Printer on fire", **{"from": f"Maria Lopez <{CUSTOMER}>",
                                                  **mail})
    forward(client, catcher, 1)

    def ticket_exists():
        with tenant_scope(tenant):
            return Ticket.objects.exists()

    wait_for(ticket_exists, proc, log)
    with tenant_scope(tenant):
        return conn, Ticket.objects.get(), sent


def test_mail_becomes_a_ticket_with_contact_and_attachments_and_a_reply_appends(
        graph, client, tenant, worker):  # noqa: F811
    sandbox, catcher, _ = graph
    proc, log = worker
    pdf = base64.b64encode(b"%PDF-1.4 invoice").decode()
    conn, ticket, first = _ticket_from_the_customer(graph, client, tenant, worker,
                                                    attachments=[{
                                                        "filename": "invoice.pdf",
                                                        "content_type": "application/pdf",
                                                        "data_base64": pdf}])
    with tenant_scope(tenant):
        message = Message.objects.get(ticket=ticket)
        assert ticket.contact.email == CUSTOMER and ticket.contact.name == "Maria Lopez"
        assert [a.filename for a in message.attachments.all()] == ["invoice.pdf"]
    deliver(sandbox, "Re: Printer on fire", **{
        "from": f"Maria Lopez <{CUSTOMER}>",
        "headers": {"In-Reply-To": first["messageId"], "References": first["messageId"]}})
    forward(client, catcher, 1)

    def appended():
        with tenant_scope(tenant):
            return Message.objects.filter(ticket=ticket).count() == 2

    wait_for(appended, proc, log)
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 1


def test_duplicate_reordered_and_concurrent_notifications_ingest_each_message_once(
        graph, client, tenant, worker):  # noqa: F811
    sandbox, catcher, _ = graph
    proc, log = worker
    connect(graph, tenant)
    requests.post(sandbox + "/_sandbox/faults", json=[{"kind": "push_duplicate"},
                                                      {"kind": "push_reorder"}],
                  timeout=5).raise_for_status()
    for n in range(5):
        deliver(sandbox, f"Question {n}")
    items = []
    while len(items) < 10:  # each notification twice, newest first
        items += catcher.items(1)
    assert len({item["resourceData"]["id"] for _, item in items}) == 5
    answers: list[int] = []

    def post(batch):
        own = Client()  # one per thread, as concurrent requests from Graph would be
        for path, item in batch:
            answers.append(post_items(own, path, [item]).status_code)

    threads = [threading.Thread(target=post, args=(items[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [202] * 10

    def all_five():
        with tenant_scope(tenant):
            return Ticket.objects.count() == 5

    wait_for(all_five, proc, log)
    time.sleep(1.5)  # let any straggling duplicate task finish
    with unscoped():
        assert InboundEmail.objects.count() == 5
        assert InboundEmail.objects.filter(state="processed").count() == 5
    with tenant_scope(tenant):
        assert sorted(Ticket.objects.values_list("title", flat=True)) == [
            f"Question {n}" for n in range(5)]


def _reply(tenant, ticket, user):
    from django.db import transaction

    from channels_email.outbound import reply_create

    with tenant_scope(tenant), transaction.atomic():
        return reply_create(ticket=ticket, author=user, body_text="We are on it.")


def _status(tenant, message):
    with tenant_scope(tenant):
        return Message.objects.values_list("delivery_status", "attempts").get(pk=message.pk)


def _sent(sandbox) -> list[dict]:
    return requests.get(sandbox + "/_sandbox/sent", params={"mailbox": MAILBOX},
                        timeout=5).json()["messages"]


def test_an_agent_reply_reaches_the_customer_with_our_threading_headers_and_is_delivered(
        graph, client, tenant, admin_user, worker):  # noqa: F811
    sandbox, _, _ = graph
    proc, log = worker
    conn, ticket, first = _ticket_from_the_customer(graph, client, tenant, worker)
    message = _reply(tenant, ticket, admin_user)
    wait_for(lambda: _status(tenant, message)[0] == DeliveryStatus.DELIVERED, proc, log)
    with tenant_scope(tenant):
        message.refresh_from_db()
    assert message.provider_message_id.startswith("AAMk")  # read back from Sent Items
    inbox = requests.get(sandbox + "/_sandbox/messages", params={"mailbox": CUSTOMER},
                         timeout=5).json()["messages"]
    [mail] = [message_from_bytes(base64.b64decode(m["raw"]), policy=default) for m in inbox]
    assert mail["Message-ID"] == f"<{message.message_id_header}>"
    assert mail["In-Reply-To"] == first["messageId"]
    assert first["messageId"] in mail["References"]
    assert mail["Subject"] == f"Re: [#{ticket.number}] Printer on fire"
    assert len(_sent(sandbox)) == 1


def test_exchange_throttling_is_rate_limited_then_delivered_and_active(
        graph, client, tenant, admin_user, worker):  # noqa: F811
    sandbox, _, _ = graph
    proc, log = worker
    conn, ticket, _ = _ticket_from_the_customer(graph, client, tenant, worker)
    graph_fault(sandbox, "too_many_requests", retry_after=2)
    message = _reply(tenant, ticket, admin_user)

    def rate_limited():
        with tenant_scope(tenant):
            return EmailConnection.objects.get(pk=conn.pk).status == \
                ConnectionStatus.RATE_LIMITED

    wait_for(rate_limited, proc, log, seconds=30)
    assert _status(tenant, message)[0] == DeliveryStatus.PENDING  # not Failed
    wait_for(lambda: _status(tenant, message)[0] == DeliveryStatus.DELIVERED, proc, log)
    with tenant_scope(tenant):
        assert EmailConnection.objects.get(pk=conn.pk).status == ConnectionStatus.ACTIVE
    assert len(_sent(sandbox)) == 1


def test_a_worker_killed_after_graph_accepted_the_reply_leaves_one_copy_in_sent_items(
        graph, client, tenant, admin_user, worker):  # noqa: F811
    from channels_email.tasks import redrive_pending_replies

    sandbox, _, _ = graph
    proc, log = worker
    conn, ticket, _ = _ticket_from_the_customer(graph, client, tenant, worker)
    # Graph takes the mail (202 pending), the worker dies before it hears the answer.
    graph_fault(sandbox, "slow_after_send", delay=20)
    message = _reply(tenant, ticket, admin_user)
    wait_for(lambda: len(_sent(sandbox)) == 1, proc, log)
    proc.kill()
    proc.wait(timeout=30)
    assert _status(tenant, message) == (DeliveryStatus.PENDING, 1)
    replacement = start_worker(sandbox, log, extra_env=_env())
    try:
        assert redrive_pending_replies(older_than_minutes=0) == 1
        wait_for(lambda: _status(tenant, message)[0] == DeliveryStatus.DELIVERED,
                 replacement, log)
    finally:
        replacement.terminate()
        replacement.wait(timeout=30)
    assert _status(tenant, message) == (DeliveryStatus.DELIVERED, 2)
    assert len(_sent(sandbox)) == 1  # found in Sent Items by internetMessageId
    with tenant_scope(tenant):
        assert Message.objects.filter(kind=MessageKind.OUTBOUND).count() == 1
