"""Who a reply goes to and through which mailbox, the suppression list, the optional
acknowledgement of new tickets, and the DMARC verdict in the ticket view; over the Gmail
sandbox over HTTP."""

from __future__ import annotations

import base64
import re
from email import message_from_bytes
from email.policy import default
from types import SimpleNamespace

import pytest
import requests

from channels_email import outbound
from channels_email.models import EmailConnection, InboundEmail, SuppressedAddress
from channels_email.selectors import reply_recipients
from helpdesk.models import AuditEvent
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_flow import (  # noqa: F401 - fixtures
    admin_client,
    connect_mailbox,
    connected_mailbox,
    deliver,
    gmail,
    run_tasks,
)
from tests.channels_email.test_outbound import (  # noqa: F401 - fixtures
    conversation,
    reply,
    sent_mail,
)
from tests.factories import ContactFactory, TicketFactory
from tickets.models import DeliveryStatus, Message, Ticket

pytestmark = pytest.mark.django_db(transaction=True)

PASS = ("mx.google.com; spf=pass smtp.mailfrom=customer.example; "
        "dmarc=pass header.from=customer.example")
FAIL = ("mx.google.com; spf=fail smtp.mailfrom=customer.example; "
        "dmarc=fail header.from=customer.example")


def mime_of(sent: dict):
    return message_from_bytes(base64.b64decode(sent["raw"]), policy=default)


def a_dsn(message: Message, recipient: str, status: str, action: str = "failed") -> bytes:
    return (
        "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\n"
        "To: support@acme.test\r\nSubject: Delivery Status Notification\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nDelivery problem.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; googlemail.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\n"
        f"Status: {status}\r\nDiagnostic-Code: smtp; 550 {status} mailbox unavailable\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{message.message_id_header}>\r\nSubject: {message.subject}\r\n"
        "\r\n--B--\r\n"
    ).encode()


def deliver_raw(sandbox, to: str, raw: bytes) -> None:
    requests.post(sandbox + "/_sandbox/deliver", json={
        "to": to, "raw": base64.b64encode(raw).decode()}, timeout=5).raise_for_status()


# ------------------------------------------------------------------ recipients


def test_reply_goes_to_the_latest_reply_to_and_never_copies_our_own_addresses(
        gmail, admin_client, tenant, admin_user):  # noqa: F811
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    with tenant_scope(tenant):
        conn.alias_addresses = ["help@acme.test"]
        conn.save()
    deliver(sandbox, "support@acme.test", "Invoice wrong",
            headers={"Reply-To": "Accounts <accounts@customer.example>",
                     "Cc": "help@acme.test, Bob <bob@customer.example>"})
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
        # An agent later added our alias to the ticket's CC by hand: still never copied.
        Ticket.objects.filter(pk=ticket.pk).update(
            cc_addresses=["bob@customer.example", "help@acme.test"])
        ticket.refresh_from_db()
        assert reply_recipients(ticket=ticket) == (["accounts@customer.example"],
                                                   ["bob@customer.example"])
    message = reply(tenant, ticket, admin_user)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    mime = mime_of(sent_mail(sandbox)[-1])
    assert mime["To"] == "accounts@customer.example" and mime["Cc"] == "bob@customer.example"

    # A later mail without Reply-To: the next reply goes to its sender.
    deliver(sandbox, "support@acme.test", "Re: Invoice wrong",
            headers={"In-Reply-To": f"<{message.message_id_header}>"})
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert reply_recipients(ticket=ticket)[0] == ["maria@customer.example"]


def test_when_a_copied_colleague_answers_the_customer_stays_in_copy(
        conversation, tenant):  # noqa: F811
    sandbox, conn, ticket = conversation
    deliver(sandbox, "support@acme.test", "Re: Printer on fire",
            **{"from": "Bob <bob@customer.example>"},
            headers={"In-Reply-To": f"<{ticket_message_id(tenant, ticket)}>"})
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        ticket.refresh_from_db()
        assert ticket.messages.count() == 2
        assert reply_recipients(ticket=ticket) == (["bob@customer.example"],
                                                   ["maria@customer.example"])


