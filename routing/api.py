"""Teams and flows over the REST API (read). Thin views over ``routing.selectors``, in
the API key's tenant scope."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.generics import ListAPIView

from routing.models import Flow, Rule, Team
from routing.selectors import flow_list, team_list


class _Member(serializers.Serializer):
    id = serializers.IntegerField(source="user.id")
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.display_name")


class TeamSerializer(serializers.ModelSerializer):
    members = _Member(many=True, source="memberships")

    class Meta:
        model = Team
        fields = ["id", "name", "members", "created_at"]


class RuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = Rule
        fields = ["id", "position", "name", "match", "conditions", "actions",
                  "stop_processing", "is_active"]


class FlowSerializer(serializers.ModelSerializer):
    rules = RuleSerializer(many=True)

    class Meta:
        model = Flow
        fields = ["id", "name", "fallback_team", "is_active", "rules", "created_at"]


class TeamListView(ListAPIView):
    serializer_class = TeamSerializer
    keyset = ("name", "id")

    def get_queryset(self):
        return team_list(tenant=self.request.tenant)


class FlowListView(ListAPIView):
    serializer_class = FlowSerializer
    keyset = ("name", "id")

    def get_queryset(self):
        return flow_list(tenant=self.request.tenant)
