"""The test mail server is real: Dovecot speaks IMAP with STARTTLS and implicit TLS under
our CA, delivers over LMTP, resets UIDVALIDITY and re-reads changed passwords; the
submission server wants TLS before AUTH, refuses unknown recipients at RCPT and answers
DATA as told."""

from __future__ import annotations

import smtplib
import ssl
from email import message_from_bytes

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError


def _tls(server):
    return ssl.create_default_context(cafile=str(server.ca_file))


def test_imap_over_both_tls_modes_and_lmtp_delivery(mail_server, mailboxes):
    mail_server.deliver(b"Subject: Hello\r\nMessage-ID: <m1@x>\r\n\r\nHi\r\n", mailboxes.support)
    implicit = IMAPClient("127.0.0.1", port=mail_server.ports.imaps, ssl=True,
                          ssl_context=_tls(mail_server), timeout=5)
    implicit.login(mailboxes.support, mailboxes.support_password)
    assert {name for _, _, name in implicit.list_folders()} >= {"INBOX", "Sent"}
    assert implicit.select_folder("INBOX", readonly=True)[b"EXISTS"] == 1
    implicit.logout()
    plain = IMAPClient("127.0.0.1", port=mail_server.ports.imap, ssl=False, timeout=5)
    plain.starttls(_tls(mail_server))
    plain.login(mailboxes.support, mailboxes.support_password)
    assert plain.select_folder("INBOX")[b"UIDVALIDITY"] != 777
    plain.logout()
    mail_server.set_uidvalidity(mailboxes.support, "INBOX", 777)
    again = mail_server.imap(mailboxes.support)
    assert again.select_folder("INBOX")[b"UIDVALIDITY"] == 777
    again.logout()


def test_a_changed_password_is_refused(mail_server, mailboxes):
    mail_server.set_password(mailboxes.support, "changed")
    with pytest.raises(LoginError):
        IMAPClient("127.0.0.1", port=mail_server.ports.imap, ssl=False,
                   timeout=5).login(mailboxes.support, mailboxes.support_password)


def test_submission_needs_tls_and_refuses_strangers(mail_server, mailboxes):
    with smtplib.SMTP("127.0.0.1", mail_server.ports.submission, timeout=5) as smtp:
        with pytest.raises(smtplib.SMTPNotSupportedError):
            smtp.login(mailboxes.support, mailboxes.support_password)  # not before TLS
        smtp.starttls(context=_tls(mail_server))
        smtp.login(mailboxes.support, mailboxes.support_password)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail(mailboxes.support, ["nobody@elsewhere.example"], b"Subject: x\r\n\r\n")
        mail_server.fail_next_data("451 4.3.0 Try again later")
        with pytest.raises(smtplib.SMTPDataError) as failed:
            smtp.sendmail(mailboxes.support, [mailboxes.customer], b"Subject: x\r\n\r\nx\r\n")
        assert failed.value.smtp_code == 451
        smtp.sendmail(mailboxes.support, [mailboxes.customer], b"Subject: Re\r\n\r\nOk\r\n")
    with smtplib.SMTP_SSL("127.0.0.1", mail_server.ports.submissions, timeout=5,
                          context=_tls(mail_server)) as smtp:
        smtp.login(mailboxes.support, mailboxes.support_password)
        smtp.sendmail(mailboxes.support, [mailboxes.customer], b"Subject: Re 2\r\n\r\nOk\r\n")
    received = [message_from_bytes(raw) for raw in mail_server.messages(mailboxes.customer)]
    assert [m["Subject"] for m in received] == ["Re", "Re 2"]
    assert received[0]["Return-Path"] == f"<{mailboxes.support}>"  # the envelope sender
