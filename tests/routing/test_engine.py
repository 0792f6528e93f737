"""The routing engine: conditions, rule order, actions, tenancy, the recorded decision."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from helpdesk.tenancy import tenant_scope
from routing.engine import (
    MAX_TEXT,
    RoutingFacts,
    evaluate_condition,
    evaluate_flow,
    route_new_ticket,
)
from routing.models import Rule
from routing.services import flow_create, rule_create, rule_validate
from tests.factories import (
    FlowFactory,
    MembershipFactory,
    RuleFactory,
    TeamFactory,
    TicketFactory,
    UserFactory,
)
from tickets.models import Ticket, TicketPriority, TicketStatus


def make_facts(**overrides) -> RoutingFacts:
    values = {
        "subject": "Refund for order 42",
        "body": "Hello, I would like my money back. Thanks, Alice",
        "sender": "alice@Customer.example",
        "recipients": ("support@company.example", "billing@company.example"),
        "has_attachments": False,
        "importance": "normal",
        "is_new_contact": False,
    }
    values.update(overrides)
    return RoutingFacts(**values)


def cond(field, op, value):
    return {"field": field, "op": op, "value": value}


# ------------------------------------------------------------------------ facts & conditions


def test_facts_are_frozen_and_derive_the_sender_domain():
    facts = make_facts()
    assert facts.sender_domain == "customer.example"
    with pytest.raises(AttributeError):
        facts.subject = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # subject: every text op, case-insensitive
        (cond("subject", "contains", "REFUND"), True),
        (cond("subject", "contains", "invoice"), False),
        (cond("subject", "not_contains", "invoice"), True),
        (cond("subject", "not_contains", "refund"), False),
        (cond("subject", "equals", "refund for ORDER 42"), True),
        (cond("subject", "equals", "refund"), False),
        (cond("subject", "starts_with", "refund"), True),
        (cond("subject", "starts_with", "order"), False),
        (cond("subject", "ends_with", "ORDER 42"), True),
        (cond("subject", "ends_with", "refund"), False),
        (cond("subject", "matches", r"order\s+\d+"), True),
        (cond("subject", "matches", r"^order"), False),
        (cond("subject", "matches", r"REFUND"), True),
        # body
        (cond("body", "contains", "money back"), True),
        (cond("body", "ends_with", "alice"), True),
        (cond("body", "matches", r"thanks,\s+\w+$"), True),
        # sender address and domain
        (cond("sender", "equals", "ALICE@customer.example"), True),
        (cond("sender", "starts_with", "bob@"), False),
        (cond("sender_domain", "equals", "customer.example"), True),
        (cond("sender_domain", "ends_with", ".example"), True),
        (cond("sender_domain", "not_contains", "customer"), False),
        # recipient: any recipient satisfies a positive op; a negated op means none does
        (cond("recipient", "equals", "billing@company.example"), True),
        (cond("recipient", "equals", "sales@company.example"), False),
        (cond("recipient", "starts_with", "support@"), True),
        (cond("recipient", "not_contains", "sales"), True),
        (cond("recipient", "not_contains", "billing"), False),
        (cond("recipient", "matches", r"^(sales|billing)@"), True),
        # booleans and importance
        (cond("has_attachments", "is", False), True),
        (cond("has_attachments", "is", True), False),
        (cond("has_attachments", "is_not", True), True),
        (cond("contact_is_new", "is", False), True),
        (cond("contact_is_new", "equals", True), False),
        (cond("importance", "is", "normal"), True),
        (cond("importance", "is", "high"), False),
        (cond("importance", "is_not", "high"), True),
    ],
)
def test_conditions(condition, expected):
    result, why = evaluate_condition(condition, make_facts())
    assert result is expected
    assert why.startswith(condition["field"])
    assert why.endswith("yes" if expected else "no")


def test_condition_why_is_human_readable():
    assert evaluate_condition(cond("subject", "contains", "refund"), make_facts()) == (
        True, "subject contains 'refund': yes")
    assert evaluate_condition(cond("has_attachments", "is", True), make_facts()) == (
        False, "has_attachments is true: no")
    # A pattern reads as the admin typed it (not with repr's doubled backslashes).
    assert evaluate_condition(cond("subject", "matches", r"\bzebra\b"), make_facts())[1] == \
        "subject matches '\\bzebra\\b': no"


def test_bool_and_importance_facts():
    facts = make_facts(has_attachments=True, importance="high", is_new_contact=True)
    assert evaluate_condition(cond("has_attachments", "is", True), facts)[0]
    assert evaluate_condition(cond("contact_is_new", "is", True), facts)[0]
    assert evaluate_condition(cond("importance", "equals", "high"), facts)[0]


def test_bad_regex_matches_nothing():
    result, why = evaluate_condition(cond("subject", "matches", "(unclosed"), make_facts())
    assert result is False
    assert "invalid regular expression" in why


def test_malformed_condition_matches_nothing():
    result, why = evaluate_condition(cond("colour", "equals", "red"), make_facts())
    assert result is False and "invalid condition" in why


def test_regex_only_sees_the_first_chars_of_a_long_text():
    body = "a" * MAX_TEXT + "needle"
    assert not evaluate_condition(cond("body", "matches", "needle"), make_facts(body=body))[0]
    assert evaluate_condition(cond("body", "contains", "aaa"), make_facts(body=body))[0]


# ------------------------------------------------------------------------ validation


def test_rule_validate_accepts_the_whole_vocabulary():
    rule_validate(
        [cond("subject", "matches", r"^re(fund)?"), cond("recipient", "ends_with", "@x.example"),
         cond("has_attachments", "is", True), cond("importance", "is_not", "low"),
         cond("contact_is_new", "equals", False)],
        [{"type": "set_priority", "value": "urgent"}, {"type": "add_tag", "value": "vip"},
         {"type": "assign_team", "value": 3}, {"type": "assign_agent", "value": 4},
         {"type": "set_status", "value": "open"}, {"type": "stop", "value": None}],
    )


@pytest.mark.parametrize(
    ("conditions", "actions", "key", "fragment"),
    [
        ([cond("colour", "equals", "red")], [], "conditions",
         "conditions[0]: unknown field 'colour'"),
        ([cond("subject", "like", "x")], [], "conditions", "conditions[0]: unknown op 'like'"),
        ([cond("subject", "contains", "x"), cond("subject", "matches", "(")], [], "conditions",
         "conditions[1]: invalid regular expression"),
        ([cond("subject", "contains", 5)], [], "conditions", "must be a non-empty string"),
        ([cond("has_attachments", "is", "yes")], [], "conditions", "must be true or false"),
        ([cond("importance", "is", "urgent")], [], "conditions", "must be one of: high"),
        ([cond("has_attachments", "contains", "x")], [], "conditions", "unknown op 'contains'"),
        (["subject"], [], "conditions", "conditions[0]: must be an object"),
        ([], [{"type": "explode", "value": 1}], "actions", "actions[0]: unknown action type"),
        ([], [{"type": "set_priority", "value": "critical"}], "actions", "priority must be"),
        ([], [{"type": "set_status", "value": "done"}], "actions", "status must be"),
        ([], [{"type": "assign_team", "value": "3"}], "actions", "positive integer id"),
        ([], [{"type": "assign_agent", "value": True}], "actions", "positive integer id"),
        ([], [{"type": "add_tag", "value": ""}], "actions", "tag must be"),
        ("nope", [], "conditions", "must be a list"),
    ],
)
def test_rule_validate_names_the_bad_item(conditions, actions, key, fragment):
    with pytest.raises(ValidationError) as info:
        rule_validate(conditions, actions)
    messages = info.value.message_dict
    assert key in messages
    assert any(fragment in m for m in messages[key]), messages


@pytest.mark.django_db
def test_rule_create_validates_and_appends(tenant):
    team = TeamFactory(tenant=tenant)
    flow = flow_create(tenant=tenant, name="Triage", fallback_team=team)
    with tenant_scope(tenant):
        first = rule_create(flow=flow, name="Refunds", conditions=[cond("subject", "contains",
                                                                         "refund")],
                            actions=[{"type": "add_tag", "value": "billing"}])
        second = rule_create(flow=flow, name="All", conditions=[], actions=[], match="any")
        assert (first.position, second.position) == (0, 1)
        assert first.tenant_id == tenant.pk
        with pytest.raises(ValidationError) as info:
            rule_create(flow=flow, name="Bad", conditions=[cond("subject", "matches", "[")],
                        actions=[])
        assert "conditions" in info.value.message_dict
        assert Rule.objects.filter(flow=flow).count() == 2


@pytest.mark.django_db
def test_flow_create_refuses_a_foreign_fallback_team(tenant, other_tenant):
    with pytest.raises(ValidationError):
        flow_create(tenant=tenant, name="X", fallback_team=TeamFactory(tenant=other_tenant))


@pytest.mark.django_db
def test_admin_form_runs_rule_validate(tenant):
    from routing.admin import RuleAdminForm

    form = RuleAdminForm(data={
        "position": 0, "name": "R", "match": "all",
        "conditions": json.dumps([cond("colour", "equals", "red")]),
        "actions": json.dumps([{"type": "add_tag", "value": "x"}]), "is_active": True,
    })
    with tenant_scope(tenant):
        assert not form.is_valid()
    assert any("unknown field 'colour'" in m for m in form.errors["conditions"])


# ------------------------------------------------------------------------ flows


def route(ticket, flow, facts=None):
    decision = route_new_ticket(ticket=ticket, mode="flow", flow=flow, facts=facts or make_facts())
    ticket.refresh_from_db()
    return decision


@pytest.mark.django_db
def test_all_vs_any(tenant, scoped):
    flow = FlowFactory(tenant=tenant)
    both = [cond("subject", "contains", "refund"), cond("subject", "contains", "invoice")]
    RuleFactory(flow=flow, position=1, name="all", match="all", conditions=both,
                actions=[{"type": "add_tag", "value": "all"}])
    RuleFactory(flow=flow, position=2, name="any", match="any", conditions=both,
                actions=[{"type": "add_tag", "value": "any"}])
    RuleFactory(flow=flow, position=3, name="empty", conditions=[],
                actions=[{"type": "add_tag", "value": "empty"}])
    ticket = TicketFactory(tenant=tenant)
    decision = route(ticket, flow)
    assert [r["matched"] for r in decision.explanation["rules"]] == [False, True, True]
    assert ticket.tags == ["any", "empty"]


@pytest.mark.django_db
def test_rules_run_in_position_order_and_later_values_win(tenant, scoped):
    flow = FlowFactory(tenant=tenant)
    RuleFactory(flow=flow, position=5, name="second", conditions=[],
                actions=[{"type": "set_priority", "value": "urgent"}])
    RuleFactory(flow=flow, position=1, name="first", conditions=[],
                actions=[{"type": "set_priority", "value": "low"},
                         {"type": "set_status", "value": "open"}])
    RuleFactory(flow=flow, position=0, name="inactive", is_active=False, conditions=[],
                actions=[{"type": "set_priority", "value": "high"}])
    ticket = TicketFactory(tenant=tenant)
    decision = route(ticket, flow)
    assert [r["name"] for r in decision.explanation["rules"]] == ["first", "second"]
    assert ticket.priority == TicketPriority.URGENT
    assert ticket.status == TicketStatus.OPEN


@pytest.mark.django_db
def test_stop_action_and_stop_processing(tenant, scoped):
    flow = FlowFactory(tenant=tenant)
    stopper = RuleFactory(flow=flow, position=1, conditions=[],
                          actions=[{"type": "stop", "value": None},
                                   {"type": "add_tag", "value": "same-rule"}])
    RuleFactory(flow=flow, position=2, conditions=[],
                actions=[{"type": "add_tag", "value": "never"}])
    ticket = TicketFactory(tenant=tenant)
    decision = route(ticket, flow)
    assert decision.explanation["stopped_at"] == stopper.pk
    assert len(decision.explanation["rules"]) == 1
    assert ticket.tags == ["same-rule"]

    flow2 = FlowFactory(tenant=tenant)
    RuleFactory(flow=flow2, position=1, conditions=[cond("subject", "contains", "nomatch")],
                stop_processing=True, actions=[{"type": "add_tag", "value": "no"}])
    halt = RuleFactory(flow=flow2, position=2, conditions=[], stop_processing=True,
                       actions=[{"type": "add_tag", "value": "yes"}])
    RuleFactory(flow=flow2, position=3, conditions=[],
                actions=[{"type": "add_tag", "value": "never"}])
    ticket2 = TicketFactory(tenant=tenant)
    decision = route(ticket2, flow2)
    # An unmatched rule with stop_processing does not stop.
    assert decision.explanation["stopped_at"] == halt.pk
    assert ticket2.tags == ["yes"]


@pytest.mark.django_db
def test_fallback_team_when_no_rule_assigns_one(tenant, scoped):
    fallback = TeamFactory(tenant=tenant, name="Frontline")
    billing = TeamFactory(tenant=tenant, name="Billing")
    flow = FlowFactory(tenant=tenant, fallback_team=fallback)
    RuleFactory(flow=flow, conditions=[cond("subject", "contains", "refund")],
                actions=[{"type": "assign_team", "value": billing.pk}])

    refund = TicketFactory(tenant=tenant)
    decision = route(refund, flow)
    assert refund.team == billing
    assert decision.explanation["fallback_team"] is None
    assert decision.explanation["team"] == {"id": billing.pk, "name": "Billing"}

    other = TicketFactory(tenant=tenant)
    decision = route(other, flow, make_facts(subject="Login broken"))
    assert other.team == fallback
    assert decision.explanation["fallback_team"] == {"id": fallback.pk, "name": "Frontline"}


@pytest.mark.django_db
def test_inactive_flow_uses_the_fallback_team_only(tenant, scoped):
    fallback = TeamFactory(tenant=tenant)
    flow = FlowFactory(tenant=tenant, fallback_team=fallback, is_active=False)
    RuleFactory(flow=flow, conditions=[], actions=[{"type": "set_priority", "value": "urgent"}])
    ticket = TicketFactory(tenant=tenant)
    decision = route(ticket, flow)
    assert ticket.team == fallback and ticket.priority == TicketPriority.NORMAL
    assert decision.explanation["rules"] == []
    assert "inactive" in decision.explanation["reason"]


@pytest.mark.django_db
def test_assign_agent_requires_an_active_member(tenant, other_tenant, agent, scoped):
    outsider = MembershipFactory(tenant=other_tenant).user
    retired = UserFactory(is_active=False)
    MembershipFactory(tenant=tenant, user=retired)
    flow = FlowFactory(tenant=tenant)
    RuleFactory(flow=flow, position=1, conditions=[],
                actions=[{"type": "assign_agent", "value": agent.pk}])
    RuleFactory(flow=flow, position=2, conditions=[],
                actions=[{"type": "assign_agent", "value": outsider.pk},
                         {"type": "assign_agent", "value": retired.pk}])
    ticket = TicketFactory(tenant=tenant)
    decision = route(ticket, flow)
    assert ticket.assignee == agent
    skipped = decision.explanation["rules"][1]["actions"]
    assert [a["applied"] for a in skipped] == [False, False]
    assert all("not an active member" in a["note"] for a in skipped)
    assert decision.explanation["assignee"]["id"] == agent.pk


@pytest.mark.django_db
def test_assign_team_of_another_tenant_is_skipped(tenant, other_tenant, scoped):
    foreign = TeamFactory(tenant=other_tenant)
    fallback = TeamFactory(tenant=tenant)
    flow = FlowFactory(tenant=tenant, fallback_team=fallback)
    RuleFactory(flow=flow, conditions=[], actions=[{"type": "assign_team", "value": foreign.pk}])
    ticket = TicketFactory(tenant=tenant)
    decision = route(ticket, flow)
    action = decision.explanation["rules"][0]["actions"][0]
    assert action["applied"] is False and "not found in this tenant" in action["note"]
    assert ticket.team == fallback


@pytest.mark.django_db
def test_bad_regex_rule_matches_nothing(tenant, scoped):
    flow = FlowFactory(tenant=tenant)
    # Stored without validation (as a raw JSON edit could): the engine must survive it.
    RuleFactory(flow=flow, conditions=[cond("subject", "matches", "(refund")],
                actions=[{"type": "add_tag", "value": "x"}])
    ticket = TicketFactory(tenant=tenant)
    decision = route(ticket, flow)
    assert decision.explanation["rules"][0]["matched"] is False
    assert ticket.tags == []
    with pytest.raises(ValidationError):
        rule_validate([cond("subject", "matches", "(refund")], [])


@pytest.mark.django_db
def test_the_recorded_decision(tenant, agent, scoped):
    team = TeamFactory(tenant=tenant, name="Billing")
    flow = FlowFactory(tenant=tenant, name="Triage")
    rule = RuleFactory(
        flow=flow, name="Refunds", match="all",
        conditions=[cond("subject", "contains", "refund"), cond("importance", "is", "normal")],
        actions=[{"type": "add_tag", "value": "billing"},
                 {"type": "assign_team", "value": team.pk},
                 {"type": "assign_agent", "value": agent.pk},
                 {"type": "set_priority", "value": "high"}],
    )
    missed = RuleFactory(flow=flow, name="VIP", conditions=[cond("sender_domain", "equals",
                                                                 "vip.example")])
    ticket = TicketFactory(tenant=tenant, tags=["existing", "billing"])
    route(ticket, flow)
    assert ticket.tags == ["existing", "billing"]  # appended only if absent
    assert (ticket.team, ticket.assignee, ticket.priority) == (team, agent, "high")
    routing = ticket.routing
    assert json.loads(json.dumps(routing)) == routing
    assert routing["mode"] == "flow"
    assert routing["flow"] == {"id": flow.pk, "name": "Triage"}
    assert routing["team"] == {"id": team.pk, "name": "Billing"}
    assert routing["fallback_team"] is None and routing["stopped_at"] is None
    first, second = routing["rules"]
    assert first["id"] == rule.pk and first["name"] == "Refunds" and first["matched"]
    assert first["why"] == ["subject contains 'refund': yes", "importance is 'normal': yes"]
    assert [(a["type"], a["applied"]) for a in first["actions"]] == [
        ("add_tag", True), ("assign_team", True), ("assign_agent", True),
        ("set_priority", True)]
    assert all(a["note"] for a in first["actions"])
    assert second == {"id": missed.pk, "name": "VIP", "matched": False,
                      "why": ["sender_domain equals 'vip.example': no"], "actions": []}


@pytest.mark.django_db
def test_evaluate_flow_is_pure_given_rules(tenant, scoped, django_assert_num_queries):
    flow = FlowFactory(tenant=tenant)
    rules = [RuleFactory(flow=flow, conditions=[], actions=[{"type": "add_tag", "value": "a"}])]
    with django_assert_num_queries(0):
        decision = evaluate_flow(flow, make_facts(), rules=rules)
    assert decision.tags == ["a"]


@pytest.mark.django_db
def test_query_count_for_a_flow_with_three_rules(tenant, agent, scoped,
                                                  django_assert_max_num_queries):
    team = TeamFactory(tenant=tenant)
    fallback = TeamFactory(tenant=tenant)
    flow = FlowFactory(tenant=tenant, fallback_team=fallback)
    RuleFactory(flow=flow, position=1, conditions=[cond("subject", "contains", "refund")],
                actions=[{"type": "assign_team", "value": team.pk}])
    RuleFactory(flow=flow, position=2, match="any",
                conditions=[cond("body", "matches", "money"), cond("recipient", "equals", "x")],
                actions=[{"type": "assign_agent", "value": agent.pk},
                         {"type": "add_tag", "value": "money"}])
    RuleFactory(flow=flow, position=3, conditions=[],
                actions=[{"type": "set_priority", "value": "high"}])
    ticket = TicketFactory(tenant=tenant)
    flow = type(flow).objects.get(pk=flow.pk)  # as ingest has it: fallback team not loaded
    # rules + teams (targets and fallback together) + memberships + the UPDATE
    with django_assert_max_num_queries(4):
        route_new_ticket(ticket=ticket, mode="flow", flow=flow, facts=make_facts())
    ticket.refresh_from_db()
    assert (ticket.team, ticket.assignee, ticket.tags, ticket.priority) == (
        team, agent, ["money"], "high")


@pytest.mark.django_db
def test_flow_without_assignments_costs_two_queries(tenant, scoped, django_assert_num_queries):
    flow = FlowFactory(tenant=tenant)
    RuleFactory(flow=flow, conditions=[], actions=[{"type": "add_tag", "value": "x"}])
    ticket = TicketFactory(tenant=tenant)
    with django_assert_num_queries(2):
        route_new_ticket(ticket=ticket, mode="flow", flow=flow, facts=make_facts())


# ------------------------------------------------------------------------ team mode


@pytest.mark.django_db
def test_team_mode_is_one_update(tenant, scoped, django_assert_num_queries):
    team = TeamFactory(tenant=tenant, name="Support")
    ticket = TicketFactory(tenant=tenant, team=team)
    with django_assert_num_queries(1):
        route_new_ticket(ticket=ticket, mode="team", team=team, flow=None, facts=make_facts())
    fresh = Ticket.objects.get(pk=ticket.pk)
    assert fresh.team == team
    assert fresh.routing == {"mode": "team", "team": {"id": team.pk, "name": "Support"},
                             "reason": None}


@pytest.mark.django_db
def test_team_mode_sets_the_team(tenant, other_tenant, scoped):
    team = TeamFactory(tenant=tenant)
    ticket = TicketFactory(tenant=tenant)
    route_new_ticket(ticket=ticket, mode="team", team=team, facts=make_facts())
    ticket.refresh_from_db()
    assert ticket.team == team

    foreign = TeamFactory(tenant=other_tenant)
    ticket2 = TicketFactory(tenant=tenant)
    route_new_ticket(ticket=ticket2, mode="team", team=foreign, facts=make_facts())
    ticket2.refresh_from_db()
    assert ticket2.team is None and ticket2.routing["reason"] == "team is not in this tenant"


@pytest.mark.django_db
def test_unknown_mode_raises(tenant, scoped):
    with pytest.raises(ValueError):
        route_new_ticket(ticket=TicketFactory(tenant=tenant), mode="none", facts=make_facts())


# ------------------------------------------------------------------------ ticket view


@pytest.mark.django_db
def test_ticket_view_shows_the_routing_panel(agent_client, tenant):
    team = TeamFactory(tenant=tenant, name="Billing")
    flow = FlowFactory(tenant=tenant, name="Triage")
    RuleFactory(flow=flow, name="<b>Refunds</b>",
                conditions=[cond("subject", "contains", "refund")],
                actions=[{"type": "assign_team", "value": team.pk}])
    RuleFactory(flow=flow, name="Never", conditions=[cond("subject", "contains", "zzz")])
    ticket = TicketFactory(tenant=tenant)
    with tenant_scope(tenant):
        route_new_ticket(ticket=ticket, mode="flow", flow=flow, facts=make_facts())
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert 'aria-label="Routing"' in page
    for text in ("Triage", "Billing", "matched", "not matched", "Never",
                 "subject contains &#x27;refund&#x27;: yes", "✓ Assigned to team Billing"):
        assert text in page, text
    assert "assign_team" not in page  # the trace in words, not the engine's codes
    assert "&lt;b&gt;Refunds&lt;/b&gt;" in page and "<b>Refunds</b>" not in page


@pytest.mark.django_db
def test_ticket_view_without_routing_has_no_panel(agent_client, tenant):
    ticket = TicketFactory(tenant=tenant)
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert 'aria-label="Routing"' not in page


@pytest.mark.django_db
def test_ticket_view_shows_team_routing(agent_client, tenant):
    team = TeamFactory(tenant=tenant, name="Frontline")
    ticket = TicketFactory(tenant=tenant)
    with tenant_scope(tenant):
        route_new_ticket(ticket=ticket, mode="team", team=team, facts=make_facts())
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    panel = page.split('aria-label="Routing"', 1)[1]
    assert "Team" in panel and "Frontline" in panel


def test_a_catastrophic_pattern_gives_up_and_matches_nothing(caplog):
    from channels_email.filters import pattern_matches

    # Exponential backtracking: without the time limit this search would not end.
    facts = make_facts(subject="x" * 5000)
    with caplog.at_level("WARNING", logger="helpdesk.patterns"):
        assert evaluate_condition(cond("subject", "matches", r"(x+x+)+y"), facts)[0] is False
        assert pattern_matches("/(x+x+)+y/", facts.subject[:2000]) is False
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["pattern.timeout"] * 2
    assert evaluate_condition(cond("subject", "matches", r"^X{5000}$"), facts)[0] is True
    assert pattern_matches("/^X{40}/", facts.subject) is True
