"""Forwarding mailboxes against the real inbound SMTP server (aiosmtpd, started here on a
free port) and a real SMTP client (smtplib): the admin adds one and gets a generated
address with set-up steps; mail forwarded to it is stored with its envelope before the
250 and becomes a ticket through the real pipeline; an unknown address is refused at
RCPT, an oversized message by SIZE or after DATA, and neither stores anything; Gmail's
confirmation shows its code on the mailbox page and makes no ticket; a loop through the
forwarder is stopped; replies go out through the mapped mailbox (or the default), From
the support address only when that mailbox may send as it."""

from __future__ import annotations

import re
import smtplib
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP as smtp_policy
from email.policy import default
from email.utils import make_msgid
from pathlib import Path

import pytest

from channels_email import outbound
from channels_email.models import (
    ConnectionStatus,
    EmailConnection,
    InboundEmail,
    InboundState,
)
from channels_email.providers.forwarding.smtp import InboundSMTPServer, message_key
from channels_email.selectors import tenant_addresses
from channels_email.tasks import process_inbound_email
from helpdesk.tenancy import tenant_scope, unscoped
from sandbox.mailserver import free_port
from tests.factories import MembershipFactory, UserFactory
from tickets.models import DeliveryStatus, Ticket

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "forwarding"
SUPPORT = "help@forwarded.test"
FORWARDER_AUTH = ("mx.forwarded.test; dkim=pass header.d=customer.example; "
                  "spf=pass smtp.mailfrom=customer.example; dmarc=pass")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def smtp_server(settings):
    settings.INBOUND_EMAIL_DOMAIN = "inbound.localhost"
    server = InboundSMTPServer("127.0.0.1", free_port()).start()
    yield server
    server.stop()


def add_forwarding(client, tenant, address=SUPPORT, **extra) -> EmailConnection:
    answer = client.post(f"/{tenant.slug}/settings/email/forward/forwarding/",
                         {"address": address, **extra})
    assert answer.status_code == 302, answer.content.decode()[:2000]
    with tenant_scope(tenant):
        return EmailConnection.objects.get(address=address, provider="forwarding")


def customer_mail(subject="Printer on fire", sender="maria@customer.example",
                  to=SUPPORT, **headers) -> bytes:
    mail = EmailMessage()
    mail["Authentication-Results"] = FORWARDER_AUTH  # added by the forwarding service
    mail["From"], mail["To"] = f"Maria Lopez <{sender}>", to
    mail["Subject"], mail["Message-ID"] = subject, make_msgid(domain="customer.example")
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content("Hello, the printer is on fire.")
    return mail.as_bytes(policy=smtp_policy)


def send(server, raw: bytes, rcpt, mail_from="help+caf_=fwd@forwarded.test"):
    with smtplib.SMTP(server.host, server.port, timeout=20) as smtp:
        return smtp.sendmail(mail_from, rcpt if isinstance(rcpt, list) else [rcpt], raw)


def ingest_all() -> list[str]:
    with unscoped():
        ids = list(InboundEmail.objects.filter(state=InboundState.RECEIVED)
                   .values_list("pk", flat=True))
    return [process_inbound_email.run(inbound_email_id=pk) for pk in ids]


def page(client, tenant, conn) -> str:
    return client.get(f"/{tenant.slug}/settings/email/{conn.pk}/").content.decode()


# ------------------------------------------------------------------------ receiving

def test_the_admin_gets_an_address_and_forwarded_mail_becomes_a_ticket(
        admin_client, tenant, smtp_server):
    listing = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "Forwarding: any mail service" in listing
    conn = add_forwarding(admin_client, tenant, display_name="Acme Help")
    assert re.fullmatch(r"forwarded-help-[a-z0-9]{12}@inbound\.localhost",
                        conn.inbound_address)
    shown = page(admin_client, tenant, conn)
    assert conn.inbound_address in shown and "Waiting for first email" in shown
    for heading in ("Gmail or Google Workspace", "Microsoft 365 or Outlook.com",
                    "Any other mail service"):
        assert heading in shown
    # The support address forwards to us: the loop filter knows it from now on.
    with tenant_scope(tenant):
        assert {SUPPORT, conn.inbound_address} <= tenant_addresses(tenant_id=tenant.pk)

    raw = customer_mail()
    assert send(smtp_server, raw, conn.inbound_address.upper()) == {}
    # Stored (with its envelope and the forwarder's verdict) before the 250 came back.
    with tenant_scope(tenant):
        row = InboundEmail.objects.get()
        with row.raw.open("rb") as handle:
            assert handle.read() == raw
    assert row.connection_id == conn.pk and row.state == InboundState.RECEIVED
    assert row.provider_message_id == message_key(raw, conn.inbound_address)
    envelope = row.details["envelope"]
    assert envelope["mail_from"] == "help+caf_=fwd@forwarded.test"
    assert envelope["rcpt_to"] == conn.inbound_address
    assert envelope["authentication_results"] == [FORWARDER_AUTH]

    assert ingest_all() == [InboundState.PROCESSED]
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
        row.refresh_from_db()
    assert ticket.title == "Printer on fire" and ticket.email_connection_id == conn.pk
    assert ticket.contact.email == "maria@customer.example"
    assert row.details["envelope"]["rcpt_to"] == conn.inbound_address  # kept by the parse
    shown = page(admin_client, tenant, conn)
    assert "Waiting for first email" not in shown and "Active" in shown
    assert "Last email received" in shown

    # The 250 got lost and the forwarder sends the same message again: no second ticket.
    assert send(smtp_server, raw, conn.inbound_address) == {}
    ingest_all()
    with tenant_scope(tenant):
        assert InboundEmail.objects.count() == 1 and Ticket.objects.count() == 1


