"""Bounces as real MTAs and providers send them (tests/fixtures/bounces/, one .eml per
case, each described in tests/fixtures/README): the verdict, the bounced recipient and status,
and our Message-ID; the guards (a customer forwarding a bounce, a mailing-list notice);
and the whole path from a bounce of one of our replies to the reply marked Bounced."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import requests

from channels_email import outbound
from channels_email.ingest import inbound_email_ingest
from channels_email.mime import parse_email
from channels_email.models import InboundEmail
from channels_email.services import connection_create_manual, inbound_email_receive
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_flow import (  # noqa: F401 - fixtures
    admin_client,
    gmail,
    run_tasks,
)
from tests.channels_email.test_outbound import conversation, reply  # noqa: F401 - fixture
from tickets.models import DeliveryStatus, Ticket

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bounces"

# file -> (bounced recipient, status, our Message-ID)
BOUNCES = {
    # RFC 3464 reports in any transfer encoding; "expired" is a final failure.
    "rfc3464-quoted-printable.eml": (
        "maria.gonzalez.purchasing.department.head@customer.example", "5.1.1",
        "reply-7d1e@helpdesk.acme.example"),
    "rfc3464-base64.eml": ("jan.devries@customer.example", "5.2.2",
                           "reply-9a30@helpdesk.acme.example"),
    "rfc3464-action-expired.eml": ("li.wei@customer.example", "4.4.7",
                                   "reply-c0ffee@helpdesk.acme.example"),
    "rfc3464-nonstandard-action.eml": ("li.wei@customer.example", "5.1.1",
                                       "reply-c0ffee@helpdesk.acme.example"),
    # The sender side says "mail system", the wording is unknown: the original names
    # the recipient (narrowed to the one the notice names: Lea was only in Cc).
    "daemon-sender-unknown-wording.eml": ("omar.haddad@customer.example", "",
                                          "reply-44b2@helpdesk.acme.example"),
    "null-return-path-quoted-original.eml": ("sven.olsen@customer.example", "5.2.1",
                                             "reply-52aa@helpdesk.acme.example"),
    "postmaster-spelling-variant.eml": ("ingrid.berg@customer.example", "",
                                        "reply-57c3@helpdesk.acme.example"),
    "mail-delivery-subsystem-name.eml": ("camille.roux@customer.example", "",
                                         "reply-61de@helpdesk.acme.example"),
    "return-path-mailer-daemon.eml": ("rosa.klein@customer.example", "",
                                      "reply-113e@helpdesk.acme.example"),
    "missing-return-path-auto-submitted.eml": ("tomas.novak@customer.example", "5.7.1",
                                               "reply-63ef@helpdesk.acme.example"),
    "no-from-header.eml": ("piet.jansen@old-host.example", "5.1.1",
                           "reply-66f0@helpdesk.acme.example"),
    # Report fields in the text (only the failed recipient counts, not the delayed
    # one); a notice returning no original (its References name our reply).
    "inline-report-fields.eml": ("yusuf.demir@customer.example", "5.4.1",
                                 "reply-109c@helpdesk.acme.example"),
    "daemon-notice-without-original.eml": ("nina.petrova@customer.example", "5.2.1",
                                           "reply-111d@helpdesk.acme.example"),
    # Provider formats.
    "amazon-ses-bounce-sns-email.eml": ("noah.smith@customer.example", "5.1.1",
                                        "reply-71ab@helpdesk.acme.example"),
    "amazon-ses-bounce-sns-email-json.eml": ("emma.brown@customer.example", "4.2.2",
                                             "reply-72cd@helpdesk.acme.example"),
    "office365-ndr.eml": ("aiko.tanaka@customer.example", "5.1.10",
                          "reply-81aa@helpdesk.acme.example"),
    "exchange-ndr-without-report.eml": ("lucas.martin@customer.example", "",
                                        "reply-85bb@helpdesk.acme.example"),
    "exchange-ndr-localised-subject.eml": ("lucia.fernandez@cliente.example", "",
                                           "reply-107b@helpdesk.acme.example"),
    "gmail-address-not-found.eml": ("chen.jie@customer.example", "5.1.1",
                                    "reply-90cc@helpdesk.acme.example"),
    "yahoo-failure-notice.eml": ("sofia.rossi@customer.example", "554",
                                 "reply-93dd@helpdesk.acme.example"),
    "jp-carrier-ezweb.eml": ("taro.yamada@ezweb.ne.jp", "",
                             "reply-95ee@helpdesk.acme.example"),
    "jp-carrier-docomo.eml": ("kenji.sato@docomo.ne.jp", "550",
                              "reply-98aa@helpdesk.acme.example"),
    "jp-carrier-japanese-wording.eml": ("hanako.suzuki@softbank.example", "",
                                        "reply-97ff@helpdesk.acme.example"),
}
DELAYS = {"rfc3464-action-delayed.eml"}
SUCCESS_NOTICES = {"rfc3464-action-delivered.eml", "rfc3464-action-relayed.eml",
                   "amazon-ses-delivery-sns-email.eml"}
# Mail a person wrote: it becomes (or joins) a ticket like any other.
CUSTOMER_MAIL = {"guard-customer-forwards-a-bounce.eml",
                 "guard-customer-forwards-a-bounce-inline.eml"}
NOT_BOUNCES = {"guard-mailing-list-notice.eml"}  # automatic, but no delivery report
# An auto-reply from a null return path whose subject quotes a failure word of ours.
AUTO_REPLIES = {"guard-auto-reply-quoting-a-failure-subject.eml"}


def parse(name: str):
    return parse_email((FIXTURES / name).read_bytes())


def test_every_fixture_has_an_expectation_and_a_readme_entry():
    files = {p.name for p in FIXTURES.glob("*.eml")}
    judged = set(BOUNCES) | DELAYS | SUCCESS_NOTICES | CUSTOMER_MAIL | NOT_BOUNCES | AUTO_REPLIES
    assert files == judged
    readme = (FIXTURES.parent / "README").read_text()
    section = readme.split("## bounces/ (bounce verdicts)", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+\.eml)` \|", section, re.MULTILINE))
    assert documented == files


@pytest.mark.parametrize("name", sorted(BOUNCES))
def test_bounce_verdict_recipient_status_and_our_message_id(name):
    recipient, status, ours = BOUNCES[name]
    parsed = parse(name)
    assert not parsed.quarantine_reason
    assert parsed.is_bounce and not parsed.is_delay, parsed
    assert [(r.recipient, r.status) for r in parsed.bounce.recipients] == [(recipient, status)]
    assert parsed.bounce.original_message_id == ours
    assert ours in parsed.bounce.referenced_message_ids


@pytest.mark.parametrize("name", sorted(DELAYS))
def test_a_delay_is_no_bounce_and_no_ticket(name):
    parsed = parse(name)
    assert parsed.is_delay and not parsed.is_bounce


@pytest.mark.parametrize("name", sorted(SUCCESS_NOTICES))
def test_a_success_notice_is_neither_a_bounce_nor_a_ticket(name):
    parsed = parse(name)
    assert not parsed.is_bounce and not parsed.is_delay
    assert parsed.is_auto_reply and parsed.auto_reply_reason == "delivery notification"


@pytest.mark.parametrize("name", sorted(CUSTOMER_MAIL))
def test_a_customer_forwarding_a_bounce_is_a_customer(name):
    parsed = parse(name)
    assert not (parsed.is_bounce or parsed.is_delay or parsed.is_auto_reply
                or parsed.is_complaint or parsed.quarantine_reason), parsed


@pytest.mark.parametrize("name", sorted(NOT_BOUNCES))
def test_a_mailing_list_notice_is_not_a_bounce(name):
    parsed = parse(name)
    assert not parsed.is_bounce and not parsed.is_delay


@pytest.mark.parametrize("name", sorted(AUTO_REPLIES))
def test_an_auto_reply_quoting_a_failure_subject_is_an_auto_reply(name):
    parsed = parse(name)
    assert parsed.is_auto_reply and not parsed.is_bounce and not parsed.is_delay


def test_the_daemon_rule_needs_a_failure_subject():
    # The same daemon notice under a neutral subject is not taken for a bounce on the
    # sender side alone (a postmaster can write about anything).
    raw = (FIXTURES / "daemon-sender-unknown-wording.eml").read_bytes().replace(
        b"Subject: Mail delivery failed: returning message to sender",
        b"Subject: Your mailbox settings")
    assert not parse_email(raw).is_bounce


def test_an_inline_forward_is_a_customer_even_without_fw_in_the_subject():
    # Some clients drop the prefix; the client's forward marker above the bounce text
    # still says a person sent it.
    raw = (FIXTURES / "guard-customer-forwards-a-bounce-inline.eml").read_bytes().replace(
        b"Subject: Fw: Delivery Status Notification (Failure)",
        b"Subject: Undeliverable reply, it was rejected")
    parsed = parse_email(raw)
    assert not parsed.is_bounce and not parsed.is_auto_reply


def test_an_ses_notification_that_fails_dmarc_is_not_read():
    raw = (FIXTURES / "amazon-ses-bounce-sns-email.eml").read_bytes().replace(
        b"From: AWS", b"Authentication-Results: mx.acme.example; dmarc=fail "
        b"header.from=sns.amazonaws.com\nFrom: AWS")
    assert not parse_email(raw).is_bounce


def test_an_ses_notification_of_odd_shape_is_read_without_raising():
    raw = (FIXTURES / "amazon-ses-bounce-sns-email.eml").read_bytes()
    head = raw[:raw.index(b"\n\n") + 2]
    parsed = parse_email(head + b'{"notificationType":"Bounce","bounce":[1],"mail":"x"}\n')
    assert not parsed.quarantine_reason
    assert parsed.is_bounce and parsed.bounce.recipients == []


@pytest.mark.django_db
def test_a_bounce_without_a_sender_is_recorded_as_a_bounce_not_quarantined(tenant):
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="support@acme.example")
        row, _ = inbound_email_receive(connection=conn, provider_message_id="nofrom-1",
                                       raw=(FIXTURES / "no-from-header.eml").read_bytes())
    outcome = inbound_email_ingest(inbound_email_id=row.pk)
    assert outcome.state == "skipped" and outcome.reason.startswith("bounce:")
    with tenant_scope(tenant):
        row.refresh_from_db()
        assert row.state == "skipped" and row.from_address == ""
        assert row.details["bounce"]["recipients"][0]["recipient"] == \
            "piet.jansen@old-host.example"
        assert not Ticket.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", ["exchange-ndr-without-report.eml", "no-from-header.eml",
                                  "amazon-ses-bounce-sns-email.eml"])
def test_the_bounce_of_our_reply_marks_it_bounced(name, conversation, tenant,  # noqa: F811
                                                  admin_user):
    sandbox, conn, ticket = conversation
    message = reply(tenant, ticket, admin_user)
    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    recipient, _, ours = BOUNCES[name]
    raw = (FIXTURES / name).read_bytes()
    raw = raw.replace(ours.encode(), message.message_id_header.encode())
    raw = raw.replace(recipient.encode(), b"maria@customer.example")
    raw = raw.replace(b"support@acme.example", b"support@acme.test")
    requests.post(sandbox + "/_sandbox/deliver", json={
        "to": "support@acme.test", "raw": base64.b64encode(raw).decode()},
        timeout=5).raise_for_status()
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        message.refresh_from_db()
        assert message.delivery_status == DeliveryStatus.BOUNCED
        assert "maria@customer.example" in message.delivery_error
        assert Ticket.objects.count() == 1 and ticket.messages.count() == 2
        report = InboundEmail.objects.get(state="skipped")
        assert report.reason.startswith("bounce") and report.message_id == message.pk
