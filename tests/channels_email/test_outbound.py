"""Agent replies through the Gmail sandbox over HTTP: the MIME, the thread, delivery
status, retries, permanent failures, and no second copy after a crash."""

from __future__ import annotations

import base64
import time
from datetime import timedelta
from email import message_from_bytes
from email.policy import default

import pytest
import requests
from django.utils import timezone

from channels_email import outbound
from channels_email.models import EmailConnection, InboundEmail
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_flow import (  # noqa: F401 - fixtures
    admin_client,
    connected_mailbox,
    deliver,
    gmail,
    run_tasks,
)
from tickets.models import DeliveryStatus, Message, Ticket

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conversation(gmail, admin_client, tenant, admin_user):  # noqa: F811
    """A connected mailbox, a customer email that became a ticket (with a CC)."""
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    with tenant_scope(tenant):
        conn.display_name = "Acme Support"
        conn.save()
    deliver(sandbox, "support@acme.test", "Printer on fire",
            headers={"Cc": "Bob <bob@customer.example>"})
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
    return sandbox, conn, ticket


def sent_mail(sandbox) -> list[dict]:
    return requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]


def ticket_thread(tenant, ticket) -> str:
    with tenant_scope(tenant):
        return InboundEmail.objects.filter(ticket=ticket).first().provider_thread_id


def reply(tenant, ticket, user, text="We are on it.", **kwargs):
    with tenant_scope(tenant):
        return outbound.reply_create(ticket=ticket, author=user, body_text=text, **kwargs)


def test_reply_reaches_the_mailbox_threaded_and_delivered(conversation, tenant, admin_user):
    sandbox, conn, ticket = conversation
    # Gmail keeps a reply in the customer's thread only when the subject matches
    # (PROVIDERS.md 3.3); the workspace's [#n] subject token (tests/tickets) changes it.
    tenant.subject_ticket_token = False
    tenant.save(update_fields=["subject_ticket_token"])
    message = reply(tenant, ticket, admin_user,
                    attachments=[("steps.txt", b"1. unplug it", "text/plain")])
    assert message.delivery_status == DeliveryStatus.PENDING
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    with tenant_scope(tenant):
        message.refresh_from_db()
        inbound = ticket.messages.filter(kind="inbound").get()
    assert message.provider_message_id and message.delivered_at
    [sent] = sent_mail(sandbox)
    mime = message_from_bytes(base64.b64decode(sent["raw"]), policy=default)
    assert mime["From"] == "Acme Support <support@acme.test>"
    assert mime["To"] == "maria@customer.example" and mime["Cc"] == "bob@customer.example"
    assert mime["Subject"] == "Re: Printer on fire"
    assert mime["Message-ID"] == f"<{message.message_id_header}>"
    assert mime["In-Reply-To"].strip("<>") and mime["In-Reply-To"] in mime["References"]
    assert mime["X-Helpdesk-Loop"]
    assert [p.get_filename() for p in mime.iter_attachments()] == ["steps.txt"]
    assert sent["threadId"] == ticket_thread(tenant, ticket) and inbound.subject

    # The customer answers our reply in the sandbox: it lands on the same ticket.
    deliver(sandbox, "support@acme.test", "Re: Printer on fire",
            headers={"In-Reply-To": f"<{message.message_id_header}>"})
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 1 and ticket.messages.count() == 3


def test_a_reply_with_a_large_attachment_goes_through_the_upload_endpoint(
        conversation, tenant, admin_user):
    sandbox, _, ticket = conversation
    # Gmail keeps a reply in the customer's thread only when the subject matches
    # (PROVIDERS.md 3.3); the workspace's [#n] subject token (tests/tickets) changes it.
    tenant.subject_ticket_token = False
    tenant.save(update_fields=["subject_ticket_token"])
    scan = bytes(range(256)) * (8 * 1024)  # 2 MB with every byte value
    message = reply(tenant, ticket, admin_user,
                    attachments=[("scan.pdf", scan, "application/pdf")])
    started = time.time()
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    [sent] = sent_mail(sandbox)
    mime = message_from_bytes(base64.b64decode(sent["raw"]), policy=default)
    [attachment] = mime.iter_attachments()
    assert attachment.get_filename() == "scan.pdf" and attachment.get_content() == scan
    assert mime["Message-ID"] == f"<{message.message_id_header}>"
    assert sent["threadId"] == ticket_thread(tenant, ticket)
    sends = [(r["path"], set(r["query"].split("&"))) for r in requests.get(
        sandbox + "/_sandbox/requests", timeout=5).json()["requests"]
        if r["path"].endswith("/messages/send") and r["at"] >= started]
    assert sends == [("/upload/gmail/v1/users/me/messages/send",
                      {"uploadType=multipart", "alt=json"})]


