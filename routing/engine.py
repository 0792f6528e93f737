"""The routing engine: route a newly created ticket to a Team, or through a Flow's rules,
and record why on ``ticket.routing``.

Contract:
- ``decide_routing`` decides for a ticket about to be created, and ``ticket_fields`` turns
  the decision into ``ticket_create`` arguments (ingest: the INSERT carries the outcome);
  ``route_new_ticket`` applies it to a ticket that exists already (one UPDATE). Both run
  inside the caller's transaction and tenant scope. Neither raises on a misconfigured flow
  or rule: anything that cannot apply is recorded as skipped, with a reason, so that an
  email is never lost to a routing mistake.
- SQL: mode "team" reads nothing. Mode "flow" costs one SELECT of the active rules, at
  most one SELECT of teams (rule targets and the fallback team together) and one of
  memberships (only when a matched rule assigns an agent).
- Tenancy: teams and agents are looked up in the ticket's tenant only; another tenant's
  team or a non-member is "not found", exactly like a missing one.
- ``evaluate_flow`` decides without writing; given ``rules`` it reads the database only
  to resolve assign_team / assign_agent targets and the fallback team.

The vocabulary of conditions and actions lives here; ``routing.services.rule_validate``
checks rules against it before they are stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from helpdesk.models import Membership
from helpdesk.patterns import pattern_problem, pattern_search
from routing.models import Flow, MatchMode, Rule, Team
from tickets.models import TicketPriority, TicketStatus

if TYPE_CHECKING:
    from tickets.models import Ticket

# Regexes run on at most this many characters of a field: a rule author's pattern must not
# make a long body (or a hostile one) expensive.
MAX_TEXT = 20_000
MAX_TAG = 50

TEXT_FIELDS = ("subject", "body", "sender", "sender_domain", "recipient")
BOOL_FIELDS = ("has_attachments", "contact_is_new")
CHOICE_FIELDS = {"importance": ("high", "normal", "low")}
FIELDS = (*TEXT_FIELDS, *BOOL_FIELDS, *CHOICE_FIELDS)

TEXT_OPS = ("contains", "not_contains", "equals", "starts_with", "ends_with", "matches")
# Boolean and choice fields compare for equality ("equals" reads naturally too).
VALUE_OPS = ("is", "is_not", "equals")
NEGATED_OPS = {"not_contains": "contains", "is_not": "is"}

ACTION_TYPES = ("set_priority", "add_tag", "assign_team", "assign_agent", "set_status", "stop")

_OP_WORDS = {
    "contains": "contains",
    "not_contains": "does not contain",
    "equals": "equals",
    "starts_with": "starts with",
    "ends_with": "ends with",
    "matches": "matches",
    "is": "is",
    "is_not": "is not",
}


@dataclass(frozen=True)
class RoutingFacts:
    """What the rules may look at, taken from the inbound email. Addresses are lowercase."""

    subject: str
    body: str
    sender: str
    recipients: tuple[str, ...]
    has_attachments: bool
    importance: str
    is_new_contact: bool

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2].lower()


@dataclass
class RoutingDecision:
    """What the engine decided; ``explanation`` is what gets stored on ``ticket.routing``.

    ``team_set`` / ``assignee_set`` say whether the decision assigns them at all (a None
    team is never assigned: routing does not take a team away).
    """

    explanation: dict[str, Any]
    team: Team | None = None
    team_set: bool = False
    assignee: Any = None
    assignee_set: bool = False
    priority: str | None = None
    status: str | None = None
    tags: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- conditions


def _text_test(op: str, text: str, value: str) -> bool:
    text = text[:MAX_TEXT]
    if op == "matches":
        return pattern_search(value, text)
    text, value = text.casefold(), value.casefold()
    if op == "contains":
        return value in text
    if op == "equals":
        return text == value
    if op == "starts_with":
        return text.startswith(value)
    if op == "ends_with":
        return text.endswith(value)
    raise ValueError(op)


def _field_texts(facts: RoutingFacts, name: str) -> Sequence[str]:
    if name == "recipient":
        return facts.recipients
    if name == "sender_domain":
        return (facts.sender_domain,)
    return (getattr(facts, name) or "",)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    # Quoted as typed: repr() would double a pattern's backslashes ('\\b' for \b).
    return "'" + (text if len(text) <= 80 else text[:77] + "...") + "'"


def condition_problem(condition: Any) -> str | None:
    """Why ``condition`` is malformed, or None. Shared with ``rule_validate``."""
    if not isinstance(condition, dict):
        return "must be an object with field, op and value"
    name, op, value = condition.get("field"), condition.get("op"), condition.get("value")
    if name not in FIELDS:
        return f"unknown field {name!r} (expected one of: {', '.join(FIELDS)})"
    if name in TEXT_FIELDS:
        if op not in TEXT_OPS:
            return f"unknown op {op!r} for field {name!r} (expected one of: {', '.join(TEXT_OPS)})"
        if not isinstance(value, str) or not value:
            return f"value for field {name!r} must be a non-empty string"
        if op == "matches":
            return pattern_problem(value)
        return None
    if op not in VALUE_OPS:
        return f"unknown op {op!r} for field {name!r} (expected one of: {', '.join(VALUE_OPS)})"
    if name in BOOL_FIELDS and not isinstance(value, bool):
        return f"value for field {name!r} must be true or false"
    if name in CHOICE_FIELDS and value not in CHOICE_FIELDS[name]:
        return (f"value for field {name!r} must be one of: "
                f"{', '.join(CHOICE_FIELDS[name])}")
    return None


def evaluate_condition(condition: Any, facts: RoutingFacts) -> tuple[bool, str]:
    """(result, a human-readable line saying what was tested and the outcome)."""
    problem = condition_problem(condition)
    if problem is not None:
        label = condition.get("field", "?") if isinstance(condition, dict) else "?"
        return False, f"{label}: invalid condition ({problem}): no"
    name, op, value = condition["field"], condition["op"], condition["value"]
    positive = NEGATED_OPS.get(op, op)
    if name in TEXT_FIELDS:
        hit = any(_text_test(positive, text, value) for text in _field_texts(facts, name))
    elif name == "contact_is_new":
        hit = facts.is_new_contact is value
    elif name == "has_attachments":
        hit = facts.has_attachments is value
    else:
        hit = (facts.importance or "normal").lower() == value
    result = not hit if op in NEGATED_OPS else hit
    return result, f"{name} {_OP_WORDS[op]} {_fmt(value)}: {'yes' if result else 'no'}"


def evaluate_rule(rule: Rule, facts: RoutingFacts) -> tuple[bool, list[str]]:
    """Whether the rule matches, with one line per condition. No conditions match all."""
    conditions = rule.conditions if isinstance(rule.conditions, list) else [rule.conditions]
    if not conditions:
        return True, ["no conditions: matches every ticket"]
    results = [evaluate_condition(c, facts) for c in conditions]
    why = [line for _, line in results]
    hits = [ok for ok, _ in results]
    matched = any(hits) if rule.match == MatchMode.ANY else all(hits)
    return matched, why


# ---------------------------------------------------------------------------- actions


def action_problem(action: Any) -> str | None:
    """Why ``action`` is malformed, or None. Shared with ``rule_validate``."""
    if not isinstance(action, dict):
        return "must be an object with type and value"
    kind, value = action.get("type"), action.get("value")
    if kind not in ACTION_TYPES:
        return f"unknown action type {kind!r} (expected one of: {', '.join(ACTION_TYPES)})"
    if kind == "set_priority" and value not in TicketPriority.values:
        return f"priority must be one of: {', '.join(TicketPriority.values)}"
    if kind == "set_status" and value not in TicketStatus.values:
        return f"status must be one of: {', '.join(TicketStatus.values)}"
    if kind == "add_tag" and (not isinstance(value, str) or not value.strip()
                              or len(value.strip()) > MAX_TAG):
        return f"tag must be a non-empty string of at most {MAX_TAG} characters"
    if kind in ("assign_team", "assign_agent") and (
        isinstance(value, bool) or not isinstance(value, int) or value <= 0
    ):
        return f"{kind} needs a positive integer id"
    return None


def _ref(obj: Any, name: str) -> dict[str, Any] | None:
    return None if obj is None else {"id": obj.pk, "name": name}


def _user_name(user: Any) -> str:
    return getattr(user, "display_name", None) or str(user)


def _load_targets(
    *, tenant_id: int, team_ids: Iterable[int], user_ids: Iterable[int]
) -> tuple[dict[int, Team], dict[int, Any]]:
    """Teams and active member users of the tenant by id: at most one query each."""
    team_ids, user_ids = set(team_ids), set(user_ids)
    teams = ({t.pk: t for t in Team.objects.filter(tenant_id=tenant_id, pk__in=team_ids)}
             if team_ids else {})
    users = {}
    if user_ids:
        members = (Membership.objects.filter(tenant_id=tenant_id, user_id__in=user_ids,
                                             user__is_active=True).select_related("user"))
        users = {m.user_id: m.user for m in members}
    return teams, users


def load_rules(flow: Flow) -> list[Rule]:
    """The flow's active rules in evaluation order (one query)."""
    return list(flow.rules.filter(is_active=True).order_by("position", "id"))


