"""Routing admin pages: teams (queues and their members), flows and their rules. Tenant
admins only; every lookup goes through the tenant's scope, so another workspace's team,
flow or rule is a 404."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from helpdesk.tenancy import require_admin
from routing.forms import FlowForm, RuleForm, TeamForm, rules_in_words
from routing.models import Flow, Rule, Team
from routing.services import (
    flow_save,
    routing_delete,
    rule_delete,
    rule_move,
    rule_save,
    team_save,
)

ROUTING_ADMIN = "change routing"  # what the 403 says a non-admin cannot do


def _back(request, flow: Flow | None = None):
    if flow is not None:
        return redirect("routing:flow", tenant_slug=request.tenant.slug, flow_id=flow.pk)
    return redirect("routing:index", tenant_slug=request.tenant.slug)


def _saved(form, save):
    """What ``save`` stores from ``form`` when it is valid; None (the errors on the form,
    a name taken meanwhile included) otherwise."""
    if not form.is_valid():
        return None
    try:
        return save(form.save(commit=False))
    except ValidationError as exc:
        form.add_error(None, exc)
        return None


def routing_index(request):
    require_admin(request, ROUTING_ADMIN)
    team_form = TeamForm(tenant=request.tenant, prefix="team")
    flow_form = FlowForm(tenant=request.tenant, prefix="flow")
    if request.method == "POST" and request.POST.get("kind") == "team":
        team_form = TeamForm(request.POST, tenant=request.tenant, prefix="team",
                             instance=Team(tenant=request.tenant))
        team = _saved(team_form, lambda t: team_save(
            team=t, member_ids=team_form.member_ids(), actor=request.user, created=True))
        if team:
            messages.success(request, f"Team {team.name} created.")
            return _back(request)
    elif request.method == "POST":
        flow_form = FlowForm(request.POST, tenant=request.tenant, prefix="flow",
                             instance=Flow(tenant=request.tenant))
        flow = _saved(flow_form, lambda f: flow_save(flow=f, actor=request.user,
                                                     created=True))
        if flow:
            messages.success(request, f"Flow {flow.name} created; add its rules.")
            return _back(request, flow)
    teams = Team.objects.filter(tenant=request.tenant).prefetch_related("members")
    flows = Flow.objects.filter(tenant=request.tenant).select_related("fallback_team")
    return render(request, "routing/index.html", {
        "teams": teams, "flows": flows, "team_form": team_form, "flow_form": flow_form,
    }, status=400 if request.method == "POST" else 200)


def team_detail(request, team_id: int):
    team = get_object_or_404(Team, tenant=request.tenant, pk=team_id)
    require_admin(request, ROUTING_ADMIN)
    form = TeamForm(request.POST or None, tenant=request.tenant, instance=team)
    if request.method == "POST" and _saved(form, lambda t: team_save(
            team=t, member_ids=form.member_ids(), actor=request.user)):
        messages.success(request, f"Team {team.name} saved.")
        return _back(request)
    return render(request, "routing/team.html", {"team": team, "form": form},
                  status=400 if request.method == "POST" else 200)


def _delete(request, target: Team | Flow):
    """The delete buttons: refused, naming what still uses it, or done."""
    kind = "Team" if isinstance(target, Team) else "Flow"
    users = routing_delete(target=target, actor=request.user)
    if users:
        messages.error(request, f"{kind} {target.name} is still used by {', '.join(users)}; "
                                "route those elsewhere first.")
        return _back(request, target if kind == "Flow" else None)
    messages.success(request, f"{kind} {target.name} deleted" + (
        "; its tickets stay, without a team." if kind == "Team" else "."))
    return _back(request)


@require_POST
def team_delete_view(request, team_id: int):
    team = get_object_or_404(Team, tenant=request.tenant, pk=team_id)
    require_admin(request, ROUTING_ADMIN)
    return _delete(request, team)


def flow_detail(request, flow_id: int):
    flow = get_object_or_404(Flow, tenant=request.tenant, pk=flow_id)
    require_admin(request, ROUTING_ADMIN)
    form = FlowForm(request.POST or None, tenant=request.tenant, instance=flow)
    if request.method == "POST" and _saved(form, lambda f: flow_save(flow=f,
                                                                      actor=request.user)):
        messages.success(request, f"Flow {flow.name} saved.")
        return _back(request, flow)
    return render(request, "routing/flow.html", {
        "flow": flow, "form": form, "rules": rules_in_words(
            tenant=request.tenant, rules=Rule.objects.filter(flow=flow)
            .order_by("position", "id"))}, status=400 if request.method == "POST" else 200)


@require_POST
def flow_delete_view(request, flow_id: int):
    flow = get_object_or_404(Flow, tenant=request.tenant, pk=flow_id)
    require_admin(request, ROUTING_ADMIN)
    return _delete(request, flow)


def rule_detail(request, flow_id: int, rule_id: int | None = None):
    """Add a rule to a flow (no ``rule_id``) or edit one."""
    flow = get_object_or_404(Flow, tenant=request.tenant, pk=flow_id)
    rule = (get_object_or_404(Rule, tenant=request.tenant, flow=flow, pk=rule_id)
            if rule_id is not None else Rule(tenant=request.tenant, flow=flow))
    require_admin(request, ROUTING_ADMIN)
    form = RuleForm(request.POST or None, tenant=request.tenant, instance=rule)
    if request.method == "POST" and form.is_valid():
        rule_save(rule=form.save(commit=False), actor=request.user)
        messages.success(request, f"Rule {rule.name} saved; it applies to new tickets.")
        return _back(request, flow)
    return render(request, "routing/rule.html", {
        "flow": flow, "rule": rule, "form": form},
        status=400 if request.method == "POST" else 200)


@require_POST
def rule_action_view(request, flow_id: int, rule_id: int):
    """Delete a rule, or move it up or down (``do`` = delete | up | down)."""
    rule = get_object_or_404(Rule, tenant=request.tenant, flow_id=flow_id, pk=rule_id)
    require_admin(request, ROUTING_ADMIN)
    do = request.POST.get("do")
    if do == "delete":
        rule_delete(rule=rule, actor=request.user)
        messages.success(request, f"Rule {rule.name} deleted.")
    elif do in ("up", "down"):
        rule_move(rule=rule, step=-1 if do == "up" else 1, actor=request.user)
    return _back(request, rule.flow)
