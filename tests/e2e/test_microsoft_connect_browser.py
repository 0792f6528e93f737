"""An admin connects a Microsoft 365 mailbox in a real browser (Debian's Chromium through
Playwright): Email channels, Outlook / Microsoft 365, the sandbox's Microsoft sign-in
(account picker, Permissions requested, Accept) while the live server talks to the
sandbox's TLS side through the real msal, back to an Active connection; a Gmail mailbox
connected the same way beside it, the Email channels page shows both with their health.
A tenant that needs an admin's approval ends on the page with the admin-consent link."""

from __future__ import annotations

from channels_email.models import EmailConnection
from helpdesk.tenancy import tenant_scope
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.factories import PASSWORD
from tests.sandbox_support import ms_mailbox, use_sandbox_microsoft

pytestmark = BROWSER_MARKS


def test_admin_connects_microsoft_365_beside_gmail_and_sees_both_healthy(
        gmail, sandbox_https_url, sandbox_ca_file, settings, live_server, tenant, admin_user,
        monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    sandbox, _ = gmail
    use_sandbox_microsoft(settings, sandbox, sandbox_https_url, sandbox_ca_file,
                          public_base_url=live_server.url)
    ms_mailbox(sandbox, "support@contoso.test", "contoso")
    ms_mailbox(sandbox, "help@fabrikam.test", "fabrikam")
    channels = f"{live_server.url}/{tenant.slug}/settings/email/"
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        sign_in(page, live_server.url, admin_user.email, PASSWORD)

        page.goto(channels)
        page.get_by_role("button", name="Outlook / Microsoft 365").click()
        expect(page.locator("h1")).to_have_text("Pick an account")
        page.get_by_role("button", name="support@contoso.test").click()
        expect(page.locator("h1")).to_have_text("Permissions requested")
        expect(page.locator("body")).to_contain_text("Read your mail")
        expect(page.locator("body")).to_contain_text("Send mail as you")
        page.get_by_role("button", name="Accept").click()
        expect(page.locator("h1")).to_have_text("support@contoso.test")
        expect(page.locator(".badge")).to_have_text("Active")

        page.goto(channels)
        page.get_by_role("button", name="Gmail: Authorize with Google").click()
        page.fill("input[name=email]", "support@acme.test")
        page.get_by_role("button", name="Next").click()
        page.click("button[value=allow]")
        expect(page.locator("h1")).to_have_text("support@acme.test")

        page.goto(channels)
        rows = page.locator("table.connections tbody tr")
        expect(rows).to_have_count(2)
        ms_row = rows.filter(has_text="support@contoso.test")
        expect(ms_row).to_contain_text("Microsoft 365")
        expect(ms_row.locator(".badge").first).to_have_text("Active")
        gmail_row = rows.filter(has_text="support@acme.test")
        expect(gmail_row).to_contain_text("Gmail")
        expect(gmail_row.locator(".badge").first).to_have_text("Active")

        # fabrikam: only an admin may consent; back on our page with the link for it.
        page.get_by_role("button", name="Outlook / Microsoft 365").click()
        page.get_by_role("button", name="help@fabrikam.test").click()
        expect(page.locator("h1")).to_have_text("Need admin approval")
        page.get_by_role("button", name="Return to the application without granting "
                                        "consent").click()
        expect(page.locator("h1")).to_have_text("Could not connect the mailbox")
        link = page.get_by_role("link", name="Grant admin consent for your organization")
        expect(link).to_have_attribute("href", f"{sandbox}/organizations/v2.0/adminconsent?"
                                       + link.get_attribute("href").split("?", 1)[1])
        link.click()
        expect(page.locator("h1")).to_have_text("Pick an administrator account")
        browser.close()
    with tenant_scope(tenant):
        assert sorted(EmailConnection.objects.values_list("provider", "address")) == [
            ("gmail", "support@acme.test"), ("microsoft", "support@contoso.test")]