def evaluate_flow(
    flow: Flow, facts: RoutingFacts, *, rules: Sequence[Rule] | None = None
) -> RoutingDecision:
    """Run the flow's rules over ``facts`` in order and decide; writes nothing.

    Rules are evaluated in (position, id) order. A matched rule's actions apply in order;
    a ``stop`` action or a matched rule with ``stop_processing`` ends the evaluation after
    that rule. Later values win (priority, status, team, agent); tags accumulate. If no
    rule assigned a team, the flow's fallback team is used. An inactive flow evaluates no
    rule and uses the fallback team only.
    """
    explanation: dict[str, Any] = {
        "mode": "flow",
        "flow": {"id": flow.pk, "name": flow.name},
        "rules": [],
        "fallback_team": None,
        "team": None,
        "assignee": None,
        "stopped_at": None,
        "reason": None,
    }
    if not flow.is_active:
        rules = []
        explanation["reason"] = "flow is inactive: only its fallback team applies"
    elif rules is None:
        rules = load_rules(flow)

    # Pass 1, pure: which rules match and which actions they bring, up to a stop.
    fired: list[tuple[dict[str, Any], list[Any]]] = []
    for rule in rules:
        matched, why = evaluate_rule(rule, facts)
        entry = {"id": rule.pk, "name": rule.name, "matched": matched, "why": why,
                 "actions": []}
        explanation["rules"].append(entry)
        if not matched:
            continue
        actions = rule.actions if isinstance(rule.actions, list) else [rule.actions]
        fired.append((entry, actions))
        stops = any(isinstance(a, dict) and a.get("type") == "stop" for a in actions)
        if stops or rule.stop_processing:
            explanation["stopped_at"] = rule.pk
            break

    # Pass 2: resolve every team and agent the actions name, plus the fallback team, in
    # at most two queries.
    wanted = [a for _, actions in fired for a in actions if action_problem(a) is None]
    team_ids = {a["value"] for a in wanted if a["type"] == "assign_team"}
    fallback = None
    if flow.fallback_team_id:
        if Flow.fallback_team.is_cached(flow):
            fallback = flow.fallback_team
        else:
            team_ids.add(flow.fallback_team_id)
    teams, users = _load_targets(
        tenant_id=flow.tenant_id, team_ids=team_ids,
        user_ids={a["value"] for a in wanted if a["type"] == "assign_agent"},
    )
    if flow.fallback_team_id and fallback is None:
        fallback = teams.get(flow.fallback_team_id)
    if fallback is not None and fallback.tenant_id != flow.tenant_id:
        fallback = None

    # Pass 3: apply in order.
    decision = RoutingDecision(explanation=explanation)
    for entry, actions in fired:
        for action in actions:
            entry["actions"].append(_apply(decision, action, teams=teams, users=users))

    if not decision.team_set and fallback is not None:
        decision.team, decision.team_set = fallback, True
        explanation["fallback_team"] = _ref(fallback, fallback.name)
    elif not decision.team_set and flow.fallback_team_id and explanation["reason"] is None:
        explanation["reason"] = "fallback team not found in this tenant"
    explanation["team"] = _ref(decision.team, decision.team.name) if decision.team else None
    if decision.assignee is not None:
        explanation["assignee"] = _ref(decision.assignee, _user_name(decision.assignee))
    return decision


