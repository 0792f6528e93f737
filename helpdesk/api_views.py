"""The core app's REST API views (members). The shared machinery (keys, problems,
pagination) is ``helpdesk.api``, which DRF imports while loading its settings, so views
(which import DRF's own views) live here."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.generics import ListAPIView

from helpdesk.selectors import tenant_members


class MemberSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="user.id")
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.display_name")
    role = serializers.CharField()
    is_active = serializers.BooleanField(source="user.is_active")


class MemberListView(ListAPIView):
    """The workspace's members (the ids tickets are assigned to), by address."""

    serializer_class = MemberSerializer
    keyset = ("user__email", "id")

    def get_queryset(self):
        return tenant_members(tenant=self.request.tenant)