def test_two_server_errors_then_delivered_with_three_attempts(conversation, tenant,
                                                               admin_user):
    sandbox, _, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "server_error", "count": 2},
                  timeout=5).raise_for_status()
    for _ in range(2):
        with pytest.raises(outbound.SendDeferred):
            outbound.deliver(message.pk)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    with tenant_scope(tenant):
        message.refresh_from_db()
    assert message.attempts == 3 and message.delivery_status == DeliveryStatus.DELIVERED


def test_no_second_copy_after_a_crash_between_accept_and_save(conversation, tenant,
                                                              admin_user):
    from channels_email import providers

    sandbox, conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    with tenant_scope(tenant):
        conn.refresh_from_db()
        raw, thread_id = outbound.build_mime(Message.objects.get(pk=message.pk), conn)
        providers.get("gmail").send(conn, raw, thread_id)  # accepted, then the worker died
        Message.objects.filter(pk=message.pk).update(attempts=1)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    assert len(sent_mail(sandbox)) == 1


def test_two_copies_of_the_send_task_at_once_send_one_email(conversation, tenant,
                                                            admin_user):
    import threading

    from django.db import connection as db_connection

    sandbox, _, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    # Both copies (a retry and the redrive sweep's) load the message before either claims.
    results, ready = [], threading.Barrier(2)
    original_get = outbound.providers.get

    def slow_get(name):
        ready.wait(timeout=10)
        return original_get(name)

    def run():
        try:
            results.append(outbound.deliver(message.pk))
        finally:
            db_connection.close()

    outbound.providers.get = slow_get
    try:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        outbound.providers.get = original_get
    assert sorted(results) == [DeliveryStatus.DELIVERED, DeliveryStatus.PENDING]
    assert len(sent_mail(sandbox)) == 1


def test_permanent_error_fails_with_a_reason_and_retry_delivers(conversation, tenant,
                                                               admin_user):
    sandbox, _, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "invalid_argument", "count": 1},
                  timeout=5).raise_for_status()
    status = outbound.deliver(message.pk)
    with tenant_scope(tenant):
        message.refresh_from_db()
    assert status == DeliveryStatus.FAILED and "refused" in message.delivery_error
    with tenant_scope(tenant):
        assert outbound.reply_retry(message=message)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED


def test_throttling_rate_limits_the_mailbox_and_the_reply_waits_pending(conversation, tenant,
                                                                        admin_user):
    from channels_email.models import ConnectionStatus

    sandbox, conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    requests.post(sandbox + "/_sandbox/faults", json={
        "kind": "too_many_requests", "count": 1, "retry_after": 40}, timeout=5).raise_for_status()
    with pytest.raises(outbound.SendDeferred) as deferred:
        outbound.deliver(message.pk)
    assert 30 <= deferred.value.wait <= 41  # Gmail's Retry-After, not a guess
    with tenant_scope(tenant):
        conn.refresh_from_db()
        message.refresh_from_db()
    assert conn.status == ConnectionStatus.RATE_LIMITED and conn.rate_limited_until
    assert message.delivery_status == DeliveryStatus.PENDING and message.attempts == 1
    # Until rate_limited_until the mailbox is not even asked.
    with pytest.raises(outbound.SendDeferred):
        outbound.deliver(message.pk)
    with tenant_scope(tenant):
        assert Message.objects.get(pk=message.pk).attempts == 1
        EmailConnection.objects.filter(pk=conn.pk).update(
            rate_limited_until=timezone.now() - timedelta(seconds=1))
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.ACTIVE and len(sent_mail(sandbox)) == 1