def ticket_message_id(tenant, ticket) -> str:
    from channels_email.models import InboundEmail

    with tenant_scope(tenant):
        return InboundEmail.objects.filter(ticket=ticket).first().message_id_header


def test_a_reply_to_naming_our_own_mailbox_falls_back_to_the_sender(
        conversation, tenant):  # noqa: F811
    from channels_email.models import InboundEmail

    _, conn, ticket = conversation
    with tenant_scope(tenant):
        InboundEmail.objects.filter(ticket=ticket).update(
            details={"reply_to": ["support@acme.test"]})
        assert reply_recipients(ticket=ticket)[0] == ["maria@customer.example"]


# -------------------------------------------------------------- which mailbox


def test_replies_go_out_through_the_mapped_mailbox_without_the_other_mailboxs_thread(
        gmail, admin_client, tenant, admin_user):  # noqa: F811
    sandbox, _ = gmail
    connect_mailbox(admin_client, tenant, "support@acme.test")
    connect_mailbox(admin_client, tenant, "replies@acme.test")
    with tenant_scope(tenant):
        support = EmailConnection.objects.get(address="support@acme.test")
        replies = EmailConnection.objects.get(address="replies@acme.test")
    answer = admin_client.post(f"/{tenant.slug}/settings/email/{support.pk}/", {
        "display_name": "Acme", "routing_mode": "none", "reply_connection": replies.pk,
        "acknowledgement_text": "Ticket #{number}"})
    assert answer.status_code == 302
    deliver(sandbox, "support@acme.test", "Where is my order")
    run_tasks(support.pk)
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
        assert AuditEvent.objects.filter(action="email_connection.settings_changed").exists()
    message = reply(tenant, ticket, admin_user)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    [sent] = sent_mail(sandbox)
    assert sent["mailbox"] == "replies@acme.test"
    assert mime_of(sent)["From"] == "replies@acme.test"
    # Sent without support@'s Gmail thread id (meaningless in another mailbox), threaded
    # by its headers: the customer's answer to it, reaching replies@, joins the ticket.
    deliver(sandbox, "replies@acme.test", "Re: Where is my order",
            headers={"In-Reply-To": f"<{message.message_id_header}>"})
    run_tasks(replies.pk)
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 1 and ticket.messages.count() == 3

    # replies@ is disconnected later: replies fall back to the ticket's own mailbox.
    admin_client.post(f"/{tenant.slug}/settings/email/{replies.pk}/disconnect/")
    second = reply(tenant, ticket, admin_user, text="Shipped today.")
    assert outbound.deliver(second.pk) == DeliveryStatus.DELIVERED
    assert sent_mail(sandbox)[-1]["mailbox"] == "support@acme.test"


def test_a_ticket_that_did_not_come_by_email_replies_through_the_default_mailbox(
        gmail, admin_client, tenant, admin_user, agent):  # noqa: F811
    from django.test import Client

    sandbox, _ = gmail
    connect_mailbox(admin_client, tenant, "support@acme.test")
    connect_mailbox(admin_client, tenant, "hello@acme.test")
    with tenant_scope(tenant):
        support = EmailConnection.objects.get(address="support@acme.test")
        hello = EmailConnection.objects.get(address="hello@acme.test")
        phoned = TicketFactory(tenant=tenant, contact=ContactFactory(
            tenant=tenant, email="caller@customer.example"), source_channel="manual")
    client = Client()  # the agent's browser, beside the admin's
    client.force_login(agent)
    url = f"/{tenant.slug}/tickets/{phoned.number}/"
    page = client.get(url).content.decode()
    assert "No mailbox to reply from" in page
    # The composer starts on an internal note, the one thing that can be sent.
    assert re.search(r'<input type="radio" name="mode" value="note"[^>]*checked', page)
    assert not re.search(r'<input type="radio" name="mode" value="reply"[^>]*checked', page)
    answer = client.post(url + "reply/", {"mode": "reply", "body": "Called you back."})
    assert answer.status_code == 400 and "no mailbox to reply from" in \
        answer.content.decode().lower()

    # Making hello@ the default takes the role from support@ (one default per workspace).
    for conn in (support, hello):
        assert admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/", {
            "display_name": "", "routing_mode": "none", "is_default": "on",
            "acknowledgement_text": "x"}).status_code == 302
    with tenant_scope(tenant):
        assert list(EmailConnection.objects.filter(is_default=True)) == [hello]
    assert "From: hello@acme.test" in client.get(url).content.decode()
    assert client.post(url + "reply/", {"mode": "reply",
                                        "body": "Called you back."}).status_code == 302
    with tenant_scope(tenant):
        message = phoned.messages.get(kind="outbound")
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    [sent] = sent_mail(sandbox)
    assert sent["mailbox"] == "hello@acme.test"
    assert mime_of(sent)["To"] == "caller@customer.example"


