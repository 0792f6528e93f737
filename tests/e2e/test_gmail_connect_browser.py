"""An admin connects Gmail in a real browser (Debian's Chromium through Playwright): Email
channels, Authorize with Google, consent in the sandbox, back to an Active connection,
pick a team and save; then a customer email delivered in the sandbox shows up in that
team's queue, through Pub/Sub push to the live server, the webhook and a real worker."""

from __future__ import annotations

import requests

from channels_email.models import EmailConnection
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_worker import worker  # noqa: F401 - fixture
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.factories import PASSWORD, TeamFactory

pytestmark = BROWSER_MARKS


def test_admin_connects_gmail_in_the_browser_and_mail_reaches_the_team_queue(
        gmail, live_server, tenant, admin_user, worker, monkeypatch):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    sandbox, _ = gmail
    billing = TeamFactory(tenant=tenant, name="Billing")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        sign_in(page, live_server.url, admin_user.email, PASSWORD)
        page.goto(f"{live_server.url}/{tenant.slug}/settings/email/")
        page.get_by_role("button", name="Gmail: Authorize with Google").click()
        # The sandbox's Google pages: pick an account, then consent.
        page.fill("input[name=email]", "support@acme.test")
        page.get_by_role("button", name="Next").click()
        expect(page.locator("text=wants access to your Google Account")).to_be_visible()
        page.click("button[value=allow]")
        expect(page.locator("h1")).to_have_text("support@acme.test")
        expect(page.locator(".badge")).to_have_text("Active")
        page.select_option("select[name=routing_mode]", "team")
        page.select_option("select[name=routing_team]", str(billing.pk))
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.locator("table.list")).to_contain_text("Team: Billing")

        requests.post(sandbox + "/_sandbox/deliver", json={
            "to": "support@acme.test", "from": "Dana Customer <dana@example.net>",
            "subject": "The browser sees this", "body": "Hello?"}, timeout=5).raise_for_status()
        queue = f"{live_server.url}/{tenant.slug}/tickets/?team={billing.pk}"
        for _ in range(60):
            page.goto(queue)
            if page.locator("text=The browser sees this").count():
                break
            page.wait_for_timeout(500)
        expect(page.locator("text=The browser sees this")).to_be_visible()
        browser.close()
    with tenant_scope(tenant):
        assert EmailConnection.objects.get().routing_team == billing
