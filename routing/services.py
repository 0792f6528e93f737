"""Writes on flows and rules (keyword-only, transactional).

Rules are validated against the engine's vocabulary (``routing.engine``) before they are
stored; the database only holds JSON.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max

from helpdesk.models import Tenant
from helpdesk.services import audit_record
from routing.engine import action_problem, condition_problem
from routing.models import Flow, MatchMode, Rule, Team, TeamMember


def rule_validate(conditions: Any, actions: Any) -> None:
    """Raise ValidationError({"conditions": [...], "actions": [...]}) naming each bad item.

    Messages read ``conditions[0]: unknown field 'foo' ...``: the list, the zero-based
    index and what is wrong (unknown field, op or action type, bad regex, wrong value type).
    """
    errors: dict[str, list[str]] = {}
    if not isinstance(conditions, list):
        errors["conditions"] = ["conditions must be a list"]
    else:
        problems = [(i, condition_problem(c)) for i, c in enumerate(conditions)]
        if bad := [f"conditions[{i}]: {p}" for i, p in problems if p]:
            errors["conditions"] = bad
    if not isinstance(actions, list):
        errors["actions"] = ["actions must be a list"]
    else:
        problems = [(i, action_problem(a)) for i, a in enumerate(actions)]
        if bad := [f"actions[{i}]: {p}" for i, p in problems if p]:
            errors["actions"] = bad
    if errors:
        raise ValidationError(errors)


def flow_create(*, tenant: Tenant, name: str, fallback_team: Team | None = None,
                description: str = "") -> Flow:
    """Create a flow. Raises ValidationError for a fallback team of another tenant."""
    if fallback_team is not None and fallback_team.tenant_id != tenant.pk:
        raise ValidationError({"fallback_team": ["team is not in this tenant"]})
    with transaction.atomic():
        return Flow.objects.create(tenant=tenant, name=name, description=description,
                                   fallback_team=fallback_team)


def rule_create(
    *,
    flow: Flow,
    name: str,
    conditions: list[dict[str, Any]],
    actions: list[dict[str, Any]],
    match: str = MatchMode.ALL,
    stop_processing: bool = False,
    position: int | None = None,
) -> Rule:
    """Validate and append a rule to ``flow`` (at the end unless ``position`` is given).

    Raises ValidationError (see ``rule_validate``; also for an unknown ``match``).
    """
    rule_validate(conditions, actions)
    if match not in MatchMode.values:
        raise ValidationError({"match": [f"match must be one of: {', '.join(MatchMode.values)}"]})
    with transaction.atomic():
        if position is None:
            # The base manager is unscoped; filtering on the flow keeps it to its tenant.
            last = Rule._base_manager.filter(flow=flow).aggregate(m=Max("position"))["m"]
            position = 0 if last is None else last + 1
        return Rule.objects.create(
            tenant_id=flow.tenant_id, flow=flow, name=name, match=match,
            conditions=conditions, actions=actions, stop_processing=stop_processing,
            position=position,
        )


# ------------------------------------------------------------- admin pages' writes
# Each write is audited ("routing changes", DESIGN section 3) and runs in the caller's
# tenant scope; objects come from the caller's scoped lookups.


def _in_use(*, team: Team | None = None, flow: Flow | None = None) -> list[str]:
    """What still points at ``team`` or ``flow``, named for the admin: mailboxes (a
    disconnected one too: it would come back routing nowhere), flows falling back to the
    team, and rules assigning to it."""
    from channels_email.models import EmailConnection

    tenant_id = (team or flow).tenant_id
    mailboxes = EmailConnection.objects.filter(tenant_id=tenant_id)
    if team is not None:
        users = [f"mailbox {a}" for a in mailboxes.filter(
            routing_mode="team", routing_team=team).values_list("address", flat=True)]
        users += [f"flow {n}" for n in Flow.objects.filter(
            tenant_id=tenant_id, fallback_team=team).values_list("name", flat=True)]
        users += [f"rule {r} of flow {f}" for r, f in Rule.objects.filter(
            tenant_id=tenant_id,
            actions__contains=[{"type": "assign_team", "value": team.pk}],
        ).values_list("name", "flow__name")]
        return users
    return [f"mailbox {a}" for a in mailboxes.filter(
        routing_mode="flow", routing_flow=flow).values_list("address", flat=True)]


def _name_taken(kind: str, name: str) -> ValidationError:
    # Two admins naming a team or flow alike at once: the constraint decides, politely.
    return ValidationError({"name": [f"A {kind} named {name} exists already."]})


def team_save(*, team: Team, member_ids: list[int], actor, created: bool = False) -> Team:
    """Create or update ``team`` (its name) and set its members to ``member_ids`` (ids of
    the tenant's active members; the caller's form offers only those). ValidationError
    when another team took the name meanwhile."""
    wanted = set(member_ids)
    try:
        with transaction.atomic():
            team.save()
            # One editor of the team's members at a time.
            list(Team.objects.select_for_update().filter(pk=team.pk)
                 .values_list("pk", flat=True))
            current = set(TeamMember.objects.filter(team=team)
                          .values_list("user_id", flat=True))
            TeamMember.objects.filter(team=team, user_id__in=current - wanted).delete()
            TeamMember.objects.bulk_create(
                [TeamMember(tenant_id=team.tenant_id, team=team, user_id=u)
                 for u in wanted - current], ignore_conflicts=True)
            audit_record(tenant=team.tenant, actor=actor,
                         action="team.created" if created else "team.changed", target=team,
                         details={"name": team.name, "members": sorted(wanted)})
    except IntegrityError as exc:
        raise _name_taken("team", team.name) from exc
    return team


def flow_save(*, flow: Flow, actor, created: bool = False) -> Flow:
    """Create or update ``flow``. ValidationError when another flow took the name
    meanwhile."""
    try:
        with transaction.atomic():
            flow.save()
            audit_record(tenant=flow.tenant, actor=actor,
                         action="flow.created" if created else "flow.changed", target=flow,
                         details={"name": flow.name, "active": flow.is_active,
                                  "fallback_team": flow.fallback_team_id})
    except IntegrityError as exc:
        raise _name_taken("flow", flow.name) from exc
    return flow


def routing_delete(*, target: Team | Flow, actor) -> list[str]:
    """Delete a team (its tickets keep their history and lose the team) or a flow (with
    its rules) unless something still routes to it; returns what uses it (empty when
    deleted)."""
    kind = "team" if isinstance(target, Team) else "flow"
    with transaction.atomic():
        users = _in_use(**{kind: target})
        if not users:
            audit_record(tenant=target.tenant, actor=actor, action=f"{kind}.deleted",
                         details={"name": target.name, "id": target.pk})
            target.delete()
    return users


def rule_save(*, rule: Rule, actor) -> Rule:
    """Validate and store ``rule`` (a new one goes last in its flow)."""
    rule_validate(rule.conditions, rule.actions)
    created = rule.pk is None
    with transaction.atomic():
        if created:
            last = Rule.objects.filter(flow=rule.flow).aggregate(m=Max("position"))["m"]
            rule.position = 0 if last is None else last + 1
            rule.save()
        else:  # its place is rule_move's: an edit keeps a move made meanwhile
            rule.save(update_fields=["name", "match", "conditions", "actions",
                                     "stop_processing", "is_active"])
        audit_record(tenant=rule.flow.tenant, actor=actor,
                     action="rule.created" if created else "rule.changed", target=rule,
                     details={"flow": rule.flow_id, "conditions": rule.conditions,
                              "actions": rule.actions, "match": rule.match})
    return rule


def rule_delete(*, rule: Rule, actor) -> None:
    with transaction.atomic():
        audit_record(tenant=rule.flow.tenant, actor=actor, action="rule.deleted",
                     details={"flow": rule.flow_id, "name": rule.name, "id": rule.pk})
        rule.delete()


def rule_move(*, rule: Rule, step: int, actor) -> None:
    """Move ``rule`` one place up (step -1) or down (+1) in its flow's order."""
    with transaction.atomic():
        rules = list(Rule.objects.select_for_update().filter(flow_id=rule.flow_id)
                     .order_by("position", "id"))
        index = next((i for i, r in enumerate(rules) if r.pk == rule.pk), None)
        other = -1 if index is None else index + step  # deleted meanwhile: nothing to do
        if not 0 <= other < len(rules):
            return
        rules[index], rules[other] = rules[other], rules[index]
        for position, item in enumerate(rules):
            if item.position != position:
                Rule.objects.filter(pk=item.pk).update(position=position)
        audit_record(tenant=rule.flow.tenant, actor=actor, action="rule.moved", target=rule,
                     details={"flow": rule.flow_id, "position": other})