def test_saving_settings_keeps_what_a_worker_wrote_meanwhile(
        gmail, admin_client, tenant):  # noqa: F811
    from channels_email.services import connection_settings_save

    connect_mailbox(admin_client, tenant, "support@acme.test")
    with tenant_scope(tenant):
        stale = EmailConnection.objects.get()  # the admin's form loaded this copy
        EmailConnection.objects.filter(pk=stale.pk).update(
            cursor="999", status="rate_limited", consecutive_errors=3)
        stale.display_name = "Acme"
        connection_settings_save(connection=stale, actor=None, changed=["display_name"])
        fresh = EmailConnection.objects.get()
    assert fresh.display_name == "Acme"
    assert (fresh.cursor, fresh.status, fresh.consecutive_errors) == ("999", "rate_limited", 3)


def test_settings_refuse_unknown_placeholders_and_another_workspaces_mailbox(
        gmail, admin_client, tenant, other_tenant):  # noqa: F811
    from tests.factories import EmailConnectionFactory

    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    foreign = EmailConnectionFactory(tenant=other_tenant)
    url = f"/{tenant.slug}/settings/email/{conn.pk}/"
    answer = admin_client.post(url, {"display_name": "", "routing_mode": "none",
                                     "reply_connection": foreign.pk,
                                     "send_acknowledgement": "on",
                                     "acknowledgement_text": "Hi {name.__class__} {nmber}"})
    page = answer.content.decode()
    assert answer.status_code == 400
    assert "Select a valid choice" in page and "Unknown placeholder" in page
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.reply_connection_id is None and not conn.send_acknowledgement


def test_admins_set_a_mailboxs_filters_and_refused_mail_is_kept_with_the_rule(
        gmail, admin_client, tenant):  # noqa: F811
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    url = f"/{tenant.slug}/settings/email/{conn.pk}/"
    filters = {"section": "filters", "filters-skip_auto_replies": "on",
               "filters-import_cc": "on", "filters-allowed_emails": "both",
               "filters-allowed_senders": "anyone", "filters-body_preference": "html",
               "filters-sender_rate_limit": "20", "filters-sender_rate_window_minutes": "10"}
    refused = admin_client.post(url, {
        **filters, "filters-alias_addresses": "help@acme.test\nnot an address",
        "filters-block_list": "/([unclosed/", "filters-allowed_sender_domains": "@@",
        "filters-sender_rate_window_minutes": "0"})
    page = refused.content.decode()
    assert refused.status_code == 400
    for error in ("not an address is not an email address", "/([unclosed/: invalid "
                  "regular expression", "@@ is not a domain name", "Between 1 and 1440"):
        assert error in page
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.alias_addresses == [] and conn.block_list == []

    saved = admin_client.post(url, {
        **filters, "filters-alias_addresses": "Help@Acme.test\r\nhelp@acme.test\r\n",
        "filters-block_list": "*@spam.example\r\n/win a prize/",
        "filters-allowed_sender_domains": "@Customer.Example"})
    assert saved.status_code == 302
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.alias_addresses == ["help@acme.test"]
        assert conn.block_list == ["*@spam.example", "/win a prize/"]
        assert conn.allowed_sender_domains == ["customer.example"]
        assert conn.display_name == "" and conn.routing_mode == "none"  # other form's
        assert AuditEvent.objects.filter(action="email_connection.settings_changed").exists()
    page = admin_client.get(url).content.decode()
    assert "help@acme.test" in page and "*@spam.example" in page

    deliver(sandbox, "support@acme.test", "You may win a prize")  # Maria, customer.example
    deliver(sandbox, "support@acme.test", "Order 7", **{"from": "bob@elsewhere.example"})
    deliver(sandbox, "support@acme.test", "Printer on fire")
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert list(Ticket.objects.values_list("title", flat=True)) == ["Printer on fire"]
        reasons = sorted(InboundEmail.objects.filter(state="skipped")
                         .values_list("reason", flat=True))
    assert len(reasons) == 2
    assert reasons[0].startswith("blocked") and "win a prize" in reasons[0]
    assert reasons[1].startswith("domain") and "elsewhere.example" in reasons[1]


