"""An admin connects Gmail in a real browser (Debian's Chromium through Playwright): Email
channels, Authorize with Google, consent in the sandbox, back to an Active connection,
pick a team and save; then a customer email delivered in the sandbox shows up in that
team's queue, through Pub/Sub push to the live server, the webhook and a real worker."""

from __future__ import annotations

import os
import shutil

import pytest
import requests

from channels_email.models import EmailConnection
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_worker import worker  # noqa: F401 - fixture
from tests.factories import PASSWORD, TeamFactory
from tests.sandbox_support import use_sandbox_google

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                       reason="Debian's chromium is not installed (make test installs it)"),
]
TOPIC = "projects/helpdesk-e2e/topics/gmail"
PUSH_ACCOUNT = "pubsub-push@helpdesk-e2e.iam.gserviceaccount.com"


@pytest.fixture
def gmail(settings, sandbox, live_server):
    """Settings and sandbox for a browser run against the live server (the fixture name
    matches test_gmail_worker's worker fixture, which reads the sandbox from it)."""
    webhook = live_server.url + "/webhooks/google/pubsub/"
    use_sandbox_google(settings, sandbox, public_base_url=live_server.url, topic=TOPIC,
                       push_endpoint=webhook, audience=webhook, service_account=PUSH_ACCOUNT)
    return sandbox, None


def test_admin_connects_gmail_in_the_browser_and_mail_reaches_the_team_queue(
        gmail, live_server, tenant, admin_user, worker, monkeypatch):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    sandbox, _ = gmail
    billing = TeamFactory(tenant=tenant, name="Billing")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.set_default_timeout(20_000)
        page.goto(live_server.url + "/accounts/login/")
        page.fill("#id_username", admin_user.email)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
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
        page.get_by_role("button", name="Save").click()
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
