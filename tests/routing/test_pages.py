"""Routing admin pages: an admin builds teams and a flow in the browser-facing pages, and
the mail that arrives afterwards is routed by exactly what they built."""

from __future__ import annotations

import pytest

from channels_email.ingest import inbound_email_ingest
from channels_email.services import connection_create_manual, inbound_email_receive
from helpdesk.models import AuditEvent
from helpdesk.tenancy import tenant_scope
from routing.forms import ACTION_PICKERS
from routing.models import Flow, Rule, Team
from tests.channels_email.mail_builder import build_email
from tests.factories import MembershipFactory, UserFactory
from tickets.models import Ticket

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(client, admin_user):
    client.force_login(admin_user)
    return client


def rule_rows(conditions=(), actions=(), **extra) -> dict:
    data = {"name": "Billing mail", "match": "all", "is_active": "on", **extra}
    for i, (name, op, value) in enumerate(conditions):
        data.update({f"cond_{i}_field": name, f"cond_{i}_op": op, f"cond_{i}_value": value})
    for i, (kind, value) in enumerate(actions):
        # The value goes to the picker the action takes it from (a tag is typed).
        picker = ACTION_PICKERS.get(kind, "value")
        data.update({f"act_{i}_type": kind, f"act_{i}_{picker}": value})
    return data


def test_an_admin_builds_teams_and_a_flow_that_routes_new_mail(admin, tenant, agent):
    base = f"/{tenant.slug}/settings/routing/"
    with tenant_scope(tenant):
        membership = agent.memberships.get(tenant=tenant)
    assert admin.post(base, {"kind": "team", "team-name": "Billing",
                             "team-members": [membership.pk]}).status_code == 302
    assert admin.post(base, {"kind": "team", "team-name": "General"}).status_code == 302
    duplicate = admin.post(base, {"kind": "team", "team-name": "billing"})
    assert duplicate.status_code == 400 and "A team named billing exists" in \
        duplicate.content.decode()
    with tenant_scope(tenant):
        billing, general = Team.objects.get(name="Billing"), Team.objects.get(name="General")
        assert list(billing.members.all()) == [agent]

    answer = admin.post(base, {"kind": "flow", "flow-name": "Triage",
                               "flow-fallback_team": general.pk, "flow-is_active": "on"})
    with tenant_scope(tenant):
        flow = Flow.objects.get(name="Triage")
    assert answer.status_code == 302 and answer["Location"].endswith(f"/flows/{flow.pk}/")

    rules = f"{base}flows/{flow.pk}/rules/"
    assert admin.post(rules + "new/", rule_rows(
        conditions=[("subject", "contains", "invoice"), ("has_attachments", "is", "yes")],
        actions=[("assign_team", billing.pk), ("set_priority", "high"),
                 ("assign_agent", agent.pk)])).status_code == 302
    assert admin.post(rules + "new/", rule_rows(
        name="Urgent words", match="any",
        conditions=[("body", "matches", r"\burgent\b")],
        actions=[("add_tag", "urgent")])).status_code == 302
    with tenant_scope(tenant):
        first, second = Rule.objects.filter(flow=flow).order_by("position")
    assert first.conditions == [
        {"field": "subject", "op": "contains", "value": "invoice"},
        {"field": "has_attachments", "op": "is", "value": True}]
    assert first.actions == [{"type": "assign_team", "value": billing.pk},
                             {"type": "set_priority", "value": "high"},
                             {"type": "assign_agent", "value": agent.pk}]
    # The edit page shows the rule as the admin wrote it, the pickers on their choices.
    page = admin.get(f"{rules}{first.pk}/").content.decode()
    assert f'<option value="{billing.pk}" selected>Billing</option>' in page
    assert '<option value="high" selected>High</option>' in page
    assert f'<option value="{agent.pk}" selected>{agent.display_name} ({agent.email})' \
        in page and 'value="yes"' in page
    # The flow page lists the rules in words.
    flow_page = admin.get(f"{base}flows/{flow.pk}/").content.decode()
    assert ("Assign to team Billing, set priority high, assign to agent "
            f"{agent.display_name}") in flow_page
    assert "Subject contains “invoice” and Has attachments is “yes”" in flow_page
    assert "Body matches “\\burgent\\b”" in flow_page and "Add tag urgent" in flow_page

    # Order: the second rule moves up.
    admin.post(f"{rules}{second.pk}/action/", {"do": "up"})
    with tenant_scope(tenant):
        assert list(Rule.objects.filter(flow=flow).order_by("position")
                    .values_list("name", flat=True)) == ["Urgent words", "Billing mail"]
        assert AuditEvent.objects.filter(action__in=[
            "team.created", "flow.created", "rule.created", "rule.moved"]).count() == 6

    # A mailbox routes through the flow: new mail follows the rules the admin built.
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="support@company.example")
    settings_page = f"/{tenant.slug}/settings/email/{conn.pk}/"
    assert admin.post(settings_page, {"display_name": "", "routing_mode": "flow",
                                      "routing_flow": flow.pk,
                                      "acknowledgement_text": "x"}).status_code == 302
    for subject, attachments in (("Invoice 7 is wrong", [("a.pdf", b"%PDF", "application/pdf")]),
                                 ("Printer on fire", [])):
        with tenant_scope(tenant):
            conn.refresh_from_db()
            row, _ = inbound_email_receive(connection=conn, raw=build_email(
                subject=subject, attachments=attachments), provider_message_id=subject)
        inbound_email_ingest(inbound_email_id=row.pk)
    with tenant_scope(tenant):
        invoice = Ticket.objects.get(title="Invoice 7 is wrong")
        printer = Ticket.objects.get(title="Printer on fire")
    assert (invoice.team, invoice.priority, invoice.assignee) == (billing, "high", agent)
    assert printer.team == general  # no rule assigned one: the fallback team

    # In use: neither the flow nor its fallback team can be deleted yet.
    refused = admin.post(f"{base}flows/{flow.pk}/delete/", follow=True).content.decode()
    assert "is still used by mailbox support@company.example" in refused
    refused = admin.post(f"{base}teams/{general.pk}/delete/", follow=True).content.decode()
    assert "is still used by flow Triage" in refused
    refused = admin.post(f"{base}teams/{billing.pk}/delete/", follow=True).content.decode()
    assert "is still used by rule Billing mail of flow Triage" in refused
    with tenant_scope(tenant):
        assert Flow.objects.filter(pk=flow.pk).exists() and Team.objects.count() == 2


