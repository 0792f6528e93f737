"""Teams (queues) and Flows (ordered rules for automated triage).

Only the schema lives here for now; the engine that evaluates rules comes with the
inbound pipeline. A rule's ``conditions`` is a list of ``{"field", "op", "value"}`` and
its ``actions`` a list of ``{"type", "value"}``; both are validated by the engine's
services, not by the database.
"""

from django.conf import settings
from django.db import models

from helpdesk.tenancy import TenantOwnedModel


class Team(TenantOwnedModel):
    name = models.CharField(max_length=100)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="TeamMember",
                                     related_name="teams", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="team_name_unique")]

    def __str__(self) -> str:
        return self.name


class TeamMember(TenantOwnedModel):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="team_memberships")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "team", "user"], name="team_member_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in team {self.team_id}"


class Flow(TenantOwnedModel):
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    fallback_team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True,
                                      related_name="+")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="flow_name_unique")]

    def __str__(self) -> str:
        return self.name


class MatchMode(models.TextChoices):
    ALL = "all", "All conditions"
    ANY = "any", "Any condition"


class Rule(TenantOwnedModel):
    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="rules")
    position = models.PositiveIntegerField(default=0)
    name = models.CharField(max_length=100)
    match = models.CharField(max_length=3, choices=MatchMode.choices, default=MatchMode.ALL)
    conditions = models.JSONField(default=list, blank=True)
    actions = models.JSONField(default=list, blank=True)
    stop_processing = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["flow", "position", "id"]
        indexes = [models.Index(fields=["tenant", "flow", "position"], name="rule_flow_order")]

    def __str__(self) -> str:
        return self.name
