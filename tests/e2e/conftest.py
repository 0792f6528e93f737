"""What the browser tests share: Debian's Chromium through Playwright (no browser
download), and the Gmail sandbox pushing to the live server's webhook."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.sandbox_support import use_sandbox_google

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Applied by each browser test module: CI must run them (make test installs chromium).
BROWSER_MARKS = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                       reason="Debian's chromium is not installed (make test installs it)"),
]
TOPIC = "projects/helpdesk-e2e/topics/gmail"
PUSH_ACCOUNT = "pubsub-push@helpdesk-e2e.iam.gserviceaccount.com"


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def sign_in(page, base_url: str, email: str, password: str) -> None:
    """Sign in on the login page as a person would."""
    page.goto(base_url + "/accounts/login/")
    page.fill("#id_username", email)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


@pytest.fixture
def gmail(settings, sandbox, live_server):
    """Settings and sandbox for a browser run against the live server (the fixture name
    matches test_gmail_worker's worker fixture, which reads the sandbox from it)."""
    webhook = live_server.url + "/webhooks/google/pubsub/"
    use_sandbox_google(settings, sandbox, public_base_url=live_server.url, topic=TOPIC,
                       push_endpoint=webhook, audience=webhook, service_account=PUSH_ACCOUNT)
    return sandbox, None
