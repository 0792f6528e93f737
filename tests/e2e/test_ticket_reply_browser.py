"""An agent answers a ticket in a real browser (Debian's Chromium through Playwright).

A customer email whose HTML body carries script (``<img onerror>``, ``<script>``) comes in
through the Gmail sandbox, Pub/Sub push to the live server's webhook and a real Celery
worker. The agent opens the ticket: the HTML shows, none of its script runs, and the page
carries our Content-Security-Policy. The agent replies with an attachment: the outbound
message shows Pending, and its delivery badge turns Delivered by htmx polling, without
the page being reloaded; the sandbox's sent mail carries the attachment. Screenshots of
the ticket view go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import base64
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import requests

from channels_email.models import ConnectionStatus, EmailConnection
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_flow import connect_mailbox
from tests.channels_email.test_gmail_worker import wait_for, worker  # noqa: F401 - fixture
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.factories import PASSWORD
from tickets.models import DeliveryStatus, Message, MessageKind, Ticket

pytestmark = BROWSER_MARKS
MAILBOX = "support@acme.test"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SUBJECT = "Invoice total is wrong"
# What a hostile sender could put in an HTML body. Each would set window.__pwned or the
# title if it ran. The cid: image points at no attachment, so the ticket view gives it an
# empty src, which fires the error event in a browser: the handler would run if it
# survived sanitising (and the CSP did not block it).
HOSTILE_HTML = (
    "<html><head><title>pwned</title></head><body>"
    "<p>Hello, the <b>invoice total</b> is wrong on order 4711.</p>"
    "<img src=x onerror=\"document.title='pwned'; window.__pwned=1\">"
    "<img src=\"cid:nothing@here\" onerror=\"document.title='pwned'; window.__pwned=2\">"
    "<script>document.title='pwned'; window.__pwned=3</script>"
    "<a href=\"javascript:window.__pwned=4\">details</a>"
    "</body></html>"
)
ATTACHMENT = {"name": "steps.txt", "mimeType": "text/plain",
              "buffer": b"1. Open the invoice.\n2. Check the total.\n"}
# Runs before any page script (CDP, not subject to the page's CSP): records CSP violations.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""



def test_agent_replies_with_an_attachment_and_sees_it_delivered_without_reloading(
        gmail, live_server, client, tenant, admin_user, agent, worker,  # noqa: F811
        monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    sandbox, _ = gmail
    proc, log = worker
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # An admin connects the mailbox (the browser flow has its own test); the watch pushes
    # to the live server's webhook from now on.
    client.force_login(admin_user)
    assert connect_mailbox(client, tenant, MAILBOX).status_code == 302
    with tenant_scope(tenant):
        assert EmailConnection.objects.get().status == ConnectionStatus.ACTIVE
    requests.post(sandbox + "/_sandbox/deliver", json={
        "to": MAILBOX, "from": "Maria Lopez <maria@customer.example>", "subject": SUBJECT,
        "body": "Hello, the invoice total is wrong on order 4711.", "html": HOSTILE_HTML,
    }, timeout=5).raise_for_status()

    def ticket_exists():
        with tenant_scope(tenant):
            return Ticket.objects.filter(title=SUBJECT).exists()

    wait_for(ticket_exists, proc, log)
    with tenant_scope(tenant):
        ticket = Ticket.objects.get(title=SUBJECT)
    ticket_url = f"{live_server.url}/{tenant.slug}/tickets/{ticket.number}/"

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(RECORD_CSP_VIOLATIONS)
        page = context.new_page()
        page.set_default_timeout(20_000)
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        navigations: list[str] = []
        page.on("framenavigated",
                lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
        polls: list[str] = []
        page.on("request", lambda request: polls.append(request.url)
                if "/delivery/" in request.url else None)

        sign_in(page, live_server.url, agent.email, PASSWORD)
        expect(page.locator("header.top .who")).to_contain_text(agent.display_name)

        # The ticket view: the customer's HTML shows, sanitised, under our CSP.
        response = page.goto(ticket_url)
        assert response is not None and response.status == 200
        csp = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "object-src 'none'" in csp, csp
        assert "'unsafe-inline'" not in csp, csp
        title = page.title()
        assert title.startswith(f"#{ticket.number} {SUBJECT}"), title
        inbound = page.locator("article.msg.inbound")
        expect(inbound).to_have_count(1)
        body = inbound.locator(".body.html")
        expect(body).to_contain_text("the invoice total is wrong on order 4711")
        expect(body.locator("b")).to_have_text("invoice total")  # rendered, not escaped
        page.wait_for_load_state("load")  # every image has loaded or failed by now
        inner = body.inner_html().lower()
        assert "onerror" not in inner and "<script" not in inner and "javascript:" not in inner
        assert body.locator("[onerror], script").count() == 0
        body.get_by_text("details").click()  # its javascript: href is gone
        page.wait_for_timeout(300)
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.title() == title and "pwned" not in page.title()
        assert dialogs == []
        assert page.evaluate("window.__cspViolations") == []
        page.screenshot(path=str(ARTIFACTS / "ticket_reply_1_inbound.png"), full_page=True)

        # Hold the Gmail send a few seconds so Pending is on screen before it resolves.
        requests.post(sandbox + "/_sandbox/faults", json={
            "kind": "slow", "delay": 3, "mailbox": MAILBOX}, timeout=5).raise_for_status()

        # Reply with an attachment: a normal form POST, redirected back to the ticket.
        composer = page.get_by_role("form", name="Reply")
        expect(composer.locator("input[name=mode][value=reply]")).to_be_checked()
        composer.locator("textarea[name=body]").fill("Thanks Maria, the corrected steps "
                                                     "are attached.")
        composer.locator("input[type=file][name=attachments]").set_input_files([ATTACHMENT])
        with page.expect_navigation():
            composer.get_by_role("button", name="Send", exact=True).click()
        assert page.url == ticket_url
        expect(page.locator("ul.messages")).to_contain_text("Reply queued")
        outbound = page.locator("article.msg.outbound")
        expect(outbound).to_have_count(1)
        expect(outbound.locator(".body")).to_contain_text("the corrected steps are attached")
        expect(outbound.locator(".attachments")).to_contain_text("steps.txt")
        badge = outbound.locator(".delivery .badge")
        expect(badge).to_have_text("Pending")
        page.screenshot(path=str(ARTIFACTS / "ticket_reply_2_pending.png"), full_page=True)
        requests.post(sandbox + "/_sandbox/faults/clear", json={"kind": "slow"},
                      timeout=5).raise_for_status()

        # From here on the page must not navigate: only htmx may change the badge.
        page.evaluate("window.__sameDocument = true")
        navigations_before = len(navigations)
        polls_before = len(polls)
        expect(badge).to_have_text("Delivered", timeout=30_000)
        expect(badge).to_have_attribute("data-delivery", "delivered")
        assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        assert navigations[navigations_before:] == []
        assert len(polls) > polls_before, "the badge changed without an htmx poll"
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert dialogs == [] and page.evaluate("window.__cspViolations") == []
        page.screenshot(path=str(ARTIFACTS / "ticket_reply_3_delivered.png"), full_page=True)
        browser.close()

    with tenant_scope(tenant):
        reply = Message.objects.get(ticket=ticket, kind=MessageKind.OUTBOUND)
        assert reply.delivery_status == DeliveryStatus.DELIVERED and reply.provider_message_id
        assert [a.filename for a in reply.attachments.all()] == ["steps.txt"]
    [sent] = requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]
    assert sent["subject"] == f"Re: [#{ticket.number}] {SUBJECT}"
    mime = message_from_bytes(base64.b64decode(sent["raw"]), policy=default)
    assert mime["To"] == "maria@customer.example"
    assert mime["Message-ID"] == f"<{reply.message_id_header}>"
    [attachment] = list(mime.iter_attachments())
    assert attachment.get_filename() == "steps.txt"
    assert attachment.get_content_type() == "text/plain"
    assert attachment.get_content().encode() == ATTACHMENT["buffer"]
    for shot in ("1_inbound", "2_pending", "3_delivered"):
        assert (ARTIFACTS / f"ticket_reply_{shot}.png").stat().st_size > 0