def _apply(decision: RoutingDecision, action: Any, *, teams: dict[int, Team],
           users: dict[int, Any]) -> dict[str, Any]:
    """Apply one action to the decision; return its record for the explanation."""
    kind = action.get("type") if isinstance(action, dict) else None
    value = action.get("value") if isinstance(action, dict) else None
    record = {"type": kind if isinstance(kind, str) else str(kind), "value": value,
              "applied": False, "note": ""}
    problem = action_problem(action)
    if problem is not None:
        record["note"] = f"skipped: {problem}"
        return record
    record["applied"] = True
    if kind == "set_priority":
        decision.priority = value
        record["note"] = f"priority set to {value}"
    elif kind == "set_status":
        decision.status = value
        record["note"] = f"status set to {value}"
    elif kind == "add_tag":
        tag = value.strip()
        if tag not in decision.tags:
            decision.tags.append(tag)
        record["note"] = f"tag {tag!r} added"
    elif kind == "stop":
        record["note"] = "stopped evaluating further rules"
    elif kind == "assign_team":
        team = teams.get(value)
        if team is None:
            record.update(applied=False, note=f"skipped: team {value} not found in this tenant")
        else:
            decision.team, decision.team_set = team, True
            record["note"] = f"assigned to team {team.name}"
    elif kind == "assign_agent":
        user = users.get(value)
        if user is None:
            record.update(applied=False,
                          note=f"skipped: user {value} is not an active member of this tenant")
        else:
            decision.assignee, decision.assignee_set = user, True
            record["note"] = f"assigned to {_user_name(user)}"
    return record


