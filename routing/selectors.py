"""Reads on teams and flows shared by the API (and available to the pages). Each takes
the tenant explicitly."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from helpdesk.models import Tenant
from routing.models import Flow, Rule, Team, TeamMember


def team_list(*, tenant: Tenant) -> QuerySet[Team]:
    """Teams with their members (two queries for any number of teams)."""
    return (Team.objects.filter(tenant=tenant)
            .prefetch_related(Prefetch("memberships", queryset=TeamMember.objects.filter(
                tenant=tenant).select_related("user").order_by("user__email"))))


def flow_list(*, tenant: Tenant) -> QuerySet[Flow]:
    """Flows with their rules in order (two queries for any number of flows)."""
    return (Flow.objects.filter(tenant=tenant).select_related("fallback_team")
            .prefetch_related(Prefetch("rules", queryset=Rule.objects.filter(
                tenant=tenant).order_by("position", "id"))))