def test_one_message_for_two_mailboxes_is_stored_once_for_each(
        admin_client, tenant, other_tenant, smtp_server):
    first = add_forwarding(admin_client, tenant)
    other_admin = UserFactory()
    MembershipFactory(tenant=other_tenant, user=other_admin, role="admin")
    admin_client.force_login(other_admin)
    second = add_forwarding(admin_client, other_tenant, address="sales@elsewhere.test")
    raw = customer_mail(to=f"{SUPPORT}, sales@elsewhere.test")
    assert send(smtp_server, raw, [first.inbound_address, second.inbound_address]) == {}
    assert ingest_all() == [InboundState.PROCESSED] * 2
    for tenant_, conn in ((tenant, first), (other_tenant, second)):
        with tenant_scope(tenant_):
            [row] = InboundEmail.objects.all()
            assert row.connection_id == conn.pk
            assert row.details["envelope"]["rcpt_to"] == conn.inbound_address
            assert Ticket.objects.get().email_connection_id == conn.pk


def test_an_unknown_or_disconnected_address_is_refused_at_rcpt(
        admin_client, tenant, smtp_server):
    conn = add_forwarding(admin_client, tenant)
    local, _, domain = conn.inbound_address.partition("@")
    guessed = f"{local[:-1]}{'1' if local[-1] == '0' else '0'}@{domain}"  # one letter off
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=20) as smtp:
        smtp.ehlo()
        assert smtp.mail("someone@customer.example")[0] == 250
        code, text = smtp.rcpt(guessed)
        assert code == 550 and b"No such forwarding address" in text
        assert smtp.rcpt("nobody@inbound.localhost")[0] == 550
        # No recipient was accepted: DATA is refused, nothing can be stored.
        assert smtp.docmd("DATA")[0] == 503
    admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/disconnect/")
    with tenant_scope(tenant):
        assert EmailConnection.objects.get(pk=conn.pk).status == ConnectionStatus.DISCONNECTED
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(smtp_server, customer_mail(), conn.inbound_address)
    assert refused.value.recipients[conn.inbound_address][0] == 550
    with unscoped():
        assert not InboundEmail.objects.exists()


def test_an_oversized_message_is_refused_and_nothing_is_stored(admin_client, tenant,
                                                               settings):
    settings.INBOUND_EMAIL_DOMAIN = "inbound.localhost"
    conn = add_forwarding(admin_client, tenant)
    server = InboundSMTPServer("127.0.0.1", free_port(), max_bytes=4000).start()
    try:
        big = customer_mail(subject="Logs attached") + (b"x" * 70 + b"\r\n") * 90
        with smtplib.SMTP(server.host, server.port, timeout=20) as smtp:
            smtp.ehlo()
            assert smtp.esmtp_features["size"] == "4000"
            # Announced size over the limit: refused at MAIL FROM (RFC 1870).
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                smtp.sendmail("someone@customer.example", [conn.inbound_address], big)
            assert refused.value.smtp_code == 552
            # Not announced: the data itself is refused once it is too big.
            smtp.rset()
            assert smtp.mail("someone@customer.example")[0] == 250
            assert smtp.rcpt(conn.inbound_address)[0] == 250
            assert smtp.data(big)[0] == 552
            # A message within the limit still goes through on the same server.
            small = customer_mail(subject="Short one")
            assert smtp.sendmail("someone@customer.example", [conn.inbound_address],
                                 small) == {}
    finally:
        server.stop()
    with tenant_scope(tenant):
        [row] = InboundEmail.objects.all()
    assert row.raw_size == len(small)