def test_a_rule_that_cannot_run_is_refused_naming_the_problem(admin, tenant, agent):
    with tenant_scope(tenant):
        flow = Flow.objects.create(tenant=tenant, name="Triage")
    url = f"/{tenant.slug}/settings/routing/flows/{flow.pk}/rules/new/"
    outsider = UserFactory(email="stranger@elsewhere.example")
    MembershipFactory(user=outsider)  # a member of another workspace
    cases = [
        (rule_rows(conditions=[("subject", "matches", "([")], actions=[("add_tag", "x")]),
         "Condition 1: invalid regular expression"),
        # Errors name the row on the page, empty rows before it included.
        ({**rule_rows(actions=[("add_tag", "x")]), "cond_2_field": "subject",
          "cond_2_op": "matches", "cond_2_value": "(["},
         "Condition 3: invalid regular expression"),
        (rule_rows(conditions=[("contact_is_new", "is", "maybe")], actions=[("stop", "")]),
         "Sender is a new contact: answer yes or no."),
        (rule_rows(actions=[("assign_team", "987654")]),
         "That team no longer exists; choose another."),
        (rule_rows(actions=[("assign_team", "")]), "Assign to team: choose one."),
        (rule_rows(actions=[("assign_agent", outsider.pk)]),
         "Not an active member of this workspace; choose another."),
        (rule_rows(actions=[("add_tag", "x"), ("set_priority", "whenever")]),
         "Choose a priority from the list."),
        (rule_rows(actions=[("add_tag", "")]), "Action 1: "),
        (rule_rows(conditions=[("subject", "contains", "x")]),
         "Give the rule at least one action."),
    ]
    for data, error in cases:
        answer = admin.post(url, data)
        assert answer.status_code == 400, error
        assert error in answer.content.decode(), error
    with tenant_scope(tenant):
        assert not Rule.objects.exists()


def test_only_admins_change_routing(client, tenant, agent):
    client.force_login(agent)
    base = f"/{tenant.slug}/settings/routing/"
    assert client.get(base).status_code == 403
    assert client.post(base, {"kind": "team", "team-name": "Sneaky"}).status_code == 403
    with tenant_scope(tenant):
        assert not Team.objects.exists()


def test_a_team_nothing_routes_to_is_deleted_and_its_tickets_stay(admin, tenant):
    from tests.factories import TeamFactory, TicketFactory

    team = TeamFactory(tenant=tenant, name="Old")
    ticket = TicketFactory(tenant=tenant, team=team)
    answer = admin.post(f"/{tenant.slug}/settings/routing/teams/{team.pk}/delete/", follow=True)
    assert "Team Old deleted" in answer.content.decode()
    with tenant_scope(tenant):
        ticket.refresh_from_db()
        assert ticket.team is None and not Team.objects.exists()
        assert AuditEvent.objects.filter(action="team.deleted").exists()


def test_editing_a_rule_made_elsewhere_keeps_every_condition_and_action(admin, tenant, agent):
    from routing.forms import RuleForm

    with tenant_scope(tenant):
        team = Team.objects.create(tenant=tenant, name="Billing")
        flow = Flow.objects.create(tenant=tenant, name="Triage")
        conditions = [{"field": "subject", "op": "contains", "value": f"word{n}"}
                      for n in range(5)] + [{"field": "contact_is_new", "op": "is",
                                              "value": False}]
        actions = [{"type": "add_tag", "value": f"t{n}"} for n in range(3)] + [
            {"type": "assign_team", "value": team.pk},
            {"type": "assign_agent", "value": agent.pk}]
        rule = Rule.objects.create(tenant=tenant, flow=flow, name="Big", conditions=conditions,
                                   actions=actions)  # as Django's admin or an import would
        form = RuleForm(instance=rule, tenant=tenant)
        assert len(form.condition_rows()) == 7 and len(form.action_rows()) == 6
        # Saving the page as shown changes nothing.
        data = {name: form[name].value() for name in form.fields}
        data = {k: v for k, v in data.items() if v not in (None, False)}
    answer = admin.post(f"/{tenant.slug}/settings/routing/flows/{flow.pk}/rules/{rule.pk}/",
                        {**data, "is_active": "on"})
    assert answer.status_code == 302
    with tenant_scope(tenant):
        rule.refresh_from_db()
    assert rule.conditions == conditions and rule.actions == actions