# ------------------------------------------------------------------ suppression


def test_a_hard_bounce_suppresses_the_address_and_the_composer_warns(
        conversation, client, tenant, admin_user, agent):  # noqa: F811
    sandbox, conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    # A soft bounce (4.x.x) and a report about an address we never wrote to: no entry.
    deliver_raw(sandbox, "support@acme.test", a_dsn(message, "maria@customer.example",
                                                    "4.2.2"))
    deliver_raw(sandbox, "support@acme.test", a_dsn(message, "victim@elsewhere.example",
                                                    "5.1.1"))
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert not SuppressedAddress.objects.exists()
    deliver_raw(sandbox, "support@acme.test", a_dsn(message, "maria@customer.example",
                                                    "5.1.1"))
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        [entry] = SuppressedAddress.objects.all()
        message.refresh_from_db()
    assert entry.email == "maria@customer.example" and entry.reason == "hard_bounce"
    assert "5.1.1" in entry.details and entry.inbound_email_id
    assert message.delivery_status == DeliveryStatus.BOUNCED

    client.force_login(agent)
    page = client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert "maria@customer.example</strong> is on the suppression list" in page

    # Admins see the list and can take the address off it.
    admin = client
    admin.force_login(admin_user)
    listing = admin.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "maria@customer.example" in listing and "Suppression list" in listing
    answer = admin.post(f"/{tenant.slug}/settings/email/suppressions/{entry.pk}/remove/")
    assert answer.status_code == 302
    with tenant_scope(tenant):
        assert not SuppressedAddress.objects.exists()
        assert AuditEvent.objects.filter(action="suppression.removed").exists()

    # And can add one by hand (case-insensitive; a bad value is refused, naming it).
    url = f"/{tenant.slug}/settings/email/suppressions/add/"
    refused = admin.post(url, {"email": "not an address"}, follow=True)
    assert "not an address is not an email address" in refused.content.decode()
    admin.post(url, {"email": "Maria@Customer.Example"})
    with tenant_scope(tenant):
        [entry] = SuppressedAddress.objects.all()
    assert (entry.email, entry.reason) == ("maria@customer.example", "manual")
    client.force_login(agent)
    page = client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert "maria@customer.example</strong> is on the suppression list (added by an admin" \
        in page