def test_a_revoked_sign_in_fails_the_reply_with_reconnect_needed(conversation, tenant,
                                                                 admin_user):
    from channels_email.models import ConnectionStatus

    sandbox, conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    requests.post(sandbox + "/_sandbox/revoke-all", json={"email": "support@acme.test"},
                  timeout=5).raise_for_status()
    with tenant_scope(tenant):
        conn.credentials = dict(conn.credentials, expires_at="2000-01-01T00:00:00+00:00")
        conn.save(update_fields=["credentials"])
    assert outbound.deliver(message.pk) == DeliveryStatus.FAILED
    with tenant_scope(tenant):
        conn.refresh_from_db()
        message.refresh_from_db()
    assert conn.status == ConnectionStatus.TOKEN_EXPIRED
    assert "reconnected" in message.delivery_error
    # The next reply on the expired mailbox fails at once, saying what to do.
    second = reply(tenant, ticket, admin_user, text="Still there?")
    assert outbound.deliver(second.pk) == DeliveryStatus.FAILED
    with tenant_scope(tenant):
        second.refresh_from_db()
    assert "reconnect needed" in second.delivery_error and sent_mail(sandbox) == []


def test_reply_subject_does_not_stack():
    assert outbound.reply_subject("Printer") == "Re: Printer"
    for subject in ("Re: Printer", "RE: Printer", "Re[2]: Printer", "AW: Drucker"):
        assert outbound.reply_subject(subject) == subject


def test_a_bounce_for_our_reply_marks_it_bounced_and_makes_no_ticket(conversation, tenant,
                                                                     admin_user):
    sandbox, conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    dsn = (
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
        f"Message-ID: <{message.message_id_header}>\r\nSubject: Re: Printer on fire\r\n"
        "\r\n--B--\r\n"
    ).encode()
    requests.post(sandbox + "/_sandbox/deliver", json={
        "to": "support@acme.test", "raw": base64.b64encode(dsn).decode()},
        timeout=5).raise_for_status()
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        message.refresh_from_db()
        assert message.delivery_status == DeliveryStatus.BOUNCED
        assert "5.1.1" in message.delivery_error and "maria@customer.example" in \
            message.delivery_error
        assert Ticket.objects.count() == 1 and ticket.messages.count() == 2
        report = InboundEmail.objects.get(state="skipped")
        assert report.reason.startswith("bounce") and report.message_id == message.pk
        assert report.ticket_id == ticket.pk


def test_agent_replies_and_notes_from_the_ticket_view(conversation, client, tenant, agent):
    from django.core.files.uploadedfile import SimpleUploadedFile

    sandbox, conn, ticket = conversation
    client.force_login(agent)
    url = f"/{tenant.slug}/tickets/{ticket.number}/"
    page = client.get(url).content.decode()
    assert 'name="cc"' in page and "bob@customer.example" in page  # CC prefilled

    answer = client.post(url + "reply/", {
        "mode": "reply", "body": "Try turning it off.", "cc": "bob@customer.example",
        "attachments": [SimpleUploadedFile("a.txt", b"steps", "text/plain")]})
    assert answer.status_code == 302
    with tenant_scope(tenant):
        sent = ticket.messages.get(kind="outbound")
        assert sent.cc_addresses == ["bob@customer.example"]
        assert [a.filename for a in sent.attachments.all()] == ["a.txt"]
    badge = client.get(f"{url}messages/{sent.pk}/delivery/").content.decode()
    assert 'data-delivery="pending"' in badge and "hx-trigger" in badge
    outbound.deliver(sent.pk)
    badge = client.get(f"{url}messages/{sent.pk}/delivery/").content.decode()
    assert 'data-delivery="delivered"' in badge and 'hx-trigger="every 30s"' in badge

    client.post(url + "reply/", {"mode": "note", "body": "Customer is angry.", "cc": ""})
    with tenant_scope(tenant):
        assert ticket.messages.filter(kind="note").count() == 1
        assert ticket.messages.filter(kind="outbound").count() == 1

    # To is prefilled and editable (say, after a bounce showed a typo); never left empty.
    assert 'name="to" value="maria@customer.example"' in client.get(url).content.decode()
    empty = client.post(url + "reply/", {"mode": "reply", "body": "Hello?", "to": " ",
                                         "cc": ""})
    assert empty.status_code == 400
    assert "Add the address the reply goes to." in empty.content.decode()
    assert client.post(url + "reply/", {
        "mode": "reply", "body": "Resent.", "to": "Maria.Lopez@Customer.Example, support@acme.test",
        "cc": ""}).status_code == 302
    with tenant_scope(tenant):
        resent = ticket.messages.filter(kind="outbound").latest("created_at")
    assert resent.to_addresses == ["maria.lopez@customer.example"]  # never our own mailbox


