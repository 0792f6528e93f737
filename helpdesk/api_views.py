"""The core app's REST API views (members, outgoing webhook endpoints). The shared
machinery (keys, problems, pagination) is ``helpdesk.api``, which DRF imports while
loading its settings, so views (which import DRF's own views) live here."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView, ListAPIView
from rest_framework.response import Response

from helpdesk.models import WebhookAttempt, WebhookEndpoint, WebhookEventState, WebhookEventType
from helpdesk.selectors import tenant_members
from helpdesk.webhooks_out import (
    live_secrets,
    webhook_attempts_for,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_get,
    webhook_endpoint_test,
    webhook_endpoint_update,
    webhook_endpoints_for,
    webhook_secret_rotate,
)


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


# ------------------------------------------------------------------ outgoing webhooks


class WebhookEndpointSerializer(serializers.ModelSerializer):
    events = serializers.ListField(child=serializers.ChoiceField(
        choices=WebhookEventType.choices))

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "events", "is_active", "disabled_reason",
                  "disabled_at", "consecutive_failures", "last_success_at",
                  "last_failure_at", "created_at", "updated_at"]


class WebhookEndpointSecretSerializer(WebhookEndpointSerializer):
    """An endpoint with its current signing secret: the answer to a create and to a
    rotation only."""

    secret = serializers.SerializerMethodField()

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]

    def get_secret(self, endpoint: WebhookEndpoint) -> str:
        return live_secrets(endpoint)[0]


class WebhookEndpointInputSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=2000)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    events = serializers.ListField(child=serializers.ChoiceField(
        choices=WebhookEventType.choices), min_length=1, max_length=20)
    is_active = serializers.BooleanField(required=False)


class WebhookAttemptSerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(source="event.webhook_id")
    type = serializers.CharField(source="event.type")
    event_state = serializers.ChoiceField(source="event.state",
                                          choices=WebhookEventState.choices)

    class Meta:
        model = WebhookAttempt
        fields = ["id", "webhook_id", "type", "event_state", "attempted_at", "succeeded",
                  "status_code", "error", "duration_ms"]


def _endpoint_of(request, webhook_endpoint_id: int) -> WebhookEndpoint:
    try:
        return webhook_endpoint_get(tenant=request.tenant, endpoint_id=webhook_endpoint_id)
    except WebhookEndpoint.DoesNotExist:
        raise Http404 from None


class WebhookEndpointListView(ListAPIView):
    """The workspace's outgoing webhook endpoints (admin keys); POST adds one, answering
    with its signing secret (the only read of it besides a rotation)."""

    admin_only = True
    serializer_class = WebhookEndpointSerializer
    keyset = ("-created_at", "-id")

    def get_queryset(self):
        return webhook_endpoints_for(tenant=self.request.tenant)

    @extend_schema(request=WebhookEndpointInputSerializer,
                   responses={201: WebhookEndpointSecretSerializer})
    def post(self, request):
        given = WebhookEndpointInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        endpoint = webhook_endpoint_create(tenant=request.tenant, actor=request.user.user,
                                           url=data["url"], events=data["events"],
                                           description=data.get("description", ""))
        if data.get("is_active") is False:
            webhook_endpoint_update(endpoint=endpoint, actor=request.user.user,
                                    is_active=False)
        return Response(WebhookEndpointSecretSerializer(endpoint).data,
                        status=status.HTTP_201_CREATED)


class WebhookEndpointDetailView(GenericAPIView):
    """One endpoint: read, PATCH (url, description, events, is_active: enabling a
    disabled one sends its pending events), DELETE."""

    admin_only = True
    serializer_class = WebhookEndpointSerializer

    def get(self, request, webhook_endpoint_id: int):
        return Response(self.get_serializer(_endpoint_of(request, webhook_endpoint_id)).data)

    @extend_schema(request=WebhookEndpointInputSerializer(partial=True),
                   responses=WebhookEndpointSerializer)
    def patch(self, request, webhook_endpoint_id: int):
        endpoint = _endpoint_of(request, webhook_endpoint_id)
        given = WebhookEndpointInputSerializer(data=request.data, partial=True)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        webhook_endpoint_update(endpoint=endpoint, actor=request.user.user,
                                url=data.get("url"), events=data.get("events"),
                                description=data.get("description"),
                                is_active=data.get("is_active"))
        return Response(self.get_serializer(endpoint).data)

    @extend_schema(responses={204: None})
    def delete(self, request, webhook_endpoint_id: int):
        webhook_endpoint_delete(endpoint=_endpoint_of(request, webhook_endpoint_id),
                                actor=request.user.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookSecretRotateView(GenericAPIView):
    """A new signing secret (in the answer); the previous one keeps signing alongside
    it for ``WEBHOOK_SECRET_OVERLAP`` (24 hours by default)."""

    admin_only = True
    serializer_class = WebhookEndpointSecretSerializer

    @extend_schema(request=None, responses=WebhookEndpointSecretSerializer)
    def post(self, request, webhook_endpoint_id: int):
        endpoint = _endpoint_of(request, webhook_endpoint_id)
        webhook_secret_rotate(endpoint=endpoint, actor=request.user.user)
        return Response(self.get_serializer(endpoint).data)


class _TestEventSerializer(serializers.Serializer):
    webhook_id = serializers.CharField()
    type = serializers.CharField()
    state = serializers.ChoiceField(choices=WebhookEventState.choices)


class WebhookTestView(GenericAPIView):
    """Queue a ``webhook.test`` event for this endpoint (202); its attempts show in the
    endpoint's deliveries. 409 for a disabled endpoint."""

    admin_only = True
    serializer_class = _TestEventSerializer

    @extend_schema(request=None, responses={202: _TestEventSerializer})
    def post(self, request, webhook_endpoint_id: int):
        event = webhook_endpoint_test(endpoint=_endpoint_of(request, webhook_endpoint_id),
                                      actor=request.user.user)
        return Response(self.get_serializer(event).data, status=status.HTTP_202_ACCEPTED)


class WebhookAttemptListView(ListAPIView):
    """Every delivery attempt to this endpoint, newest first: when, the HTTP status
    (null when no answer came), and why a failure failed."""

    admin_only = True
    serializer_class = WebhookAttemptSerializer
    keyset = ("-attempted_at", "-id")

    def get_queryset(self):
        endpoint = _endpoint_of(self.request, self.kwargs["webhook_endpoint_id"])
        return webhook_attempts_for(endpoint=endpoint)
