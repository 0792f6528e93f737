"""Email issues page: every mail that did not become a ticket is listed, skipped mail
included, with its reason in plain words; the filter survives Reprocess."""

from __future__ import annotations

import pytest

from channels_email.ingest import inbound_email_ingest
from channels_email.models import InboundEmail
from channels_email.services import connection_create_manual, inbound_email_receive
from helpdesk.tenancy import tenant_scope
from tests.channels_email.mail_builder import build_email

pytestmark = pytest.mark.django_db


@pytest.fixture
def conn(tenant):
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="support@company.example")
        conn.block_list = ["*@spam.example"]
        conn.save()
        return conn


def receive(conn, raw: bytes, name: str) -> InboundEmail:
    with tenant_scope(conn.tenant):
        row, _ = inbound_email_receive(connection=conn, raw=raw, provider_message_id=name)
    inbound_email_ingest(inbound_email_id=row.pk)
    with tenant_scope(conn.tenant):
        row.refresh_from_db()
    return row


def test_skipped_mail_is_listed_by_default_with_its_reason_in_words(client, tenant,
                                                                    admin_user, conn):
    blocked = receive(conn, build_email(sender="Win <prize@spam.example>",
                                        subject="You won"), "blocked")
    garbage = receive(conn, b"\x00\x01 not an email \xff" * 3, "garbage")
    fine = receive(conn, build_email(subject="Printer on fire"), "fine")
    assert (blocked.state, garbage.state, fine.state) == ("skipped", "quarantined",
                                                          "processed")
    client.force_login(admin_user)
    url = f"/{tenant.slug}/settings/email/inbound/"
    page = client.get(url).content.decode()
    assert "You won" in page and "Printer on fire" not in page
    assert "<strong>Block list</strong>" in page
    assert "sender matches the block list entry &#x27;*@spam.example&#x27;" in page
    assert "blocked:" not in page  # the code is put in words, not shown
    assert page.count('<span class="badge quarantined">') == 1

    only_skipped = client.get(url, {"state": "skipped"}).content.decode()
    assert "You won" in only_skipped and 'class="badge quarantined"' not in only_skipped
    assert '<option value="skipped" selected>' in only_skipped
    # Processed mail is not an issue, whatever the URL asks for.
    assert "Printer on fire" not in client.get(url, {"state": "processed"}).content.decode()


def test_reprocess_goes_back_to_the_list_as_it_was_filtered(client, tenant, admin_user, conn):
    blocked = receive(conn, build_email(sender="prize@spam.example", subject="Again"),
                      "blocked")
    client.force_login(admin_user)
    answer = client.post(f"/{tenant.slug}/settings/email/inbound/{blocked.pk}/reprocess/",
                         {"state": "skipped"})
    assert answer.status_code == 302
    assert answer["Location"] == f"/{tenant.slug}/settings/email/inbound/?state=skipped"
    unfiltered = client.post(f"/{tenant.slug}/settings/email/inbound/{blocked.pk}/reprocess/")
    assert unfiltered["Location"] == f"/{tenant.slug}/settings/email/inbound/"
    page = client.get(f"/{tenant.slug}/settings/email/inbound/?state=skipped").content.decode()
    assert 'name="state" value="skipped"' in page  # each Reprocess button keeps it