def test_too_large_attachment_is_refused_with_a_clear_error(conversation, client, tenant,
                                                            agent, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    _, _, ticket = conversation
    settings.REPLY_ATTACHMENT_MAX_BYTES = 1024 * 1024
    client.force_login(agent)
    answer = client.post(f"/{tenant.slug}/tickets/{ticket.number}/reply/", {
        "mode": "reply", "body": "Here is the log.",
        "attachments": [SimpleUploadedFile("big.log", b"x" * (1024 * 1024 + 1))]})
    assert answer.status_code == 400
    assert "big.log: attachments are limited to 1 MB" in answer.content.decode()

    # Files each under the limit, together over what one email can carry.
    settings.REPLY_ATTACHMENTS_TOTAL_MAX_BYTES = 3 * 1024 * 1024 // 2
    answer = client.post(f"/{tenant.slug}/tickets/{ticket.number}/reply/", {
        "mode": "reply", "body": "Here are the logs.",
        "attachments": [SimpleUploadedFile(f"{n}.log", b"x" * 1024 * 1024) for n in (1, 2)]})
    assert answer.status_code == 400
    assert "The attachments add up to 2.0 MB; one reply can carry 1.5 MB" in \
        answer.content.decode()
    with tenant_scope(tenant):
        assert not ticket.messages.filter(kind="outbound").exists()


def test_retry_button_requeues_a_failed_reply(conversation, client, tenant, agent):
    sandbox, _, ticket = conversation
    message = reply(tenant, ticket, agent)
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "invalid_argument", "count": 1},
                  timeout=5).raise_for_status()
    assert outbound.deliver(message.pk) == DeliveryStatus.FAILED
    client.force_login(agent)
    url = f"/{tenant.slug}/tickets/{ticket.number}/messages/{message.pk}/retry/"
    answer = client.post(url, HTTP_HX_REQUEST="true")
    assert answer.status_code == 200 and 'data-delivery="pending"' in answer.content.decode()
    assert 'hx-trigger="every 2s"' in answer.content.decode()
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED

    # Once delivered, the badge keeps an eye out for a bounce for a while, then rests.
    badge = f"/{tenant.slug}/tickets/{ticket.number}/messages/{message.pk}/delivery/"
    answer = client.get(badge, HTTP_HX_REQUEST="true").content.decode()
    assert 'data-delivery="delivered"' in answer and 'hx-trigger="every 30s"' in answer
    with tenant_scope(tenant):
        Message.objects.filter(pk=message.pk).update(
            delivered_at=timezone.now() - timedelta(hours=1))
    assert "hx-get" not in client.get(badge, HTTP_HX_REQUEST="true").content.decode()


def test_retry_gives_a_failed_reply_a_new_round_of_attempts(conversation, tenant, admin_user):
    sandbox, _, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    with tenant_scope(tenant):  # it gave up two days ago, after its 8 attempts
        Message.objects.filter(pk=message.pk).update(
            delivery_status=DeliveryStatus.FAILED, attempts=8,
            created_at=timezone.now() - timedelta(days=2),
            delivery_error="Gave up after 8 attempts: server error")
        assert outbound.reply_retry(message=message)
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "server_error", "count": 1},
                  timeout=5).raise_for_status()
    with pytest.raises(outbound.SendDeferred):  # one more error is no reason to give up
        outbound.deliver(message.pk)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    with tenant_scope(tenant):
        message.refresh_from_db()
    assert message.attempts == 2 and message.retried_at is not None
    assert len(sent_mail(sandbox)) == 1
    # Retried under the same Message-ID, it can still bounce.
    from channels_email.mime import BounceInfo, BounceRecipient

    with tenant_scope(tenant):
        assert outbound.delivery_bounce_record(tenant=tenant, bounce=BounceInfo(
            original_message_id=message.message_id_header,
            recipients=[BounceRecipient("maria@customer.example", "5.1.1", "no such user")],
        )) == [message.pk]
        message.refresh_from_db()
    assert message.delivery_status == DeliveryStatus.BOUNCED


