"""Contacts over the REST API: list and search, one contact with their tickets, create,
update. Thin views over ``contacts.selectors`` / ``contacts.services``, in the API key's
tenant scope (another workspace's contact is a 404)."""

from __future__ import annotations

from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView, ListAPIView
from rest_framework.response import Response

from contacts.models import Contact, ContactSource
from contacts.selectors import contact_get, contact_list
from contacts.services import contact_create, contact_update
from tickets.selectors import tickets_for_contact

CONTACT_TICKETS_SHOWN = 100


class ContactSerializer(serializers.ModelSerializer):
    class Meta:
        model = Contact
        fields = ["id", "email", "name", "source", "created_at", "updated_at"]
        read_only_fields = ["id", "source", "created_at", "updated_at"]


class _ContactTicket(serializers.Serializer):
    number = serializers.IntegerField()
    title = serializers.CharField()
    status = serializers.CharField()
    updated_at = serializers.DateTimeField()


class ContactDetailSerializer(ContactSerializer):
    tickets = serializers.SerializerMethodField()
    tickets_url = serializers.SerializerMethodField()

    class Meta(ContactSerializer.Meta):
        fields = [*ContactSerializer.Meta.fields, "tickets", "tickets_url"]

    @extend_schema_field(_ContactTicket(many=True))
    def get_tickets(self, contact: Contact) -> list[dict]:
        """The contact's latest tickets (up to 100; ``tickets_url`` pages through all)."""
        rows = tickets_for_contact(tenant=self.context["request"].tenant,
                                   contact_id=contact.pk)
        return _ContactTicket(rows[:CONTACT_TICKETS_SHOWN], many=True).data

    def get_tickets_url(self, contact: Contact) -> str:
        request = self.context["request"]
        return request.build_absolute_uri(reverse("api:ticket-list") + f"?contact={contact.pk}")


class ContactWriteSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=320)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)


class ContactListView(ListAPIView):
    """Contacts of the key's workspace by address; ``q`` searches address and name."""

    serializer_class = ContactSerializer
    keyset = ("email", "id")

    def get_queryset(self):
        search = self.request.query_params.get("q", "")[:200]
        return contact_list(tenant=self.request.tenant, search=search)

    @extend_schema(parameters=[OpenApiParameter("q", str, required=False)])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(request=ContactWriteSerializer, responses={201: ContactSerializer})
    def post(self, request):
        given = ContactWriteSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        contact = contact_create(tenant=request.tenant, email=given.validated_data["email"],
                                 name=given.validated_data.get("name", ""),
                                 source=ContactSource.API)
        return Response(ContactSerializer(contact).data, status=status.HTTP_201_CREATED)


class ContactDetailView(GenericAPIView):
    serializer_class = ContactDetailSerializer

    def _contact(self, request, contact_id: int) -> Contact:
        try:
            return contact_get(tenant=request.tenant, contact_id=contact_id)
        except Contact.DoesNotExist:
            raise Http404 from None

    def get(self, request, contact_id: int):
        return Response(self.get_serializer(self._contact(request, contact_id)).data)

    @extend_schema(request=ContactWriteSerializer(partial=True),
                   responses=ContactDetailSerializer)
    def patch(self, request, contact_id: int):
        contact = self._contact(request, contact_id)
        given = ContactWriteSerializer(data=request.data, partial=True)
        given.is_valid(raise_exception=True)
        contact_update(contact=contact, email=given.validated_data.get("email"),
                       name=given.validated_data.get("name"))
        return Response(self.get_serializer(contact).data)
