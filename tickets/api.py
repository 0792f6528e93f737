"""Tickets over the REST API (read side): list with filters and keyset pagination, one
ticket, its timeline. Thin views over ``tickets.selectors``, the same reads the agent
pages use; everything runs in the API key's tenant scope (``helpdesk.api``), so another
workspace's ticket is a 404 like an unknown number."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from helpdesk.api import KeysetPagination
from tickets.models import DeliveryStatus, Message, Ticket, TicketPriority, TicketStatus
from tickets.selectors import ticket_get, ticket_list, ticket_timeline


class _ContactRef(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    name = serializers.CharField()


class _UserRef(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    name = serializers.CharField(source="display_name")


class _TeamRef(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class TicketSerializer(serializers.ModelSerializer):
    contact = _ContactRef()
    team = _TeamRef(allow_null=True)
    assignee = _UserRef(allow_null=True)
    merged_into = serializers.SerializerMethodField()

    class Meta:
        model = Ticket
        fields = ["number", "title", "status", "priority", "contact", "cc_addresses",
                  "team", "assignee", "tags", "source_channel", "merged_into",
                  "created_at", "updated_at"]

    def get_merged_into(self, ticket: Ticket) -> int | None:
        return ticket.merged_into.number if ticket.merged_into_id else None


class TicketDetailSerializer(TicketSerializer):
    class Meta(TicketSerializer.Meta):
        fields = [*TicketSerializer.Meta.fields, "description", "routing"]


class AttachmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    inline = serializers.BooleanField()


class MessageSerializer(serializers.ModelSerializer):
    author = serializers.SerializerMethodField()
    delivery_status = serializers.ChoiceField(choices=DeliveryStatus.choices,
                                              allow_blank=True)
    attachments = AttachmentSerializer(many=True)
    dmarc = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = ["id", "kind", "author", "subject", "body_text", "body_html",
                  "to_addresses", "cc_addresses", "delivery_status", "delivery_error",
                  "attempts", "attachments", "dmarc", "created_at"]

    def get_author(self, message: Message) -> dict | None:
        if message.author_user_id:
            user = message.author_user
            return {"type": "agent", "id": user.pk, "email": user.email,
                    "name": user.display_name}
        if message.author_contact_id:
            contact = message.author_contact
            return {"type": "contact", "id": contact.pk, "email": contact.email,
                    "name": contact.name}
        return None

    def get_dmarc(self, message: Message) -> str | None:
        """The inbound email's DMARC verdict (pass, fail, none, ...); null otherwise."""
        for inbound in message.inbound_emails.all():
            return (inbound.details or {}).get("dmarc") or None
        return None


class TicketFilters(serializers.Serializer):
    """The list's query parameters, each checked by name."""

    status = serializers.ChoiceField(choices=TicketStatus.choices, required=False)
    priority = serializers.ChoiceField(choices=TicketPriority.choices, required=False)
    team = serializers.IntegerField(required=False, min_value=1)
    assignee = serializers.CharField(required=False, help_text="A member's id, or `none`.")
    contact = serializers.IntegerField(required=False, min_value=1)
    tag = serializers.CharField(required=False, max_length=50)
    updated_since = serializers.DateTimeField(required=False)
    q = serializers.CharField(required=False, max_length=200,
                              help_text="Subject, contact address or #number.")

    def validate_assignee(self, value: str):
        if value == "none":
            return value
        if not value.isdigit():
            raise serializers.ValidationError("A member's id, or `none`.")
        return int(value)


class TicketListView(GenericAPIView):
    """Tickets of the key's workspace, most recently updated first."""

    serializer_class = TicketSerializer
    pagination_class = KeysetPagination
    keyset = ("-updated_at", "-id")

    @extend_schema(parameters=[TicketFilters], responses=TicketSerializer(many=True))
    def get(self, request):
        filters = TicketFilters(data=request.query_params)
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        assignee = given.get("assignee")
        queryset = ticket_list(
            tenant=request.tenant, status=given.get("status", ""),
            priority=given.get("priority", ""), team_id=given.get("team"),
            assignee_id=assignee if isinstance(assignee, int) else None,
            unassigned=assignee == "none", contact_id=given.get("contact"),
            tag=given.get("tag", ""), updated_since=given.get("updated_since"),
            search=given.get("q", ""))
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


def _ticket_or_404(request, number: int) -> Ticket:
    try:
        return ticket_get(tenant=request.tenant, number=number)
    except Ticket.DoesNotExist:
        raise Http404 from None


class TicketDetailView(GenericAPIView):
    serializer_class = TicketDetailSerializer

    def get(self, request, number: int):
        return Response(self.get_serializer(_ticket_or_404(request, number)).data)


class TicketTimelineView(GenericAPIView):
    """The ticket's messages and notes, oldest first."""

    serializer_class = MessageSerializer
    pagination_class = KeysetPagination
    keyset = ("created_at", "id")

    @extend_schema(responses=MessageSerializer(many=True))
    def get(self, request, number: int):
        ticket = _ticket_or_404(request, number)
        page = self.paginate_queryset(ticket_timeline(ticket=ticket))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)