def an_abuse_report(message_id_header: str, *, complainer: str = "",
                    kind: str = "abuse", dmarc: str = "pass") -> bytes:
    """An RFC 5965 feedback report about the message, the way mailbox providers send
    them: signed (DMARC passes), the reported message embedded, the complainer named or
    (usually) redacted."""
    named = f"Original-Rcpt-To: <{complainer}>\r\n" if complainer else ""
    return (
        f"Authentication-Results: mx.google.com; dkim=pass header.i=@fbl.mailbox.example; "
        f"dmarc={dmarc} header.from=fbl.mailbox.example\r\n"
        "From: Feedback Loop <feedback@fbl.mailbox.example>\r\n"
        "To: support@acme.test\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
        "--F\r\nContent-Type: text/plain\r\n\r\nA recipient marked this as spam.\r\n"
        "--F\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {kind}\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\n{named}"
        "\r\n--F\r\nContent-Type: message/rfc822\r\n\r\n"
        "From: support@acme.test\r\nTo: redacted@mailbox.example\r\n"
        f"Message-ID: <{message_id_header}>\r\nSubject: Re: Printer on fire\r\n\r\n"
        "We are on it.\r\n--F--\r\n"
    ).encode()


def test_a_spam_complaint_about_our_reply_suppresses_the_complainer(
        conversation, client, tenant, admin_user, agent):  # noqa: F811
    sandbox, conn, ticket = conversation
    alone = reply(tenant, ticket, admin_user, cc=[])  # to Maria only
    copied = reply(tenant, ticket, admin_user, text="Looping in Ops.",
                   cc=["ops@customer.example"])
    for message in (alone, copied):
        assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    # Reports that suppress nobody: one about a message that is not ours, a redacted one
    # about the reply two people got, one naming somebody we never wrote to, a forged one
    # (DMARC fails: anybody who saw our Message-ID could write it) and a "not spam" one.
    deliver_raw(sandbox, "support@acme.test", an_abuse_report("spam.1@elsewhere.example",
                                                              complainer="maria@customer.example"))
    deliver_raw(sandbox, "support@acme.test", an_abuse_report(copied.message_id_header))
    deliver_raw(sandbox, "support@acme.test", an_abuse_report(
        copied.message_id_header, complainer="stranger@elsewhere.example"))
    deliver_raw(sandbox, "support@acme.test", an_abuse_report(
        alone.message_id_header, complainer="maria@customer.example", dmarc="fail"))
    deliver_raw(sandbox, "support@acme.test", an_abuse_report(
        alone.message_id_header, complainer="maria@customer.example", kind="not-spam"))
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert not SuppressedAddress.objects.exists()
        assert InboundEmail.objects.filter(reason__startswith="complaint").count() == 5

    # Redacted, about the reply only Maria got: Maria. Named, about the copied one: Ops.
    deliver_raw(sandbox, "support@acme.test", an_abuse_report(alone.message_id_header))
    deliver_raw(sandbox, "support@acme.test", an_abuse_report(
        copied.message_id_header, complainer="Ops@Customer.Example"))
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        entries = {s.email: s for s in SuppressedAddress.objects.all()}
        report = InboundEmail.objects.filter(reason__startswith="complaint",
                                             message=alone).latest("id")
        alone.refresh_from_db()
        assert Ticket.objects.count() == 1 and ticket.messages.count() == 3
    assert sorted(entries) == ["maria@customer.example", "ops@customer.example"]
    assert {e.reason for e in entries.values()} == {"complaint"}
    assert entries["maria@customer.example"].details == "Reported as spam (abuse)"
    assert entries["maria@customer.example"].inbound_email_id == report.pk
    assert report.state == "skipped" and report.ticket_id == ticket.pk
    assert alone.delivery_status == DeliveryStatus.DELIVERED  # it was delivered
    client.force_login(agent)
    page = client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert "maria@customer.example</strong> is on the suppression list (spam complaint: " \
        "Reported as spam (abuse)" in page and "reported an earlier email from us" in page


def test_the_suppression_list_holds_lower_case_addresses_only(tenant):
    from django.db import IntegrityError, transaction

    with tenant_scope(tenant), pytest.raises(IntegrityError), transaction.atomic():
        SuppressedAddress.objects.create(tenant=tenant, email="Maria@Customer.Example",
                                         reason="manual")