def test_a_message_that_cannot_be_stored_gets_451_and_arrives_once_when_sent_again(
        admin_client, tenant, smtp_server, settings, tmp_path):
    conn = add_forwarding(admin_client, tenant)
    working = settings.STORAGES
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the storage cannot make its folders under a file
    settings.STORAGES = {**working, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(blocked)}}}
    raw = customer_mail()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(smtp_server, raw, conn.inbound_address)
    assert refused.value.smtp_code == 451  # the forwarder keeps it and tries again
    with unscoped():
        assert not InboundEmail.objects.exists()
    settings.STORAGES = working
    assert send(smtp_server, raw, conn.inbound_address) == {}
    assert ingest_all() == [InboundState.PROCESSED]
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 1


def test_starttls_is_offered_with_a_certificate_and_mail_still_arrives(
        admin_client, tenant, settings, tmp_path):
    import ssl

    from sandbox.mailserver import make_certificates

    settings.INBOUND_EMAIL_DOMAIN = "inbound.localhost"
    conn = add_forwarding(admin_client, tenant)
    ca_file, cert_file, key_file = make_certificates(tmp_path)
    server = InboundSMTPServer("127.0.0.1", free_port(), tls_cert_file=str(cert_file),
                               tls_key_file=str(key_file)).start()
    try:
        with smtplib.SMTP(server.host, server.port, timeout=20) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            smtp.starttls(context=ssl.create_default_context(cafile=str(ca_file)))
            assert smtp.sendmail("someone@customer.example", [conn.inbound_address],
                                 customer_mail()) == {}
    finally:
        server.stop()
    with tenant_scope(tenant):
        assert InboundEmail.objects.get().connection_id == conn.pk


# ------------------------------------------------------------ Gmail's confirmation

def test_gmails_confirmation_shows_its_code_on_the_mailbox_page_and_is_no_ticket(
        admin_client, tenant, smtp_server):
    conn = add_forwarding(admin_client, tenant, address="support@acme.test")
    raw = (FIXTURES / "gmail-forwarding-confirmation.eml").read_bytes()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert send(smtp_server, raw, conn.inbound_address,
                mail_from="forwarding-noreply@google.com") == {}
    assert ingest_all() == [InboundState.SKIPPED]
    with tenant_scope(tenant):
        row = InboundEmail.objects.get()
        assert not Ticket.objects.exists()
    assert row.reason.startswith("forwarding_confirmation: Gmail asks to confirm "
                                 "forwarding from support@acme.test")
    shown = page(admin_client, tenant, conn)
    assert '<code class="confirmation-code">614283097</code>' in shown
    assert ('href="https://mail-settings.google.com/mail/vf-%5BANGjdJ8Example-Fixture-Link'
            '%5D-aBcDeF0123"') in shown
    assert "Gmail asks you to confirm the forwarding from support@acme.test" in shown
    # Gmail reached us, but nothing shows forwarding is on yet.
    assert "Waiting for first email" in shown


def test_a_confirmation_lookalike_from_anybody_else_is_an_ordinary_ticket(
        admin_client, tenant, smtp_server):
    conn = add_forwarding(admin_client, tenant)
    raw = customer_mail(subject="(#123456789) Gmail Forwarding Confirmation - Receive Mail "
                                "from evil@attacker.example", sender="evil@attacker.example")
    send(smtp_server, raw, conn.inbound_address)
    assert ingest_all() == [InboundState.PROCESSED]
    assert "Confirmation code" not in page(admin_client, tenant, conn)


# --------------------------------------------------------------------------- loops

def test_a_loop_through_the_forwarder_is_stopped(admin_client, tenant, smtp_server):
    conn = add_forwarding(admin_client, tenant)
    send(smtp_server, customer_mail(subject="Hello"), conn.inbound_address)
    assert ingest_all() == [InboundState.PROCESSED]
    # The customer's mailbox answers automatically to our support address, and the
    # forwarder hands that answer back to us with the From it had: our support address.
    bounced_back = customer_mail(subject="Re: Hello", sender=SUPPORT, to=SUPPORT)
    send(smtp_server, bounced_back, conn.inbound_address)
    # One of our own messages (our loop header on it) forwarded back in from elsewhere.
    ours = customer_mail(subject="Re: Hello again", sender="relay@customer.example",
                         X_Helpdesk_Loop=str(tenant.pk))
    send(smtp_server, ours, conn.inbound_address)
    assert ingest_all() == [InboundState.SKIPPED, InboundState.SKIPPED]
    with tenant_scope(tenant):
        reasons = sorted(InboundEmail.objects.filter(state=InboundState.SKIPPED)
                         .values_list("reason", flat=True))
        assert Ticket.objects.count() == 1
        assert Ticket.objects.get().messages.count() == 1
    assert reasons[0].startswith("loop: our own outbound mail came back")
    assert reasons[1].startswith(f"loop: sent from a connected, alias or forwarded address "
                                 f"({SUPPORT})")


