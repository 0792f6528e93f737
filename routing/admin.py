from django.contrib import admin

from routing.models import Flow, Rule, Team, TeamMember


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
    list_display = ["name", "flow", "position", "match", "is_active", "tenant"]