def test_retry_sends_a_bounced_reply_again_under_a_new_message_id(
        conversation, tenant, admin_user):  # noqa: F811
    sandbox, conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    deliver_raw(sandbox, "support@acme.test", a_dsn(message, "maria@customer.example",
                                                    "4.2.2"))  # mailbox full, for now
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        message.refresh_from_db()
        assert message.delivery_status == DeliveryStatus.BOUNCED
        assert outbound.reply_retry(message=message)
    first_copy = SimpleNamespace(message_id_header=message.message_id_header,
                                 subject=message.subject)
    # A second report about the first copy (Bob's, say) arrives after the Retry: it is
    # about the old copy and must not stop the new one.
    deliver_raw(sandbox, "support@acme.test", a_dsn(first_copy, "bob@customer.example",
                                                    "5.1.1"))
    run_tasks(conn.pk)
    # Gmail has the bounced copy under the old Message-ID: it must not pass for this one.
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    first, second = (mime_of(sent) for sent in sent_mail(sandbox))
    with tenant_scope(tenant):
        message.refresh_from_db()
    assert second["Message-ID"] == f"<{message.message_id_header}>" != first["Message-ID"]
    assert second["In-Reply-To"] == first["In-Reply-To"] and second["To"] == first["To"]
    deliver_raw(sandbox, "support@acme.test", a_dsn(first_copy, "maria@customer.example",
                                                    "4.2.2"))  # the old id, once more
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        message.refresh_from_db()
    assert message.delivery_status == DeliveryStatus.DELIVERED
    deliver(sandbox, "support@acme.test", "Re: Printer on fire",
            headers={"In-Reply-To": first["Message-ID"]})  # an answer to the first copy
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 1 and ticket.messages.count() == 3


def test_only_an_explicit_permanent_status_is_a_hard_bounce():
    from channels_email.mime import BounceRecipient

    assert outbound.is_hard_bounce(BounceRecipient("a@x.example", status="5.1.1"))
    for soft in (BounceRecipient("a@x.example", status="4.2.2", action="failed"),
                 BounceRecipient("a@x.example", action="failed"),  # classic text, a warning?
                 BounceRecipient("a@x.example")):
        assert not outbound.is_hard_bounce(soft)


# -------------------------------------------------------------- acknowledgement


@pytest.fixture
def acknowledging(gmail, admin_client, tenant):  # noqa: F811
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    with tenant_scope(tenant):
        assert not conn.send_acknowledgement  # off by default
    answer = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/", {
        "display_name": "Acme Support", "routing_mode": "none", "send_acknowledgement": "on",
        "acknowledgement_text": "Hi {name}, we got it: ticket #{number} ({subject})."})
    assert answer.status_code == 302
    return sandbox, conn


def acknowledgements(tenant) -> list[Message]:
    with tenant_scope(tenant):
        return list(Message.objects.filter(auto_submitted=True).order_by("id"))


def test_a_new_ticket_is_acknowledged_once_marked_auto_submitted(acknowledging, tenant):
    sandbox, conn = acknowledging
    deliver(sandbox, "support@acme.test", "Printer on fire")
    run_tasks(conn.pk)
    [ack] = acknowledgements(tenant)
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
    assert ack.ticket_id == ticket.pk and ack.to_addresses == ["maria@customer.example"]
    assert outbound.deliver(ack.pk) == DeliveryStatus.DELIVERED
    [sent] = sent_mail(sandbox)
    mime = mime_of(sent)
    assert mime["Auto-Submitted"] == "auto-replied"
    assert mime["From"] == "Acme Support <support@acme.test>"
    assert mime["In-Reply-To"] and mime["Subject"] == f"Re: [#{ticket.number}] Printer on fire"
    assert mime.get_body(("plain",)).get_content().strip() == \
        f"Hi Maria Lopez, we got it: ticket #{ticket.number} (Printer on fire)."

    # The customer's follow-up on the same ticket is not acknowledged again.
    deliver(sandbox, "support@acme.test", "Re: Printer on fire",
            headers={"In-Reply-To": f"<{ack.message_id_header}>"})
    run_tasks(conn.pk)
    assert len(acknowledgements(tenant)) == 1
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 1


