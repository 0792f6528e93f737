"""Adding an IMAP/SMTP mailbox as an admin, in a real browser (Debian's Chromium through
Playwright) against the real Dovecot: a wrong password fails Test connection in words and
saves nothing; the right one lists the folders; Save lands on the mailbox page, which
shows it Active; the list calls it IMAP/SMTP. A screenshot of the form goes to
tests/artifacts/ (git-ignored)."""

from __future__ import annotations

from pathlib import Path

from channels_email.models import EmailConnection
from helpdesk.tenancy import tenant_scope, unscoped
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.factories import PASSWORD

pytestmark = BROWSER_MARKS
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def test_admin_adds_an_imap_mailbox_testing_the_connection_first(
        live_server, tenant, admin_user, mail_server, mailboxes, settings, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    settings.IMAP_EXTRA_CA_FILE = str(mail_server.ca_file)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.set_default_timeout(20_000)
        sign_in(page, live_server.url, admin_user.email, PASSWORD)
        page.goto(f"{live_server.url}/{tenant.slug}/settings/email/")
        page.get_by_role("link", name="IMAP/SMTP: any mail server").click()

        page.fill("#id_address", mailboxes.support)
        page.fill("#id_imap_host", "127.0.0.1")
        page.select_option("#id_imap_security", "starttls")
        page.fill("#id_imap_port", str(mail_server.ports.imap))
        page.fill("#id_username", mailboxes.support)
        page.fill("#id_password", "not-the-password")
        page.select_option("#id_smtp_security", "starttls")
        page.fill("#id_smtp_port", str(mail_server.ports.submission))
        expect(page.locator("[data-show-when='after_import=move']")).to_be_hidden()
        page.get_by_role("button", name="Test connection").click()
        expect(page.get_by_role("alert")).to_contain_text("sign-in failed")
        with unscoped():
            assert not EmailConnection.objects.exists()

        page.fill("#id_password", mailboxes.support_password)
        page.get_by_role("button", name="Test connection").click()
        expect(page.get_by_role("status")).to_contain_text("Connection works")
        expect(page.get_by_role("status")).to_contain_text("Sent")
        page.screenshot(path=str(ARTIFACTS / "imap_1_test_connection.png"), full_page=True)

        # Save straight after the successful test: what was typed is still in the field.
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.locator("h1")).to_have_text(mailboxes.support)
        expect(page.locator("dl.health")).to_contain_text("Active")
        page.goto(f"{live_server.url}/{tenant.slug}/settings/email/")
        row = page.locator("table.connections tbody tr").filter(has_text=mailboxes.support)
        expect(row).to_contain_text("IMAP/SMTP")
        browser.close()
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get()
    assert conn.provider == "imap" and conn.credentials["imap"]["security"] == "starttls"
