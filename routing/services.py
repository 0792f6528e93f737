"""Writes on flows and rules (keyword-only, transactional).

Rules are validated against the engine's vocabulary (``routing.engine``) before they are
stored; the database only holds JSON.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from helpdesk.models import Tenant
from routing.engine import action_problem, condition_problem
from routing.models import Flow, MatchMode, Rule, Team


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
