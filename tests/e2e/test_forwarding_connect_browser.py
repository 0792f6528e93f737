"""Adding a forwarding mailbox as an admin, in a real browser (Debian's Chromium through
Playwright): Add Email Account > Forwarding, the support address, and the mailbox page
shows the generated address, the set-up steps for Gmail and Microsoft 365 and "Waiting
for first email". Mail then sent by SMTP (smtplib) to that address through the real
inbound SMTP server becomes a ticket (the real pipeline, as the worker runs it), and the
page turns Active. A screenshot goes to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.policy import SMTP as smtp_policy
from email.utils import make_msgid
from pathlib import Path

from channels_email.models import EmailConnection, InboundEmail, InboundState
from channels_email.tasks import process_inbound_email
from helpdesk.tenancy import tenant_scope, unscoped
from tests.channels_email.test_forwarding import smtp_server  # noqa: F401 - the fixture
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.factories import PASSWORD
from tickets.models import Ticket

pytestmark = BROWSER_MARKS
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def test_admin_adds_a_forwarding_mailbox_and_its_first_mail_becomes_a_ticket(
        live_server, tenant, admin_user, smtp_server, monkeypatch):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.set_default_timeout(20_000)
        sign_in(page, live_server.url, admin_user.email, PASSWORD)
        page.goto(f"{live_server.url}/{tenant.slug}/settings/email/")
        page.get_by_role("link", name="Forwarding: any mail service").click()

        page.fill("#id_address", "help@nodot")  # the browser lets it through; we do not
        page.get_by_role("button", name="Create forwarding address").click()
        expect(page.locator(".errorlist")).to_contain_text("valid email address")
        with unscoped():
            assert not EmailConnection.objects.exists()

        page.fill("#id_address", "support@acme.test")
        page.fill("#id_display_name", "Acme Support")
        page.get_by_role("button", name="Create forwarding address").click()
        expect(page.locator("h1")).to_have_text("support@acme.test")
        with tenant_scope(tenant):
            conn = EmailConnection.objects.get()
        address = page.locator("#forwarding-address")
        expect(address).to_have_text(conn.inbound_address)
        assert conn.inbound_address.endswith("@inbound.localhost")
        forwarding = page.get_by_role("region", name="Forwarding")
        expect(forwarding).to_contain_text("Gmail or Google Workspace")
        expect(forwarding).to_contain_text("Microsoft 365 or Outlook.com")
        expect(forwarding).to_contain_text(f"paste {conn.inbound_address}")
        expect(page.locator("dl.health")).to_contain_text("Waiting for first email")
        page.screenshot(path=str(ARTIFACTS / "forwarding_1_address.png"), full_page=True)

        # The support address's provider forwards a customer's mail to us.
        mail = EmailMessage()
        mail["From"], mail["To"] = "Maria Lopez <maria@customer.example>", "support@acme.test"
        mail["Subject"], mail["Message-ID"] = "Printer on fire", make_msgid()
        mail.set_content("Hello, the printer is on fire.")
        with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=20) as smtp:
            assert smtp.sendmail("support@acme.test", [conn.inbound_address],
                                 mail.as_bytes(policy=smtp_policy)) == {}
        with tenant_scope(tenant):
            [row] = InboundEmail.objects.filter(state=InboundState.RECEIVED)
        assert process_inbound_email.run(inbound_email_id=row.pk) == InboundState.PROCESSED

        page.reload()
        expect(page.locator("dl.health")).to_contain_text("Active")
        expect(page.locator("dl.health")).not_to_contain_text("Waiting for first email")
        expect(page.locator("dl.health")).to_contain_text("Last email received")
        page.goto(f"{live_server.url}/{tenant.slug}/tickets/?view=unassigned")
        expect(page.locator("body")).to_contain_text("Printer on fire")
        page.goto(f"{live_server.url}/{tenant.slug}/settings/email/")
        row_ = page.locator("table.connections tbody tr").filter(has_text="support@acme.test")
        expect(row_).to_contain_text(f"Forwarding: forwarded to {conn.inbound_address}")
        browser.close()
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
    assert ticket.email_connection_id == conn.pk and ticket.title == "Printer on fire"
