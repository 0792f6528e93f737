"""The email channel over the REST API: connections and their health (read), the
suppression list (read, add, remove) and the inbound mail log (read, reprocess). Thin
views over ``channels_email.selectors`` / ``services``, in the API key's tenant scope.
No field ever carries a token, a secret or a cursor.

The suppression list and the inbound log are admin pages in the UI, so they need a key
with admin scope here too; connections are readable with any key."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView, ListAPIView
from rest_framework.response import Response

from channels_email.ingest import inbound_email_reprocess
from channels_email.models import EmailConnection, InboundEmail, InboundState, SuppressedAddress
from channels_email.selectors import (
    connection_health,
    connections_for_tenant,
    inbound_email_get,
    inbound_email_log,
    suppressions_for_tenant,
)
from channels_email.services import (
    suppression_add,
    suppression_remove,
)


class _HealthFlag(serializers.Serializer):
    name = serializers.ChoiceField(choices=["not_syncing", "failing", "watch_expired",
                                            "pushes_missing"])
    detail = serializers.CharField()


class ConnectionSerializer(serializers.ModelSerializer):
    flags = serializers.SerializerMethodField()
    last_error_past = serializers.SerializerMethodField()
    routing = serializers.SerializerMethodField()

    class Meta:
        model = EmailConnection
        fields = ["id", "provider", "address", "display_name", "status", "flags",
                  "last_sync_at", "consecutive_errors", "last_error", "last_error_at",
                  "last_error_past", "rate_limited_until", "subscription_expires_at",
                  "last_push_at", "routing", "is_default", "created_at"]

    @extend_schema_field(_HealthFlag(many=True))
    def get_flags(self, connection: EmailConnection) -> list[dict]:
        """The health page's flags (``connection_health``), each with its explanation."""
        return [{"name": flag.label.lower().replace(" ", "_"), "detail": flag.detail}
                for flag in connection_health(connection).flags]

    def get_last_error_past(self, connection: EmailConnection) -> bool:
        """True when a sync has worked since the last error (it is history)."""
        return connection_health(connection).last_error_past

    @extend_schema_field({"type": "object", "properties": {
        "mode": {"type": "string"}, "team": {"type": ["integer", "null"]},
        "flow": {"type": ["integer", "null"]}}})
    def get_routing(self, connection: EmailConnection) -> dict:
        return {"mode": connection.routing_mode, "team": connection.routing_team_id,
                "flow": connection.routing_flow_id}


class ConnectionListView(ListAPIView):
    """The workspace's mailboxes with their health, by address."""

    serializer_class = ConnectionSerializer
    keyset = ("address", "id")

    def get_queryset(self):
        return connections_for_tenant(tenant=self.request.tenant)


class ConnectionDetailView(GenericAPIView):
    serializer_class = ConnectionSerializer

    def get(self, request, connection_id: int):
        connection = connections_for_tenant(tenant=request.tenant).filter(
            pk=connection_id).first()
        if connection is None:
            raise Http404
        return Response(self.get_serializer(connection).data)


class SuppressionSerializer(serializers.ModelSerializer):
    class Meta:
        model = SuppressedAddress
        fields = ["id", "email", "reason", "details", "inbound_email", "created_at"]


class SuppressionAddSerializer(serializers.Serializer):
    email = serializers.CharField(max_length=320)
    details = serializers.CharField(max_length=2000, required=False, allow_blank=True)


class SuppressionListView(ListAPIView):
    """Addresses no acknowledgement or reply goes to (bounced, complained or added)."""

    admin_only = True
    serializer_class = SuppressionSerializer
    keyset = ("-created_at", "-id")

    def get_queryset(self):
        return suppressions_for_tenant(tenant=self.request.tenant)

    @extend_schema(request=SuppressionAddSerializer,
                   responses={201: SuppressionSerializer, 200: SuppressionSerializer})
    def post(self, request):
        given = SuppressionAddSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        entry, created = suppression_add(tenant=request.tenant,
                                         email=given.validated_data["email"],
                                         actor=request.user.user,
                                         details=given.validated_data.get("details", ""))
        return Response(SuppressionSerializer(entry).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class SuppressionDetailView(GenericAPIView):
    admin_only = True
    serializer_class = SuppressionSerializer

    @extend_schema(responses={204: None})
    def delete(self, request, suppression_id: int):
        if not suppression_remove(tenant=request.tenant, suppression_id=suppression_id,
                                  actor=request.user.user):
            raise Http404
        return Response(status=status.HTTP_204_NO_CONTENT)


class InboundEmailSerializer(serializers.ModelSerializer):
    class Meta:
        model = InboundEmail
        fields = ["id", "connection", "state", "reason", "message_id_header", "subject",
                  "from_address", "raw_size", "ticket", "attempts", "received_at",
                  "processed_at"]


class InboundEmailListView(ListAPIView):
    """Every email that reached the workspace's mailboxes, newest first; ``state``
    narrows it (e.g. ``quarantined``)."""

    admin_only = True
    serializer_class = InboundEmailSerializer
    keyset = ("-received_at", "-id")

    def get_queryset(self):
        wanted = self.request.query_params.get("state", "")
        if wanted and wanted not in InboundState.values:
            raise serializers.ValidationError(
                {"state": [f"One of: {', '.join(InboundState.values)}."]})
        return inbound_email_log(tenant=self.request.tenant, state=wanted)

    @extend_schema(parameters=[OpenApiParameter("state", str, required=False,
                                                enum=InboundState.values)])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class InboundEmailReprocessView(GenericAPIView):
    """Run a quarantined, failed or skipped email through ingest again (audited)."""

    admin_only = True
    serializer_class = InboundEmailSerializer

    @extend_schema(request=None, responses=InboundEmailSerializer)
    def post(self, request, inbound_email_id: int):
        try:
            row = inbound_email_get(tenant=request.tenant, inbound_email_id=inbound_email_id)
        except InboundEmail.DoesNotExist:
            raise Http404 from None
        inbound_email_reprocess(inbound_email=row, actor=request.user.user)
        row.refresh_from_db()
        return Response(self.get_serializer(row).data)