# -------------------------------------------------------------------------- replies

@pytest.fixture
def imap_sender(admin_client, tenant, mail_server, mailboxes, settings):
    """An IMAP/SMTP mailbox on the real Dovecot + submission server that can send."""
    settings.IMAP_EXTRA_CA_FILE = str(mail_server.ca_file)
    answer = admin_client.post(f"/{tenant.slug}/settings/email/add/imap/", {
        "address": mailboxes.support, "imap_host": "127.0.0.1", "imap_security": "ssl",
        "imap_port": mail_server.ports.imaps, "username": mailboxes.support,
        "password": mailboxes.support_password, "smtp_security": "starttls",
        "smtp_port": mail_server.ports.submission, "folder": "INBOX",
        "sent_folder": "Sent", "after_import": "leave", "sync_start_at": "2000-01-01",
        "action": "save"})
    assert answer.status_code == 302
    with tenant_scope(tenant):
        return EmailConnection.objects.get(address=mailboxes.support)


def test_replies_go_out_through_the_mapped_mailbox_from_the_right_address(
        admin_client, tenant, admin_user, smtp_server, imap_sender, mail_server, mailboxes):
    conn = add_forwarding(admin_client, tenant, display_name="Forwarded Help")
    send(smtp_server, customer_mail(sender=mailboxes.customer), conn.inbound_address)
    ingest_all()
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
    # Nothing mapped and no default: no mailbox to reply from, said on the page.
    assert "No mailbox sends its replies yet" in page(admin_client, tenant, conn)
    with tenant_scope(tenant), pytest.raises(outbound.ApplicationError) as refused:
        outbound.reply_create(ticket=ticket, author=admin_user, body_text="Hi")
    assert refused.value.code == "no_mailbox"

    answer = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/", {
        "display_name": "Forwarded Help", "routing_mode": "none",
        "reply_connection": imap_sender.pk, "acknowledgement_text": "Ticket {number}"})
    assert answer.status_code == 302
    shown = page(admin_client, tenant, conn)
    assert (f"Replies to its tickets go out through {imap_sender.address} (chosen below "
            f"under Send replies through), From <strong>{imap_sender.address}</strong>") \
        in shown
    with tenant_scope(tenant):
        ticket.refresh_from_db()
        message = outbound.reply_create(ticket=ticket, author=admin_user,
                                        body_text="We are on it.")
    assert message.email_connection_id == imap_sender.pk
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    [first] = [message_from_bytes(m, policy=default)
               for m in mail_server.messages(mailboxes.customer)]
    assert first["From"] == imap_sender.address  # it may not send as the support address

    # The sending mailbox may send as the support address: it is listed as its alias.
    with tenant_scope(tenant):
        EmailConnection.objects.filter(pk=imap_sender.pk).update(alias_addresses=[SUPPORT])
        EmailConnection.objects.filter(pk=conn.pk).update(reply_connection=None)
        EmailConnection.objects.filter(pk=imap_sender.pk).update(is_default=True)
    shown = page(admin_client, tenant, conn)
    assert (f"go out through {imap_sender.address} (the workspace's default mailbox), From "
            f"<strong>{SUPPORT}</strong>") in shown
    ticket_page = admin_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert f"Forwarded Help &lt;{SUPPORT}&gt;, sent through {imap_sender.address}" in ticket_page
    with tenant_scope(tenant):
        message = outbound.reply_create(ticket=ticket, author=admin_user,
                                        body_text="Fixed now.")
    assert message.email_connection_id == imap_sender.pk
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    second = [message_from_bytes(m, policy=default)
              for m in mail_server.messages(mailboxes.customer)][-1]
    assert second["From"] == f"Forwarded Help <{SUPPORT}>"
    with tenant_scope(tenant):
        inbound = InboundEmail.objects.get(ticket=ticket)
    assert second["In-Reply-To"] == f"<{inbound.message_id_header}>"


def test_adding_refuses_an_address_forwarded_already_and_bad_input(admin_client, tenant,
                                                                  smtp_server):
    add_forwarding(admin_client, tenant)
    again = admin_client.post(f"/{tenant.slug}/settings/email/forward/forwarding/",
                              {"address": SUPPORT})
    assert again.status_code == 400 and "is forwarded to a mailbox already" in \
        again.content.decode()
    bad = admin_client.post(f"/{tenant.slug}/settings/email/forward/forwarding/",
                            {"address": "not an address"})
    assert bad.status_code == 400 and "Enter a valid email address" in bad.content.decode()
    with tenant_scope(tenant):
        assert EmailConnection.objects.count() == 1
