"""IMAP/SMTP mailboxes against the real Dovecot and submission server: the admin's Test
connection (each failure in words, nothing saved), receiving without marking anything
read (unless asked), a UIDVALIDITY reset that duplicates nothing, a changed password that
stops work until it is entered again, and replies by SMTP with threading headers, the
Sent copy, 4xx/5xx handling and no second copy after a crash."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from email.utils import make_msgid

import pytest

from channels_email import outbound
from channels_email.models import ConnectionStatus, EmailConnection, InboundEmail
from channels_email.sync import connection_sync, push_unmark
from channels_email.tasks import process_inbound_email
from helpdesk.tenancy import tenant_scope, unscoped
from tickets.models import DeliveryStatus, Message, Ticket

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture(autouse=True)
def _trust_the_test_ca(settings, mail_server):
    settings.IMAP_EXTRA_CA_FILE = str(mail_server.ca_file)
    settings.CELERY_TASK_ALWAYS_EAGER = False


def form(mail_server, mailboxes, **changes):
    data = {"address": mailboxes.support, "imap_host": "127.0.0.1", "imap_security": "ssl",
            "imap_port": mail_server.ports.imaps, "username": mailboxes.support,
            "password": mailboxes.support_password, "smtp_security": "starttls",
            "smtp_port": mail_server.ports.submission, "folder": "INBOX",
            "sent_folder": "Sent", "append_sent": "on", "after_import": "leave",
            "sync_start_at": "2000-01-01", "action": "save"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def add(admin_client, tenant, mail_server, mailboxes, **changes):
    answer = admin_client.post(f"/{tenant.slug}/settings/email/add/imap/",
                               form(mail_server, mailboxes, **changes))
    assert answer.status_code == 302, re.findall(r'role="alert">(.*?)</div>|errorlist.*?</ul>',
                                                 answer.content.decode(), re.S)
    with tenant_scope(tenant):
        return EmailConnection.objects.get(address=mailboxes.support)


def customer_mail(mailboxes, subject, **headers) -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"] = f"Maria Lopez <{mailboxes.customer}>", mailboxes.support
    mail["Subject"], mail["Message-ID"] = subject, make_msgid(domain="customer.example")
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content("Hello, the printer is on fire.")
    return mail.as_bytes()


def run_tasks(connection_id):
    push_unmark(connection_id)
    result = connection_sync(connection_id)
    for pk in result.new_rows:
        process_inbound_email.run(inbound_email_id=pk)
    return result


def titles(tenant):
    with tenant_scope(tenant):
        return sorted(Ticket.objects.values_list("title", flat=True))


# ------------------------------------------------------------------- Test connection

@pytest.mark.parametrize(("changes", "words"), [
    ({"imap_host": "no-such-host.invalid"}, "could not be found (DNS)"),
    ({"imap_port": 1}, "refused the connection on port 1"),
    ({"imap_security": "starttls"}, "did not answer in time"),  # STARTTLS to the TLS port
    ({"password": "wrong"}, "sign-in failed"),
    ({"folder": "Support Requests"}, "no folder named &#x27;Support Requests&#x27;"),
])
def test_test_connection_says_what_failed_and_saves_nothing(
        admin_client, tenant, mail_server, mailboxes, settings, changes, words):
    if changes.get("imap_security") == "starttls":  # a TLS port waits for a handshake
        settings.PROVIDER_HTTP_TIMEOUT_SECONDS = 2
    answer = admin_client.post(f"/{tenant.slug}/settings/email/add/imap/",
                               form(mail_server, mailboxes, action="test", **changes))
    assert answer.status_code == 400
    assert "Connection failed" in answer.content.decode()
    assert words in answer.content.decode()
    # Save runs the same check: refused, nothing stored.
    answer = admin_client.post(f"/{tenant.slug}/settings/email/add/imap/",
                               form(mail_server, mailboxes, **changes))
    assert answer.status_code == 400
    with unscoped():
        assert not EmailConnection.objects.exists()


@pytest.mark.parametrize(("changes", "allow", "words"), [
    # A cloud's metadata service is never a mail server, for IMAP or for SMTP.
    ({"imap_host": "169.254.169.254"}, True, "IMAP: 169.254.169.254 is a link-local address"),
    ({"smtp_host": "169.254.169.254"}, True, "SMTP: 169.254.169.254 is a link-local address"),
    # In prod (no loopback, no private addresses) our own machine is off limits too.
    ({}, False, "IMAP: 127.0.0.1 is a loopback address"),
])
def test_test_connection_never_reaches_an_address_it_may_not(
        admin_client, tenant, mail_server, mailboxes, settings, changes, allow, words):
    settings.IMAP_ALLOW_LOOPBACK = settings.IMAP_ALLOW_PRIVATE_ADDRESSES = allow
    answer = admin_client.post(f"/{tenant.slug}/settings/email/add/imap/",
                               form(mail_server, mailboxes, action="test", **changes))
    assert answer.status_code == 400
    assert words in answer.content.decode()
    with unscoped():
        assert not EmailConnection.objects.exists()


def test_test_connection_lists_the_folders(admin_client, tenant, mail_server,
                                           mailboxes):
    answer = admin_client.post(f"/{tenant.slug}/settings/email/add/imap/",
                               form(mail_server, mailboxes, action="test",
                                    imap_security="starttls",
                                    imap_port=mail_server.ports.imap))
    page = answer.content.decode()
    assert answer.status_code == 200 and "Connection works" in page
    assert "INBOX" in page and "Sent" in page and "Archive" in page
    with unscoped():
        assert not EmailConnection.objects.exists()


# ------------------------------------------------------------------------- receiving

def test_mail_becomes_tickets_and_stays_unread(admin_client, tenant, mail_server,
                                               mailboxes):
    mail_server.deliver(customer_mail(mailboxes, "Printer on fire"), mailboxes.support)
    conn = add(admin_client, tenant, mail_server, mailboxes)
    assert conn.credentials["imap"]["password"] == mailboxes.support_password
    with unscoped():  # stored encrypted, not as text
        from django.db import connection as db

        with db.cursor() as cursor:
            cursor.execute("SELECT credentials::text FROM channels_email_emailconnection "
                           "WHERE id = %s", [conn.pk])
            assert mailboxes.support_password not in cursor.fetchone()[0]
    assert len(run_tasks(conn.pk).new_rows) == 1  # from the sync start date
    mail_server.deliver(customer_mail(mailboxes, "Paper jam"), mailboxes.support)
    assert len(run_tasks(conn.pk).new_rows) == 1
    assert run_tasks(conn.pk).new_rows == []
    assert titles(tenant) == ["Paper jam", "Printer on fire"]
    assert all(b"\\Seen" not in flags for flags in mail_server.flags(mailboxes.support))


def test_mark_as_read_and_move_after_import_when_chosen(admin_client, tenant, mail_server,
                                                        mailboxes):
    conn = add(admin_client, tenant, mail_server, mailboxes, after_import="mark_read")
    mail_server.deliver(customer_mail(mailboxes, "Read me"), mailboxes.support)
    run_tasks(conn.pk)
    assert [b"\\Seen" in flags for flags in mail_server.flags(mailboxes.support)] == [True]
    answer = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/account/",
                               form(mail_server, mailboxes, after_import="move",
                                    move_to="Archive", password=""))
    assert answer.status_code == 302
    mail_server.deliver(customer_mail(mailboxes, "File me"), mailboxes.support)
    run_tasks(conn.pk)
    archived = [message_from_bytes(m)["Subject"]
                for m in mail_server.messages(mailboxes.support, "Archive")]
    assert archived == ["File me"] and titles(tenant) == ["File me", "Read me"]


def test_a_uidvalidity_reset_resyncs_without_duplicates(admin_client, tenant, mail_server,
                                                        mailboxes):
    conn = add(admin_client, tenant, mail_server, mailboxes)
    for n in range(3):
        mail_server.deliver(customer_mail(mailboxes, f"Question {n}"), mailboxes.support)
    run_tasks(conn.pk)
    # The server renumbers the folder (a restore, a migration): every UID is new.
    mail_server.set_uidvalidity(mailboxes.support, "INBOX", 31337)
    mail_server.deliver(customer_mail(mailboxes, "After the reset"), mailboxes.support)
    result = run_tasks(conn.pk)
    assert result.full_sync and len(result.new_rows) == 1
    assert run_tasks(conn.pk).new_rows == [] and not run_tasks(conn.pk).full_sync
    assert titles(tenant) == ["After the reset", "Question 0", "Question 1", "Question 2"]
    with unscoped():
        assert InboundEmail.objects.count() == 4


def test_a_changed_password_is_sign_in_failed_until_entered_again(
        admin_client, tenant, mail_server, mailboxes):
    conn = add(admin_client, tenant, mail_server, mailboxes)
    run_tasks(conn.pk)
    mail_server.set_password(mailboxes.support, "rotated")
    mail_server.deliver(customer_mail(mailboxes, "While locked out"), mailboxes.support)
    from channels_email import providers

    with pytest.raises(providers.AuthError):
        run_tasks(conn.pk)
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.TOKEN_EXPIRED and conn.status_label == \
        "Sign-in failed"
    assert run_tasks(conn.pk).state == "skipped"  # no more sign-in attempts
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "Sign-in failed" in page and "Reconnect" in page
    reconnect = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/reconnect/")
    assert reconnect.status_code == 302 and reconnect["Location"].endswith("/account/")
    answer = admin_client.post(reconnect["Location"],
                               form(mail_server, mailboxes, password="rotated"))
    assert answer.status_code == 302
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.ACTIVE
    run_tasks(conn.pk)
    assert titles(tenant) == ["While locked out"]


# --------------------------------------------------------------------------- sending

@pytest.fixture
def conversation(admin_client, tenant, mail_server, mailboxes):
    conn = add(admin_client, tenant, mail_server, mailboxes)
    with tenant_scope(tenant):
        EmailConnection.objects.filter(pk=conn.pk).update(display_name="Acme Support")
    mail_server.deliver(customer_mail(mailboxes, "Printer on fire"), mailboxes.support)
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
    return conn, ticket


def reply(tenant, ticket, user):
    with tenant_scope(tenant):
        return outbound.reply_create(ticket=ticket, author=user, body_text="We are on it.")


def test_a_reply_goes_by_smtp_threaded_lands_in_sent_and_is_delivered(
        conversation, tenant, admin_user, mail_server, mailboxes):
    conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    [received] = [message_from_bytes(m, policy=default)
                  for m in mail_server.messages(mailboxes.customer)]
    with tenant_scope(tenant):
        inbound = InboundEmail.objects.get(ticket=ticket)
        message.refresh_from_db()
    assert received["From"] == f"Acme Support <{mailboxes.support}>"
    assert received["Message-ID"] == f"<{message.message_id_header}>"
    assert received["In-Reply-To"] == f"<{inbound.message_id_header}>"
    assert received["Subject"].startswith("Re: ")
    [sent] = mail_server.messages(mailboxes.support, "Sent")
    assert message_from_bytes(sent)["Message-ID"] == f"<{message.message_id_header}>"
    assert message.provider_message_id.endswith(":Sent")


def test_a_crash_after_data_leaves_one_copy(conversation, tenant, admin_user, mail_server,
                                            mailboxes):
    from channels_email import providers

    conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    with tenant_scope(tenant):
        conn.refresh_from_db()
        raw, thread_id = outbound.build_mime(Message.objects.get(pk=message.pk), conn)
        providers.get("imap").send(conn, raw, thread_id)  # 250, filed; then the worker died
        Message.objects.filter(pk=message.pk).update(attempts=1)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    assert len(mail_server.messages(mailboxes.customer)) == 1


def test_4xx_retries_and_5xx_fails_with_the_servers_text(conversation, tenant, admin_user,
                                                         mail_server, mailboxes):
    _, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    mail_server.fail_next_data("451 4.3.0 Mailbox temporarily unavailable")
    with pytest.raises(outbound.SendDeferred):
        outbound.deliver(message.pk)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    second = reply(tenant, ticket, admin_user)
    mail_server.fail_next_data("554 5.7.1 Message rejected as spam")
    assert outbound.deliver(second.pk) == DeliveryStatus.FAILED
    with tenant_scope(tenant):
        second.refresh_from_db()
    assert "554 5.7.1 Message rejected as spam" in second.delivery_error
    assert len(mail_server.messages(mailboxes.customer)) == 1


# ---------------------------------------------------------------- connection settings

def test_skip_times_hold_every_task_in_the_mailboxs_time_zone(
        admin_client, tenant, mail_server, mailboxes, admin_user):
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    conn = add(admin_client, tenant, mail_server, mailboxes)
    mail_server.deliver(customer_mail(mailboxes, "Before the window"), mailboxes.support)
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
    here = datetime.now(ZoneInfo("Asia/Tokyo"))
    window = f"{(here - timedelta(minutes=30)):%H:%M}-{(here + timedelta(minutes=30)):%H:%M}"
    answer = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/account/",
                               form(mail_server, mailboxes, password="", skip_times=window,
                                    time_zone="Asia/Tokyo"))
    assert answer.status_code == 302
    mail_server.deliver(customer_mail(mailboxes, "During the window"), mailboxes.support)
    assert run_tasks(conn.pk).state == "skipped"  # not even a sign-in
    message = reply(tenant, ticket, admin_user)
    with pytest.raises(outbound.SendDeferred) as held:
        outbound.deliver(message.pk)
    assert 20 * 60 < held.value.wait <= 31 * 60  # until the window ends
    assert mail_server.messages(mailboxes.customer) == []
    # The same clock times in another zone are not now: mail and the reply go.
    admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/account/",
                      form(mail_server, mailboxes, password="", skip_times=window,
                           time_zone="America/New_York"))
    assert len(run_tasks(conn.pk).new_rows) == 1
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED


def test_a_bad_skip_time_or_zone_is_refused_in_words(admin_client, tenant, mail_server,
                                                     mailboxes):
    answer = admin_client.post(f"/{tenant.slug}/settings/email/add/imap/",
                               form(mail_server, mailboxes, skip_times="2am to 4am",
                                    time_zone="Mars/Olympus"))
    page = answer.content.decode()
    assert answer.status_code == 400
    assert "is not a time window like 02:00-04:00" in page and "is not a time zone" in page


def test_after_max_tries_the_mailbox_cools_off(admin_client, tenant, mail_server, mailboxes):
    from datetime import timedelta

    from django.utils import timezone

    conn = add(admin_client, tenant, mail_server, mailboxes, max_tries=2,
               cool_off_minutes=10)
    run_tasks(conn.pk)
    mail_server.deliver(customer_mail(mailboxes, "After the outage"), mailboxes.support)
    with tenant_scope(tenant):  # two failures in a row, the last one a minute ago
        EmailConnection.objects.filter(pk=conn.pk).update(
            consecutive_errors=2, last_error_at=timezone.now() - timedelta(minutes=1))
    assert run_tasks(conn.pk).state == "skipped"
    with tenant_scope(tenant):
        EmailConnection.objects.filter(pk=conn.pk).update(
            last_error_at=timezone.now() - timedelta(minutes=11))
    assert len(run_tasks(conn.pk).new_rows) == 1
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.consecutive_errors == 0  # the success resets the count
