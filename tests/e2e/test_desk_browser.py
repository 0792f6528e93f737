"""The desk as an agent uses it, in a real browser (Debian's Chromium through Playwright),
against the live server, the Gmail sandbox (Pub/Sub push to our webhook) and a real
Celery worker.

The agent's Unassigned view shows a new customer ticket arriving without a reload. On
the first ticket they tick "Assign this ticket to me" and press "Send and set Pending":
the ticket is Pending and theirs. A double-clicked Send makes one reply and one sent
email, whose subject carries the [#n] token; the customer's answer that lost its
threading headers but kept the token lands in the same ticket. The second ticket is
merged into the first through the confirmation dialog, and then shows no composer, only
the link to the survivor. An admin turns the subject token off in the Ticket settings
of the Email channels page. Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

from pathlib import Path

import requests

from channels_email.models import InboundEmail
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_flow import connect_mailbox
from tests.channels_email.test_gmail_worker import wait_for, worker  # noqa: F401 - fixture
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.factories import PASSWORD
from tickets.models import DeliveryStatus, Message, MessageKind, Ticket, TicketStatus

pytestmark = BROWSER_MARKS
MAILBOX = "support@acme.test"
CUSTOMER = "Maria Lopez <maria@customer.example>"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FIRST, SECOND = "Printer on fire", "Scanner jams on page two"


def test_agent_works_the_desk_in_the_browser(
        gmail, live_server, client, tenant, admin_user, agent, worker,  # noqa: F811
        monkeypatch, settings):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    settings.TICKET_LIST_POLL_SECONDS = 1  # the live server runs in this process
    sandbox, _ = gmail
    proc, log = worker
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    client.force_login(admin_user)
    assert connect_mailbox(client, tenant, MAILBOX).status_code == 302

    def deliver(subject: str, body: str) -> None:
        requests.post(sandbox + "/_sandbox/deliver", json={
            "to": MAILBOX, "from": CUSTOMER, "subject": subject, "body": body,
        }, timeout=5).raise_for_status()

    def ticket_titled(title: str):
        with tenant_scope(tenant):
            return Ticket.objects.filter(title=title).first()

    deliver(FIRST, "It is smoking.")
    wait_for(lambda: ticket_titled(FIRST), proc, log)
    first = ticket_titled(FIRST)
    base = f"{live_server.url}/{tenant.slug}/tickets/"

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        page.set_default_timeout(20_000)
        navigations: list[str] = []
        page.on("framenavigated",
                lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
        sign_in(page, live_server.url, agent.email, PASSWORD)

        # The list: My open tickets by default (none yet), then the Unassigned view.
        page.goto(base)
        views = page.get_by_role("navigation", name="Ticket views")
        expect(views.locator("[aria-current=page]")).to_have_text("My open tickets")
        expect(page.locator("#ticket-table")).to_contain_text("No tickets match.")
        views.get_by_role("link", name="Unassigned").click()
        rows = page.locator("#ticket-table tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text(FIRST)

        # A new ticket shows up in the open list by itself: no reload, no navigation.
        page.evaluate("window.__sameDocument = true")
        navigations_before = len(navigations)
        deliver(SECOND, "It jams every time.")
        expect(rows).to_have_count(2, timeout=60_000)
        expect(rows.first).to_contain_text(SECOND)
        assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        assert navigations[navigations_before:] == []
        page.screenshot(path=str(ARTIFACTS / "desk_1_list_new_ticket.png"), full_page=True)
        second = ticket_titled(SECOND)

        # Assign to me + Send and set Pending.
        page.goto(f"{base}{first.number}/")
        composer = page.get_by_role("form", name="Reply")
        composer.get_by_label("Message").fill("We are sending a technician.")
        composer.get_by_label("Assign this ticket to me").check()
        with page.expect_navigation():
            composer.get_by_role("button", name="Send and set Pending").click()
        expect(page.locator("ul.messages")).to_contain_text(
            "The ticket is Pending now. It is assigned to you.")
        expect(page.locator("h1 .badge")).to_have_text("Pending")
        expect(page.locator("#ctl-assignee option:checked")).to_have_text(agent.display_name)
        with tenant_scope(tenant):
            first.refresh_from_db()
        assert (first.status, first.assignee) == (TicketStatus.PENDING, agent)
        page.screenshot(path=str(ARTIFACTS / "desk_2_pending_assigned.png"), full_page=True)

        # A double-clicked Send: one reply, one email.
        composer = page.get_by_role("form", name="Reply")
        composer.get_by_label("Message").fill("The technician comes at ten.")
        with page.expect_navigation():
            composer.get_by_role("button", name="Send", exact=True).dblclick()
        expect(page.locator("article.msg.outbound")).to_have_count(2)

        def both_delivered():
            with tenant_scope(tenant):
                return list(Message.objects.filter(ticket=first, kind=MessageKind.OUTBOUND)
                            .values_list("delivery_status", flat=True)) == [
                    DeliveryStatus.DELIVERED] * 2

        wait_for(both_delivered, proc, log)
        sent = requests.get(sandbox + "/_sandbox/sent", timeout=5).json()["messages"]
        assert len(sent) == 2, [m["subject"] for m in sent]
        assert {m["subject"] for m in sent} == {f"Re: [#{first.number}] {FIRST}"}
        with tenant_scope(tenant):
            assert Message.objects.filter(body_text="The technician comes at ten.").count() == 1
            first.refresh_from_db()
        assert first.status == TicketStatus.PENDING  # plain Send keeps it waiting

        # The customer answers from a client that dropped In-Reply-To and References but
        # kept the subject: the [#n] token brings it to the same ticket.
        deliver(f"Re: [#{first.number}] {FIRST}", "Ten is fine, thanks.")

        def answered():
            with tenant_scope(tenant):
                return first.messages.filter(kind=MessageKind.INBOUND).count() == 2

        wait_for(answered, proc, log)
        with tenant_scope(tenant):
            assert Ticket.objects.count() == 2
            answer = InboundEmail.objects.get(subject=f"Re: [#{first.number}] {FIRST}")
        assert answer.ticket_id == first.pk
        page.reload()
        expect(page.locator("article.msg.inbound").last).to_contain_text("Ten is fine")
        page.screenshot(path=str(ARTIFACTS / "desk_3_token_reply.png"), full_page=True)

        # Merge the second ticket into the first: the dialog says what happens first.
        page.goto(f"{base}{second.number}/")
        merge = page.get_by_role("form", name="Merge")
        merge.get_by_label("Merge into ticket #").fill(str(first.number))
        merge.get_by_role("button", name="Merge").click()
        dialog = page.locator("dialog#merge-confirm")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text(f"Merge #{second.number} into #{first.number}?")
        expect(dialog).to_contain_text("This cannot be undone.")
        page.screenshot(path=str(ARTIFACTS / "desk_4_merge_dialog.png"), full_page=True)
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        with tenant_scope(tenant):
            second.refresh_from_db()
        assert second.merged_into_id is None  # Cancel merged nothing
        merge.get_by_role("button", name="Merge").click()
        with page.expect_navigation():
            dialog.get_by_role("button", name=f"Merge into #{first.number}").click()
        assert page.url == f"{base}{first.number}/"
        expect(page.locator("ul.messages")).to_contain_text(
            f"#{second.number} was merged into this ticket.")

        page.goto(f"{base}{second.number}/")
        expect(page.get_by_role("form", name="Reply")).to_have_count(0)
        expect(page.locator("textarea[name=body]")).to_have_count(0)
        survivor = page.locator(".composer.merged a")
        expect(survivor).to_have_attribute("href", f"/{tenant.slug}/tickets/{first.number}/")
        page.screenshot(path=str(ARTIFACTS / "desk_5_merged_no_composer.png"), full_page=True)

        # An admin turns the subject token off on the Email channels page.
        admin = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        admin.goto(live_server.url + "/accounts/login/")
        admin.fill("#id_username", admin_user.email)
        admin.fill("#id_password", PASSWORD)
        admin.click("button[type=submit]")
        admin.goto(f"{live_server.url}/{tenant.slug}/settings/email/")
        section = admin.get_by_role("region", name="Ticket settings")
        token = section.get_by_label("Put the ticket number in email subjects")
        expect(token).to_be_checked()
        token.uncheck()
        admin.screenshot(path=str(ARTIFACTS / "desk_6_ticket_settings.png"), full_page=True)
        with admin.expect_navigation():
            section.get_by_role("button", name="Save ticket settings").click()
        expect(admin.locator("ul.messages")).to_contain_text("Ticket settings saved.")
        expect(admin.get_by_role("region", name="Ticket settings").get_by_label(
            "Put the ticket number in email subjects")).not_to_be_checked()
        browser.close()
    tenant.refresh_from_db()
    assert tenant.subject_ticket_token is False

    with tenant_scope(tenant):
        second.refresh_from_db()
        assert second.merged_into == first and second.status == TicketStatus.CLOSED
    for shot in ("1_list_new_ticket", "2_pending_assigned", "3_token_reply", "4_merge_dialog",
                 "5_merged_no_composer", "6_ticket_settings"):
        assert (ARTIFACTS / f"desk_{shot}.png").stat().st_size > 0