@pytest.mark.parametrize(("sender", "headers", "why"), [
    ("robot@customer.example", {"Auto-Submitted": "auto-generated"}, "auto-submitted"),
    ("maria@customer.example", {"Authentication-Results": FAIL}, "dmarc fail"),
    ("no-reply@customer.example", {}, "robot mailbox"),
    ("gone@customer.example", {}, "suppressed"),
    ("poster@customer.example", {"List-Id": "Users <users.lists.example>",
                                 "Reply-To": "users@lists.example"}, "mailing list"),
    ("poster@customer.example", {"List-Unsubscribe": "<mailto:leave@lists.example>"},
     "mailing list"),
    ("late@customer.example", {"Date": "Wed, 01 Jan 2020 09:00:00 +0000"}, "old mail"),
])
def test_no_acknowledgement_to_automatic_forged_robot_or_suppressed_senders(
        acknowledging, tenant, sender, headers, why):
    sandbox, conn = acknowledging
    with tenant_scope(tenant):
        conn.skip_auto_replies = False  # let the auto-submitted mail make a ticket at all
        conn.save()
        SuppressedAddress.objects.create(tenant=tenant, email="gone@customer.example",
                                         reason="hard_bounce")
    requests.post(sandbox + "/_sandbox/deliver", json={
        "to": "support@acme.test", "from": sender, "subject": f"Case: {why}",
        "body": "Hello", "headers": headers}, timeout=5).raise_for_status()
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 1, why
    assert acknowledgements(tenant) == [], why


def test_the_acknowledgement_goes_to_the_from_never_to_a_reply_to(acknowledging, tenant):
    sandbox, conn = acknowledging
    deliver(sandbox, "support@acme.test", "Cheap pills",
            headers={"Reply-To": "bystander@elsewhere.example"})
    run_tasks(conn.pk)
    [ack] = acknowledgements(tenant)
    assert ack.to_addresses == ["maria@customer.example"]


def test_a_sender_is_acknowledged_at_most_once_an_hour(acknowledging, tenant):
    sandbox, conn = acknowledging
    for subject in ("First", "Second"):
        deliver(sandbox, "support@acme.test", subject)
        run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 2
    assert len(acknowledgements(tenant)) == 1


# ---------------------------------------------------------------------- DMARC


def test_the_ticket_view_shows_each_senders_dmarc_verdict_and_flags_a_fail(
        gmail, admin_client, client, tenant, agent):  # noqa: F811
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    deliver(sandbox, "support@acme.test", "Genuine", headers={"Authentication-Results": PASS})
    deliver(sandbox, "support@acme.test", "Forged", headers={"Authentication-Results": FAIL})
    run_tasks(conn.pk)
    client.force_login(agent)
    with tenant_scope(tenant):
        genuine = Ticket.objects.get(title="Genuine")
        forged = Ticket.objects.get(title="Forged")
    page = client.get(f"/{tenant.slug}/tickets/{genuine.number}/").content.decode()
    assert "DMARC pass" in page and "DMARC fail" not in page
    page = client.get(f"/{tenant.slug}/tickets/{forged.number}/").content.decode()
    assert 'class="badge dmarc-fail"' in page and "may be forged" in page


def test_an_acknowledgement_that_cannot_be_addressed_never_fails_the_ticket(
        conversation, tenant):  # noqa: F811
    from channels_email.mime import parse_email
    from tests.channels_email.mail_builder import build_email

    _, conn, ticket = conversation
    # From one of our own mailboxes, with the loop checks handed nothing to compare with:
    # the last guard (no recipient outside our mailboxes) refuses without raising.
    parsed = parse_email(build_email(sender="Support <support@acme.test>"))
    parsed.date = None  # the builder's fixed Date would read as mail fetched late
    with tenant_scope(tenant):
        message, why = outbound.acknowledgement_create(
            ticket=ticket, connection=conn, parsed=parsed, tenant_addresses=set())
    assert message is None and "no recipient" in why
