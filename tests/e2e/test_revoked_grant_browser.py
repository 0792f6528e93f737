"""A revoked Google grant, seen in a real browser (Debian's Chromium through Playwright):
the user removes our access at Google, the next push's sync turns the mailbox Token
Expired (a real worker, the live server's webhook), the Email channels page shows a red
badge and every page the admin banner; Reconnect brings it back Active and the mail that
arrived meanwhile becomes a ticket."""

from __future__ import annotations

import re
import time
from pathlib import Path

import requests

from channels_email.models import ConnectionStatus, EmailConnection
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_worker import worker  # noqa: F401 - fixture
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.factories import PASSWORD
from tickets.models import Ticket

pytestmark = BROWSER_MARKS
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MAILBOX = "support@acme.test"


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", css)[:3])


def _red(rgb: tuple[int, ...]) -> bool:
    red, green, blue = rgb
    return red > 150 and red > green + 60 and red > blue + 60


def _wait_for(condition, tries=120) -> bool:
    for _ in range(tries):
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def _tickets(tenant, title: str) -> int:
    with tenant_scope(tenant):
        return Ticket.objects.filter(title=title).count()


def _status(tenant) -> str:
    with tenant_scope(tenant):
        return EmailConnection.objects.get(address=MAILBOX).status


def _consent(page, *, pick_account: bool = True) -> None:
    """The sandbox's Google pages: the account picker (skipped on Reconnect, whose
    login_hint names the mailbox), then consent."""
    if pick_account:
        page.fill("input[name=email]", MAILBOX)
        page.get_by_role("button", name="Next").click()
    page.click("button[value=allow]")


def test_a_revoked_grant_turns_red_with_a_banner_and_reconnect_brings_the_mail(
        gmail, live_server, tenant, admin_user, worker, monkeypatch):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    sandbox, _ = gmail
    ARTIFACTS.mkdir(exist_ok=True)
    channels = f"{live_server.url}/{tenant.slug}/settings/email/"
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        sign_in(page, live_server.url, admin_user.email, PASSWORD)
        page.goto(channels)
        page.get_by_role("button", name="Gmail: Authorize with Google").click()
        _consent(page)
        expect(page.locator("h1")).to_have_text(MAILBOX)

        # The user revokes our access at Google; a customer writes meanwhile.
        requests.post(sandbox + "/_sandbox/revoke-all", json={"email": MAILBOX},
                      timeout=5).raise_for_status()
        requests.post(sandbox + "/_sandbox/deliver", json={
            "to": MAILBOX, "from": "Dana Customer <dana@example.net>",
            "subject": "Written while revoked", "body": "Hello?"}, timeout=5
        ).raise_for_status()
        assert _wait_for(lambda: _status(tenant) == ConnectionStatus.TOKEN_EXPIRED)

        page.goto(channels)
        badge = page.locator("table.list .badge", has_text="Token Expired").first
        expect(badge).to_be_visible()
        style = badge.evaluate("e => [getComputedStyle(e).color,"
                               " getComputedStyle(e).backgroundColor]")
        assert any(_red(_rgb(css)) for css in style), style  # red text or a red badge
        banner = page.locator("text=lost its sign-in").first
        expect(banner).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "revoked-grant-health.png"), full_page=True)

        page.get_by_role("button", name="Reconnect").first.click()
        _consent(page, pick_account=False)
        expect(page.locator(".badge", has_text="Active").first).to_be_visible()
        expect(page.locator("text=lost its sign-in")).to_have_count(0)
        browser.close()
    assert _wait_for(lambda: _tickets(tenant, "Written while revoked") == 1)
    assert _status(tenant) == ConnectionStatus.ACTIVE