def test_a_bounce_recorded_while_the_send_was_in_flight_keeps_the_last_word(
        conversation, tenant, admin_user):
    import threading

    from django.db import connection as db_connection

    from channels_email.mime import BounceInfo, BounceRecipient

    sandbox, _, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    # Gmail stores the reply, then holds its answer; the bounce is recorded meanwhile.
    requests.post(sandbox + "/_sandbox/faults", json={
        "kind": "slow_after_send", "count": 1, "delay": 2}, timeout=5).raise_for_status()

    def send():
        try:
            outbound.deliver(message.pk)
        finally:
            db_connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.time() + 10
    while not sent_mail(sandbox) and time.time() < deadline:
        time.sleep(0.05)
    with tenant_scope(tenant):
        assert outbound.delivery_bounce_record(tenant=tenant, bounce=BounceInfo(
            original_message_id=message.message_id_header,
            recipients=[BounceRecipient("maria@customer.example", "5.1.1", "no such user")],
        )) == [message.pk]
    sender.join(timeout=30)
    with tenant_scope(tenant):
        message.refresh_from_db()
    assert message.delivery_status == DeliveryStatus.BOUNCED
    assert "5.1.1" in message.delivery_error and message.provider_message_id


def test_merge_keeps_every_message_and_later_replies_land_in_the_survivor(  # noqa: F811
        gmail, admin_client, tenant):  # noqa: F811
    from tickets.services import ticket_merge

    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    deliver(sandbox, "support@acme.test", "First problem")
    deliver(sandbox, "support@acme.test", "Second problem",
            attachments=[{"filename": "x.png", "content_type": "image/png",
                          "data_base64": "iVBORw0KGgo="}])
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        first, second = Ticket.objects.order_by("number")
        second_mid = InboundEmail.objects.get(ticket=second).message_id_header
        ticket_merge(source=second, target=first)
        assert first.messages.count() == 2 and second.messages.count() == 0
        assert second.status == "closed" and second.merged_into == first
        assert [a.filename for m in first.messages.all() for a in m.attachments.all()] \
            == ["x.png"]
    deliver(sandbox, "support@acme.test", "Re: Second problem",
            headers={"In-Reply-To": f"<{second_mid}>"})
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert first.messages.count() == 3 and Ticket.objects.count() == 2
    # A new email naming the merged ticket's number (no thread headers) lands there too.
    deliver(sandbox, "support@acme.test", f"Still broken [#{second.number}]")
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert first.messages.count() == 4 and second.messages.count() == 0
        assert Ticket.objects.count() == 2


def test_a_reply_with_no_mailbox_to_send_from_fails_with_the_reason(
        gmail, admin_client, tenant, admin_user):  # noqa: F811
    """Rows the composer cannot make (a ticket that did not come by email, no default
    mailbox: the old demo seed wrote such replies) end Failed instead of crashing the
    send task on every redrive; once a default mailbox exists, Retry sends them."""
    from channels_email.tasks import redrive_pending_replies, send_reply
    from tests.factories import MessageFactory, TicketFactory

    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)
        orphan = MessageFactory(ticket=ticket, kind="outbound", author_contact=None,
                                author_user=admin_user, delivery_status="pending",
                                to_addresses=[ticket.contact.email],
                                message_id_header="orphan@acme.test")
        no_one = MessageFactory(ticket=ticket, kind="outbound", author_contact=None,
                                author_user=admin_user, delivery_status="pending",
                                to_addresses=[], message_id_header="no-one@acme.test")
        Message.objects.filter(pk__in=[orphan.pk, no_one.pk]).update(
            created_at=timezone.now() - timedelta(hours=1))

    assert redrive_pending_replies.run() == 2
    assert send_reply.run(message_id=orphan.pk) == DeliveryStatus.FAILED
    with tenant_scope(tenant):
        orphan.refresh_from_db()
        assert orphan.delivery_error.startswith("No mailbox to send from")
        assert orphan.email_connection is None

    # An admin connects a mailbox and makes it the default; Retry now sends through it.
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    with tenant_scope(tenant):
        EmailConnection.objects.filter(pk=conn.pk).update(is_default=True)
        assert outbound.reply_retry(message=orphan)
    assert outbound.deliver(orphan.pk) == DeliveryStatus.DELIVERED
    [sent] = sent_mail(sandbox)
    assert message_from_bytes(base64.b64decode(sent["raw"]), policy=default)["To"] \
        == ticket.contact.email
    # A reply with no recipient at all fails by name and sends nothing.
    assert outbound.deliver(no_one.pk) == DeliveryStatus.FAILED
    with tenant_scope(tenant):
        no_one.refresh_from_db()
    assert "no recipient" in no_one.delivery_error and len(sent_mail(sandbox)) == 1
