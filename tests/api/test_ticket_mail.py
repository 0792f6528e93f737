"""Mail written over the API reaches the customer: a reply to an email ticket and the
first message of a ticket opened over the API go out through the Gmail sandbox over
HTTP, and their delivery status shows on the timeline; a reply that bounced shows as
Bounced (the next reply warns of the suppressed address) and, retried over the API,
goes out again under a new Message-ID; a Failed one retried goes out once."""

from __future__ import annotations

import base64
from email import message_from_bytes
from email.policy import default

import pytest
from django.test import Client

from channels_email import outbound
from channels_email.models import EmailConnection
from helpdesk.tenancy import tenant_scope
from tests.api.test_foundation import bearer, make_key
from tests.channels_email.test_gmail_flow import (  # noqa: F401 - fixtures
    admin_client,
    gmail,
    run_tasks,
)
from tests.channels_email.test_outbound import (  # noqa: F401 - fixtures
    conversation,
    sent_mail,
    ticket_thread,
)
from tests.channels_email.test_outbound_settings import a_dsn, deliver_raw
from tickets.models import DeliveryStatus, Message

pytestmark = pytest.mark.django_db(transaction=True)


def mime_of(sent: dict):
    return message_from_bytes(base64.b64decode(sent["raw"]), policy=default)


def test_a_reply_over_the_api_reaches_the_sandbox_mailbox(conversation, tenant,  # noqa: F811
                                                          admin_user):
    sandbox, _, ticket = conversation
    # Gmail keeps a reply in the customer's thread only when the subject matches
    # (PROVIDERS.md 3.3); the workspace's [#n] subject token would change it.
    tenant.subject_ticket_token = False
    tenant.save(update_fields=["subject_ticket_token"])
    _, key = make_key(tenant, admin_user, scope="write")
    api = Client()
    answer = api.post(f"/api/v1/tickets/{ticket.number}/replies/",
                      {"body": "We are on it.", "attachments": []}, **bearer(key))
    assert answer.status_code == 201, answer.content
    pending = answer.json()
    assert pending["delivery_status"] == "pending"
    assert pending["to_addresses"] == ["maria@customer.example"]
    assert pending["cc_addresses"] == ["bob@customer.example"]

    assert outbound.deliver(pending["id"]) == DeliveryStatus.DELIVERED
    [sent] = sent_mail(sandbox)
    mime = mime_of(sent)
    assert mime["To"] == "maria@customer.example" and mime["Cc"] == "bob@customer.example"
    assert "We are on it." in mime.get_body(("plain",)).get_content()
    assert sent["threadId"] == ticket_thread(tenant, ticket)
    with tenant_scope(tenant):
        message = Message.objects.get(pk=pending["id"])
    assert mime["Message-ID"] == f"<{message.message_id_header}>"
    timeline = api.get(f"/api/v1/tickets/{ticket.number}/timeline/", **bearer(key)).json()
    [shown] = [m for m in timeline["results"] if m["id"] == pending["id"]]
    assert shown["delivery_status"] == "delivered"


def test_a_ticket_opened_over_the_api_mails_the_contact_from_the_default_mailbox(
        conversation, tenant, admin_user):  # noqa: F811
    sandbox, conn, _ = conversation
    with tenant_scope(tenant):
        EmailConnection.objects.filter(pk=conn.pk).update(is_default=True)
    _, key = make_key(tenant, admin_user, scope="write")
    answer = Client().post("/api/v1/tickets/", {
        "contact_email": "nina@customer.example", "subject": "Your order 1234",
        "body": "It ships tomorrow."}, content_type="application/json", **bearer(key))
    assert answer.status_code == 201, answer.content
    number = answer.json()["number"]
    with tenant_scope(tenant):
        first = Message.objects.get(ticket__number=number)
    assert outbound.deliver(first.pk) == DeliveryStatus.DELIVERED
    [sent] = sent_mail(sandbox)
    mime = mime_of(sent)
    assert sent["mailbox"] == "support@acme.test"
    assert mime["To"] == "nina@customer.example"
    assert mime["Subject"] == f"[#{number}] Your order 1234"  # a new thread: no "Re:"


def test_a_failed_reply_retried_over_the_api_goes_out(conversation, tenant,  # noqa: F811
                                                       admin_user):
    sandbox, _, ticket = conversation
    _, key = make_key(tenant, admin_user, scope="write")
    api = Client()
    sent = api.post(f"/api/v1/tickets/{ticket.number}/replies/", {"body": "Try this."},
                    content_type="application/json", **bearer(key)).json()
    with tenant_scope(tenant):  # a permanent failure was recorded (say, a lost sign-in)
        Message.objects.filter(pk=sent["id"]).update(delivery_status=DeliveryStatus.FAILED,
                                                     delivery_error="Sign-in lost")
    retried = api.post(f"/api/v1/tickets/{ticket.number}/messages/{sent['id']}/retry/",
                       **bearer(key))
    assert retried.status_code == 200 and retried.json()["delivery_status"] == "pending"
    assert outbound.deliver(sent["id"]) == DeliveryStatus.DELIVERED
    assert len(sent_mail(sandbox)) == 1


def test_a_bounced_reply_shows_warns_and_goes_out_again_when_retried(
        conversation, tenant, admin_user):  # noqa: F811
    sandbox, conn, ticket = conversation
    _, key = make_key(tenant, admin_user, scope="write")
    api = Client()
    url = f"/api/v1/tickets/{ticket.number}/"
    sent = api.post(url + "replies/", {"body": "Try this.", "cc": []},
                    content_type="application/json", **bearer(key)).json()
    assert sent["warnings"] == []
    assert outbound.deliver(sent["id"]) == DeliveryStatus.DELIVERED
    with tenant_scope(tenant):
        message = Message.objects.get(pk=sent["id"])
    deliver_raw(sandbox, "support@acme.test",
                a_dsn(message, "maria@customer.example", "5.1.1"))  # no such user
    run_tasks(conn.pk)
    timeline = api.get(url + "timeline/", **bearer(key)).json()["results"]
    [shown] = [m for m in timeline if m["id"] == sent["id"]]
    assert shown["delivery_status"] == "bounced" and "5.1.1" in shown["delivery_error"]

    # The address is suppressed now: the composer's warning comes with the next reply.
    warned = api.post(url + "replies/", {"body": "Still there?", "cc": []},
                      content_type="application/json", **bearer(key)).json()
    assert [(w["code"], w["address"]) for w in warned["warnings"]] == [
        ("suppressed_hard_bounce", "maria@customer.example")]

    retried = api.post(f"{url}messages/{sent['id']}/retry/", **bearer(key))
    assert retried.status_code == 200 and retried.json()["delivery_status"] == "pending"
    assert outbound.deliver(sent["id"]) == DeliveryStatus.DELIVERED
    first, second = (mime_of(m) for m in sent_mail(sandbox))
    assert first["Message-ID"] == f"<{message.message_id_header}>"
    assert second["Message-ID"] != first["Message-ID"] and second["To"] == first["To"]