# ---------------------------------------------------------------------------- entry point


def decide_routing(
    *,
    tenant_id: int,
    mode: str,
    facts: RoutingFacts,
    team: Team | None = None,
    flow: Flow | None = None,
) -> RoutingDecision:
    """Decide where a new ticket of ``tenant_id`` goes, before it exists: its fields can then
    be written by the ticket's own INSERT (``ticket_fields``), with no UPDATE afterwards.

    ``mode`` is "team" or "flow" (``channels_email.models.RoutingMode``; compared as plain
    strings so routing does not depend on the channel). Must run in the tenant's scope.
    Raises ValueError for an unknown mode only.
    """
    if mode == "team":
        if team is not None and team.tenant_id != tenant_id:
            team = None
            reason = "team is not in this tenant"
        else:
            reason = None if team is not None else "no team configured"
        return RoutingDecision(
            explanation={"mode": "team", "team": _ref(team, team.name) if team else None,
                         "reason": reason},
            team=team, team_set=team is not None,
        )
    if mode == "flow":
        if flow is None or flow.tenant_id != tenant_id:
            return RoutingDecision(explanation={
                "mode": "flow", "flow": None, "rules": [], "fallback_team": None,
                "team": None, "assignee": None, "stopped_at": None,
                "reason": "no flow configured" if flow is None else "flow is not in this tenant",
            })
        return evaluate_flow(flow, facts)
    raise ValueError(f"unknown routing mode {mode!r}")


def ticket_fields(decision: RoutingDecision) -> dict[str, Any]:
    """Keyword arguments for ``tickets.services.ticket_create`` that apply ``decision``."""
    fields: dict[str, Any] = {"routing": decision.explanation}
    if decision.team_set:
        fields["team"] = decision.team
    if decision.assignee_set:
        fields["assignee"] = decision.assignee
    if decision.priority:
        fields["priority"] = decision.priority
    if decision.status:
        fields["status"] = decision.status
    if decision.tags:
        fields["tags"] = list(dict.fromkeys(decision.tags))
    return fields


def route_new_ticket(
    *,
    ticket: Ticket,
    mode: str,
    facts: RoutingFacts,
    team: Team | None = None,
    flow: Flow | None = None,
) -> RoutingDecision:
    """Route an existing, just-created ticket and record why on ``ticket.routing`` (one
    UPDATE of the fields ``ticket_fields`` names; tags are added to the ticket's own).
    Ingest decides before the ticket exists instead (``decide_routing`` +
    ``ticket_fields`` into ``ticket_create``)."""
    decision = decide_routing(tenant_id=ticket.tenant_id, mode=mode, facts=facts, team=team,
                              flow=flow)
    fields = ticket_fields(decision)
    if "tags" in fields:
        fields["tags"] = list(dict.fromkeys([*ticket.tags, *fields["tags"]]))
    for name, value in fields.items():
        setattr(ticket, name, value)
    ticket.save(update_fields=[*fields, "updated_at"])
    return decision


__all__ = [
    "RoutingDecision",
    "RoutingFacts",
    "decide_routing",
    "evaluate_flow",
    "route_new_ticket",
    "ticket_fields",
]
