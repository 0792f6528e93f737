from django import forms
from django.contrib import admin

from routing.models import Flow, Rule, Team, TeamMember
from routing.services import rule_validate


class RuleAdminForm(forms.ModelForm):
    """Operators edit rules as JSON; check them against the engine's vocabulary."""

    class Meta:
        model = Rule
        # No foreign keys here: their querysets are scoped and this class is built at
        # import time; the admin adds tenant and flow when it builds its own form.
        fields = ["position", "name", "match", "conditions", "actions", "stop_processing",
                  "is_active"]

    def clean(self):
        cleaned = super().clean()
        if "conditions" in cleaned and "actions" in cleaned:
            rule_validate(cleaned["conditions"], cleaned["actions"])
        return cleaned


class TeamMemberInline(admin.TabularInline):
    model = TeamMember
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "created_at"]
    list_filter = ["tenant"]
    inlines = [TeamMemberInline]


class RuleInline(admin.StackedInline):
    model = Rule
    form = RuleAdminForm
    extra = 0


@admin.register(Flow)
class FlowAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "fallback_team", "is_active"]
    list_filter = ["tenant"]
    inlines = [RuleInline]


@admin.register(TeamMember)
class TeamMemberAdmin(admin.ModelAdmin):
    list_display = ["team", "user", "tenant"]


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    form = RuleAdminForm
    list_display = ["name", "flow", "position", "match", "is_active", "tenant"]
