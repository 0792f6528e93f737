"""The admin pages in a real browser (Debian's Chromium through Playwright): the health
list with its colours (a Token Expired mailbox in red), the mailbox's page (the Team or
Flow picker follows the routing mode; Disconnect asks first: dismissing the dialog changes
nothing, accepting disconnects), the flow's rules in words and the rule editor's pickers.
Screenshots of the health list, the mailbox page and the rule editor go to
tests/artifacts/ (git-ignored)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from channels_email import health
from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.providers import AuthError, RateLimited, TransientError
from helpdesk.tenancy import tenant_scope
from routing.models import Rule, Team
from routing.services import flow_create, rule_create
from tests.e2e.conftest import BROWSER_MARKS, launch_chromium, sign_in
from tests.factories import PASSWORD, EmailConnectionFactory, TeamFactory

pytestmark = BROWSER_MARKS
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
RED, AMBER, GREEN = "rgb(180, 35, 24)", "rgb(168, 97, 0)", "rgb(29, 122, 70)"
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def _mailboxes(tenant):
    """Support (Active, synced, a past error), Sales (Token Expired), Billing (Rate
    Limited); Gmail rows without credentials, so Disconnect has nothing to revoke."""
    now = timezone.now()
    with tenant_scope(tenant):
        support = EmailConnectionFactory(
            tenant=tenant, provider="gmail", address="support@acme.test",
            subscription_expires_at=now + timedelta(days=6))
        health.record_error(support, TransientError("backend error", status=503))
        health.record_success(support, synced=True)
        sales = EmailConnectionFactory(tenant=tenant, provider="gmail",
                                       address="sales@acme.test")
        health.record_success(sales, synced=True)
        health.record_error(sales, AuthError("Token has been expired or revoked.",
                                             reason="invalid_grant"))
        billing = EmailConnectionFactory(tenant=tenant, provider="gmail",
                                         address="billing@acme.test")
        health.record_error(billing, RateLimited("quota exhausted", retry_after=900,
                                                 status=429))
    return support, sales, billing


def test_admin_pages_show_health_in_colour_ask_before_disconnecting_and_read_as_words(
        live_server, tenant, admin_user, agent, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    support, sales, _ = _mailboxes(tenant)
    team = TeamFactory(tenant=tenant, name="Billing")
    with tenant_scope(tenant):
        team.members.add(agent, through_defaults={"tenant": tenant})
    with tenant_scope(tenant):
        flow = flow_create(tenant=tenant, name="Triage", fallback_team=team)
        rule = rule_create(flow=flow, name="Invoices", conditions=[
            {"field": "subject", "op": "contains", "value": "invoice"}],
            actions=[{"type": "assign_team", "value": team.pk},
                     {"type": "add_tag", "value": "billing"},
                     {"type": "stop", "value": True}])
    base = f"{live_server.url}/{tenant.slug}/settings"

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(RECORD_CSP_VIOLATIONS)
        page = context.new_page()
        page.set_default_timeout(20_000)
        native_dialogs: list[str] = []
        page.on("dialog", lambda d: (native_dialogs.append(d.message), d.dismiss()))
        sign_in(page, live_server.url, admin_user.email, PASSWORD)
        expect(page.locator("header.top .who")).to_contain_text(admin_user.display_name)

        # The health list: each status in its colour and words.
        page.goto(f"{base}/email/")
        expect(page.locator("nav a[aria-current=page]")).to_have_text("Email channels")
        rows = page.locator("table.connections tbody tr")
        expired = rows.filter(has_text="sales@acme.test").locator(".badge").first
        expect(expired).to_have_text("Token Expired")
        expect(expired).to_have_css("color", RED)
        limited = rows.filter(has_text="billing@acme.test").locator(".badge").first
        expect(limited).to_have_text("Rate Limited")
        expect(limited).to_have_css("color", AMBER)
        expect(rows.filter(has_text="billing@acme.test")).to_contain_text("until ")
        active = rows.filter(has_text="support@acme.test")
        expect(active.locator(".badge").first).to_have_css("color", GREEN)
        expect(active.locator(".last-error.past")).to_contain_text("backend error")
        page.screenshot(path=str(ARTIFACTS / "admin_1_health_list.png"), full_page=True)

        # The mailbox's page: the same health block, the picker the routing mode needs.
        page.goto(f"{base}/email/{support.pk}/")
        expect(page.locator("h1")).to_have_text("support@acme.test")
        expect(page.locator("dl.health")).to_contain_text("Watch expires")
        team_field = page.locator("[data-show-when='routing_mode=team']")
        flow_field = page.locator("[data-show-when='routing_mode=flow']")
        expect(team_field).to_be_hidden()
        expect(flow_field).to_be_hidden()
        page.select_option("select[name=routing_mode]", "flow")
        expect(flow_field).to_be_visible()
        expect(team_field).to_be_hidden()
        page.select_option("select[name=routing_mode]", "team")
        expect(team_field).to_be_visible()
        expect(flow_field).to_be_hidden()
        page.select_option("select[name=routing_team]", str(team.pk))
        page.screenshot(path=str(ARTIFACTS / "admin_2_mailbox_page.png"), full_page=True)

        # Disconnect asks first; Cancel changes nothing.
        dialog = page.locator("dialog#confirm-dialog")
        page.get_by_role("button", name="Disconnect").click()
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("Disconnect support@acme.test?")
        expect(dialog).to_contain_text("access to the Gmail account is revoked")
        page.screenshot(path=str(ARTIFACTS / "admin_3_disconnect_dialog.png"))
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        page.wait_for_timeout(300)  # a submit, had there been one, would have left by now
        assert page.url == f"{base}/email/{support.pk}/"
        with tenant_scope(tenant):
            assert EmailConnection.objects.get(pk=support.pk).status == ConnectionStatus.ACTIVE
        # Confirming disconnects.
        page.get_by_role("button", name="Disconnect").click()
        dialog.get_by_role("button", name="Disconnect").click()
        expect(page.locator(".messages")).to_contain_text("support@acme.test is disconnected")
        with tenant_scope(tenant):
            assert EmailConnection.objects.get(pk=support.pk).status == \
                ConnectionStatus.DISCONNECTED

        # The flow's rules in words; the rule editor's pickers.
        page.goto(f"{base}/routing/flows/{flow.pk}/")
        expect(page.locator("nav a[aria-current=page]")).to_have_text("Teams & flows")
        expect(page.locator("table.rules")).to_contain_text(
            "Assign to team Billing, add tag billing, then stop")
        expect(page.locator("table.rules")).to_contain_text("Subject contains “invoice”")
        page.screenshot(path=str(ARTIFACTS / "admin_4_flow_rules.png"), full_page=True)
        page.goto(f"{base}/routing/flows/{flow.pk}/rules/{rule.pk}/")
        first = page.get_by_label("Action 1: team")
        expect(first).to_be_visible()
        expect(first.locator("option:checked")).to_have_text("Billing")
        expect(page.get_by_label("Action 1: agent")).to_be_hidden()
        expect(page.get_by_label("Action 2: tag")).to_have_value("billing")
        page.get_by_label("Action 4", exact=True).select_option("assign_agent")
        expect(page.get_by_label("Action 4: agent")).to_be_visible()
        page.get_by_label("Action 4: agent").select_option(str(agent.pk))
        page.screenshot(path=str(ARTIFACTS / "admin_5_rule_editor.png"), full_page=True)
        page.get_by_role("button", name="Save rule").click()
        expect(page.locator(".messages")).to_contain_text("Rule Invoices saved")
        with tenant_scope(tenant):
            rule.refresh_from_db()
        assert rule.actions[-1] == {"type": "assign_agent", "value": agent.pk}

        # Deleting a rule or a team asks first too; cancelled, both stay.
        page.goto(f"{base}/routing/flows/{flow.pk}/")
        page.locator("table.rules").get_by_role("button", name="Delete").click()
        expect(dialog).to_contain_text("Delete the rule Invoices?")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        page.goto(f"{base}/routing/teams/{team.pk}/")
        page.get_by_role("button", name="Delete team").click()
        expect(dialog).to_contain_text("Delete the team Billing? Its tickets stay")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        page.screenshot(path=str(ARTIFACTS / "admin_6_team.png"), full_page=True)
        page.wait_for_timeout(300)
        with tenant_scope(tenant):
            assert Rule.objects.filter(pk=rule.pk).exists()
            assert Team.objects.filter(pk=team.pk).exists()

        assert native_dialogs == []  # the confirmations are ours, not window.confirm
        assert page.evaluate("window.__cspViolations") == []
        browser.close()
