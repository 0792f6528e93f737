"""Outgoing webhooks end to end with a real Celery worker (outbound and webhooks queues)
on real Redis and the Gmail sandbox: a reply posted over the REST API goes out, and
``message.delivery_status_changed`` reaches a real HTTP receiver, signed, first as
Delivered and then, when the receiving server's bounce comes in, as Bounced."""

from __future__ import annotations

import base64
import subprocess
from email import message_from_bytes
from email.policy import default

import pytest
import requests
from django.test import Client
from standardwebhooks.webhooks import Webhook

from helpdesk.services import api_key_create
from helpdesk.tenancy import tenant_scope
from helpdesk.webhooks_out import live_secrets, webhook_endpoint_create
from tests.channels_email.test_gmail_flow import (  # noqa: F401 - fixtures
    admin_client,
    connected_mailbox,
    deliver,
    gmail,
    run_tasks,
)
from tests.channels_email.test_gmail_worker import start_worker as start_gmail_worker
from tests.channels_email.test_outbound import conversation  # noqa: F401 - fixture
from tests.helpdesk.webhook_receiver import Receiver
from tickets.models import DeliveryStatus, Message

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def start_worker(sandbox: str, log) -> subprocess.Popen:
    """A worker consuming the queues of sending replies and delivering webhooks."""
    return start_gmail_worker(sandbox, log, queues="outbound,webhooks")


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def worker(tmp_path, conversation):  # noqa: F811 - the fixture imported above
    sandbox, _, _ = conversation
    log = tmp_path / "worker.log"
    proc = start_worker(sandbox, log)
    yield proc, log
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def _bounce_for(message_id_header: str) -> bytes:
    return (
        "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\n"
        "To: support@acme.test\r\nSubject: Delivery Status Notification (Failure)\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nAddress not found.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; googlemail.com\r\n\r\n"
        "Final-Recipient: rfc822; maria@customer.example\r\nAction: failed\r\n"
        "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 The email account does not exist\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{message_id_header}>\r\nSubject: Re: Printer on fire\r\n"
        "\r\n--B--\r\n"
    ).encode()


def test_delivered_then_bounced_reply_reach_the_receiver_signed(
        conversation, worker, receiver, tenant, admin_user):  # noqa: F811
    sandbox, conn, ticket = conversation
    proc, log = worker
    with tenant_scope(tenant):
        endpoint = webhook_endpoint_create(tenant=tenant, actor=admin_user, url=receiver.url,
                                           events=["message.delivery_status_changed"])
        _, key = api_key_create(tenant=tenant, actor=admin_user, name="CRM", scope="write")
    posted = Client().post(f"/api/v1/tickets/{ticket.number}/replies/",
                           {"body": "We are on it."}, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {key}")
    assert posted.status_code == 201, posted.content
    assert posted.json()["delivery_status"] == DeliveryStatus.PENDING
    with tenant_scope(tenant):
        message = Message.objects.get(pk=posted.json()["id"])
    verifier = Webhook(live_secrets(endpoint)[0])

    def statuses(received):
        return [verifier.verify(r.body, r.headers)["data"]["delivery_status"]
                for r in received]

    receiver.wait_for(lambda got: statuses(got) == [DeliveryStatus.DELIVERED], proc=proc,
                      log=log)
    delivered = verifier.verify(receiver.received[0].body, receiver.received[0].headers)
    assert delivered["type"] == "message.delivery_status_changed"
    assert delivered["data"]["id"] == message.pk and delivered["data"]["ticket"] == ticket.pk
    assert delivered["data"]["ticket_number"] == ticket.number
    sent = requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]
    assert len(sent) == 1  # the sandbox mailbox has the reply
    mime = message_from_bytes(base64.b64decode(sent[0]["raw"]), policy=default)
    assert "We are on it." in mime.get_body(("plain",)).get_content()

    with tenant_scope(tenant):
        message.refresh_from_db()
    requests.post(sandbox + "/_sandbox/deliver", json={
        "to": "support@acme.test",
        "raw": base64.b64encode(_bounce_for(message.message_id_header)).decode()},
        timeout=5).raise_for_status()
    run_tasks(conn.pk)  # ingest the report here; its event goes out through the worker
    receiver.wait_for(lambda got: statuses(got) == [DeliveryStatus.DELIVERED,
                                                    DeliveryStatus.BOUNCED],
                      proc=proc, log=log)
    bounced = verifier.verify(receiver.received[1].body, receiver.received[1].headers)
    assert "5.1.1" in bounced["data"]["delivery_error"]
    assert receiver.received[0].headers["webhook-id"] != receiver.received[1].headers[
        "webhook-id"]
