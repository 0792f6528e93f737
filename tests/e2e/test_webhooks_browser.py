"""Settings > Webhooks in a real browser: an admin adds an endpoint (a private address is
refused on the form), sends a test event, sees its attempt, and the real receiver got it
signed; Delete asks first. No CSP violation on the way."""

from __future__ import annotations

import pytest
from standardwebhooks.webhooks import Webhook

from helpdesk.models import WebhookEndpoint, WebhookEvent
from helpdesk.tenancy import tenant_scope
from helpdesk.webhooks_out import live_secrets, webhook_attempt
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.e2e.test_admin_pages_browser import RECORD_CSP_VIOLATIONS
from tests.factories import PASSWORD
from tests.helpdesk.webhook_receiver import Receiver

pytestmark = BROWSER_MARKS


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


def test_an_admin_adds_an_endpoint_sends_a_test_event_and_sees_it_delivered(
        live_server, tenant, admin_user, receiver, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(RECORD_CSP_VIOLATIONS)
        page = context.new_page()
        page.set_default_timeout(20_000)
        sign_in(page, live_server.url, admin_user.email, PASSWORD)
        page.click("header.top nav >> text=Webhooks")
        expect(page.locator("nav a[aria-current=page]")).to_have_text("Webhooks")
        expect(page.locator("main")).to_contain_text("No webhook endpoints yet")

        page.fill("#id_url", "http://10.0.0.7/hook")
        page.check("input[value='ticket.created']")
        page.click("button:has-text('Add endpoint')")
        expect(page.locator(".errorlist")).to_contain_text("private address")

        page.fill("#id_url", receiver.url)
        page.check("input[value='message.delivery_status_changed']")
        page.click("button:has-text('Add endpoint')")
        expect(page.locator("h1")).to_have_text(receiver.url)
        page.click("summary:has-text('Current secret')")
        shown = page.locator("code.secret").first.inner_text().strip()
        with tenant_scope(tenant):
            endpoint = WebhookEndpoint.objects.get()
        assert shown == live_secrets(endpoint)[0]

        page.click("button:has-text('Send test event')")
        expect(page.locator(".messages")).to_contain_text("Test event")
        with tenant_scope(tenant):
            event = WebhookEvent.objects.get(type="webhook.test")
        assert webhook_attempt(event_id=event.pk) == "delivered"  # what the worker runs
        page.reload()
        attempt = page.locator("table.list tbody tr").filter(has_text="webhook.test")
        expect(attempt).to_contain_text("Delivered")
        expect(attempt).to_contain_text("204")
        [got] = receiver.received
        assert Webhook(shown).verify(got.body, got.headers)["type"] == "webhook.test"

        page.click("button:has-text('Delete endpoint')")
        dialog = page.locator("dialog[open]")
        expect(dialog).to_contain_text("Delete the endpoint")
        dialog.locator("button:has-text('Delete endpoint')").click()
        expect(page.locator("main")).to_contain_text("No webhook endpoints yet")
        assert page.evaluate("window.__cspViolations") == []
        browser.close()
    with tenant_scope(tenant):
        assert not WebhookEndpoint.objects.exists()
