"""Tickets over the REST API: list with filters and keyset pagination, one ticket, its
timeline, and the writes an agent makes (PATCH with optimistic concurrency, merge, a new
ticket to a contact, replies, notes, retrying a reply, attachment downloads). Thin views
over ``tickets.selectors`` and ``tickets.services``, the same the agent pages use; the
rules the services enforce come back as problem documents naming the field. Everything
runs in the API key's tenant scope (``helpdesk.api``), so another workspace's ticket is a
404 like an unknown number, and its ids in a body are a 400 on their field.

Concurrency: GET and PATCH of a ticket answer with its ``ETag``; PATCH requires
``If-Match`` (428 without it, 412 when the ticket changed since that ETag was read;
``If-Match: *`` opts out knowingly). A GET with ``If-None-Match`` naming the current ETag
is a 304 without a body (the ETag covers everything the ticket's representation shows:
``tickets.services.ticket_etag``)."""

from __future__ import annotations

from django.http import Http404, HttpResponseNotModified
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from helpdesk.api import KeysetPagination
from helpdesk.api_schema import PROBLEM
from helpdesk.errors import ApplicationError
from helpdesk.models import User
from routing.models import Team
from tickets.models import (
    Attachment,
    DeliveryStatus,
    Message,
    Ticket,
    TicketPriority,
    TicketStatus,
)
from tickets.selectors import (
    attachment_get_for,
    outbound_message_get_for,
    ticket_get_for,
    ticket_list,
    ticket_timeline,
)
from tickets.services import (
    KEEP,
    STATUSES_AFTER_SEND,
    TAG_MAX_LENGTH,
    TAGS_MAX,
    ticket_etag,
    ticket_merge,
    ticket_open_outbound,
    ticket_reply,
    ticket_update,
)

PK_MAX = 2**31 - 1  # ids and numbers are PostgreSQL integers
ADDRESSES_MAX = 50


def _problems(**described: str) -> dict:
    """Schema entries for problem documents this operation answers beyond the shared ones
    (``helpdesk.api_schema.PROBLEM_STATUSES``)."""
    return {(int(code.removeprefix("s")), "application/problem+json"):
            OpenApiResponse(response=PROBLEM, description=text)
            for code, text in described.items()}


def _etag_header(*statuses: int) -> OpenApiParameter:
    return OpenApiParameter("ETag", str, OpenApiParameter.HEADER, response=list(statuses),
                            description="The ticket's version, for If-Match on PATCH and "
                                        "If-None-Match on GET.")


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
    url = serializers.SerializerMethodField()

    def get_url(self, attachment) -> str | None:
        """Where the file downloads (``GET``, any key of the workspace)."""
        number, request = self.context.get("number"), self.context.get("request")
        if number is None or request is None:
            return None
        return request.build_absolute_uri(reverse(
            "api:ticket-attachment", kwargs={"number": number, "attachment_id": attachment.id}))


class _OfTicket:
    """Views under ``tickets/<number>/``: serializers know the ticket's number (for the
    attachments' download links)."""

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "number": self.kwargs.get("number")}


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
                              help_text="Words, each the start of a word of the subject, "
                              "the messages, the contact's name or address, or CC; or a "
                              "#number.")

    def validate_assignee(self, value: str):
        if value == "none":
            return value
        if not value.isdigit():
            raise serializers.ValidationError("A member's id, or `none`.")
        return int(value)


class _Files(serializers.Serializer):
    attachments = serializers.ListField(child=serializers.FileField(), required=False,
                                        max_length=20, help_text="Multipart only.")

    def files(self) -> list[tuple[str, bytes, str]]:
        return [(f.name, f.read(), f.content_type or "application/octet-stream")
                for f in self.validated_data.get("attachments", [])]


class TicketCreateSerializer(_Files):
    """A ticket we open to a contact, with our first message to them (JSON, or
    multipart with ``attachments``)."""

    contact = serializers.IntegerField(min_value=1, max_value=PK_MAX, required=False,
                                       help_text="A contact's id (or give contact_email).")
    contact_email = serializers.EmailField(max_length=320, required=False,
                                           help_text="Found, or created as a contact.")
    contact_name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    subject = serializers.CharField(max_length=998)
    body = serializers.CharField(max_length=100_000, help_text="The first message (text).")
    cc = serializers.ListField(child=serializers.EmailField(max_length=320), required=False,
                               max_length=ADDRESSES_MAX)
    priority = serializers.ChoiceField(choices=TicketPriority.choices, required=False,
                                       default=TicketPriority.NORMAL)
    team = serializers.IntegerField(min_value=1, max_value=PK_MAX, required=False,
                                    allow_null=True)
    assignee = serializers.IntegerField(min_value=1, max_value=PK_MAX, required=False,
                                        allow_null=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=TAG_MAX_LENGTH),
                                 max_length=TAGS_MAX, required=False)


class TicketListView(GenericAPIView):
    """Tickets of the key's workspace, most recently updated first; POST opens one."""

    serializer_class = TicketSerializer
    pagination_class = KeysetPagination
    parser_classes = [JSONParser, MultiPartParser]
    keyset = ("-updated_at", "-id")

    @extend_schema(request=TicketCreateSerializer, parameters=[_etag_header(201)],
                   responses={201: TicketDetailSerializer, **_problems(
                       s409="No default mailbox to send the first message from.",
                       s413="The attachments are over the limits.")})
    def post(self, request):
        given = TicketCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        ticket, _ = ticket_open_outbound(
            tenant=request.tenant, actor=_author(request), subject=data["subject"],
            body_text=data["body"], contact_id=data.get("contact"),
            contact_email=data.get("contact_email", ""),
            contact_name=data.get("contact_name", ""), cc=data.get("cc", []),
            priority=data["priority"], team=_team(request, data.get("team")),
            assignee=_assignee(data.get("assignee")), tags=data.get("tags", []),
            attachments=given.files())
        ticket = _ticket_or_404(request, ticket.number)
        return _with_etag(Response(TicketDetailSerializer(ticket).data,
                                   status=status.HTTP_201_CREATED), ticket)

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
        return ticket_get_for(tenant=request.tenant, actor=request.user, number=number)
    except Ticket.DoesNotExist:
        raise Http404 from None


def _author(request) -> User:
    """The member a key writes as: the one who created it."""
    author = request.user.user
    if author is None:
        raise exceptions.PermissionDenied("The member who created this key is gone; a "
                                          "key of a current member can write.")
    return author


def _team(request, team_id: int | None) -> Team | None:
    """The team ``team_id`` of the key's workspace (None for none); any other id is a 400
    on ``team``, never a link to another workspace's team."""
    if team_id is None:
        return None
    team = Team.objects.filter(tenant=request.tenant, pk=team_id).first()
    if team is None:
        raise ApplicationError("team_not_found", "There is no such team in this workspace.",
                               field="team")
    return team


def _assignee(assignee_id: int | None) -> User | None:
    """The user ``assignee_id``; the service refuses anyone who is not an active member
    of the ticket's workspace (a 400 on ``assignee``)."""
    if assignee_id is None:
        return None
    user = User.objects.filter(pk=assignee_id).first()
    if user is None:
        raise ApplicationError("assignee_not_member", "The assignee must be an active member "
                               "of this workspace.", field="assignee")
    return user


def _none_match(header: str, etag: str) -> bool:
    """Whether If-None-Match ``header`` names ``etag`` (RFC 9110 13.1.2: weak comparison,
    so W/"x" names "x"; ``*`` names any current representation)."""
    if header.strip() == "*":
        return True
    return etag in {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _with_etag(response: Response, ticket: Ticket) -> Response:
    response["ETag"] = ticket_etag(ticket)
    return response


class TicketPatchSerializer(serializers.Serializer):
    """The fields a PATCH may set; those left out stay as they are."""

    status = serializers.ChoiceField(choices=TicketStatus.choices, required=False)
    priority = serializers.ChoiceField(choices=TicketPriority.choices, required=False)
    team = serializers.IntegerField(min_value=1, max_value=PK_MAX, allow_null=True,
                                    required=False, help_text="A team's id, or null.")
    assignee = serializers.IntegerField(min_value=1, max_value=PK_MAX, allow_null=True,
                                        required=False, help_text="A member's id, or null.")
    tags = serializers.ListField(child=serializers.CharField(max_length=TAG_MAX_LENGTH),
                                 max_length=TAGS_MAX, required=False,
                                 help_text="The whole list (replaces the ticket's).")


class TicketDetailView(GenericAPIView):
    serializer_class = TicketDetailSerializer

    @extend_schema(
        parameters=[OpenApiParameter(
            "If-None-Match", str, OpenApiParameter.HEADER,
            description="ETags of copies the client has: 304 with no body when the ticket "
                        "is still one of them (`*`: any)."),
            _etag_header(200, 304)],
        responses={200: TicketDetailSerializer,
                   304: OpenApiResponse(description="Not modified: the client's copy (its "
                                                    "If-None-Match) is current.")})
    def get(self, request, number: int):
        ticket = _ticket_or_404(request, number)
        etag = ticket_etag(ticket)
        if _none_match(request.headers.get("If-None-Match", ""), etag):
            not_modified = HttpResponseNotModified()
            not_modified["ETag"] = etag
            return not_modified
        return _with_etag(Response(self.get_serializer(ticket).data), ticket)

    @extend_schema(
        request=TicketPatchSerializer,
        parameters=[OpenApiParameter(
            "If-Match", str, OpenApiParameter.HEADER, required=True,
            description="The ETag of the copy being changed (`*`: whatever it is now)."),
            _etag_header(200)],
        responses={200: TicketDetailSerializer, **_problems(
            s412="The ticket changed since this ETag was read: read it again.",
            s428="PATCH needs If-Match (the ETag of a GET).")})
    def patch(self, request, number: int):
        ticket = _ticket_or_404(request, number)
        given = TicketPatchSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        header = request.headers.get("If-Match", "").strip()
        if not header:
            raise ApplicationError("if_match_required", "Send If-Match with the ETag of "
                                   "your copy of the ticket (from a GET).", field="If-Match",
                                   status=428)
        # Strong comparison (RFC 9110 13.1.1): a weak W/"..." tag never matches.
        tags = [v.strip() for v in header.split(",")]
        ticket_update(
            ticket=ticket, actor=_author(request),
            if_match=None if "*" in tags else tags,
            status=data.get("status", KEEP), priority=data.get("priority", KEEP),
            team=_team(request, data["team"]) if "team" in data else KEEP,
            assignee=_assignee(data["assignee"]) if "assignee" in data else KEEP,
            tags=data.get("tags", KEEP))
        ticket = _ticket_or_404(request, number)
        return _with_etag(Response(self.get_serializer(ticket).data), ticket)


class MergeSerializer(serializers.Serializer):
    into = serializers.IntegerField(min_value=1, max_value=PK_MAX,
                                    help_text="The number of the ticket that stays.")


class TicketMergeView(GenericAPIView):
    """Merge this ticket into ``into``: its messages, attachments and thread move there,
    and this one closes with a link to it. Answers with the ticket that stays."""

    serializer_class = TicketDetailSerializer

    @extend_schema(request=MergeSerializer, parameters=[_etag_header(200)],
                   responses={200: TicketDetailSerializer})
    def post(self, request, number: int):
        source = _ticket_or_404(request, number)
        given = MergeSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            target = ticket_get_for(tenant=request.tenant, actor=request.user,
                                    number=given.validated_data["into"])
        except Ticket.DoesNotExist:
            raise ApplicationError("ticket_not_found", "There is no such ticket to merge "
                                   "into.", field="into") from None
        target = ticket_merge(source=source, target=target, actor=_author(request))
        return _with_etag(Response(self.get_serializer(target).data), target)


class TicketTimelineView(_OfTicket, GenericAPIView):
    """The ticket's messages and notes, oldest first."""

    serializer_class = MessageSerializer
    pagination_class = KeysetPagination
    keyset = ("created_at", "id")

    @extend_schema(responses=MessageSerializer(many=True))
    def get(self, request, number: int):
        ticket = _ticket_or_404(request, number)
        page = self.paginate_queryset(ticket_timeline(ticket=ticket))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


# ------------------------------------------------------------------ timeline writes


class _Warning(serializers.Serializer):
    code = serializers.CharField()
    address = serializers.EmailField()
    detail = serializers.CharField()


class ReplySerializer(MessageSerializer):
    """The Pending reply, with the composer's warnings (a recipient on the suppression
    list: the reply goes, and will probably bounce or annoy)."""

    warnings = serializers.SerializerMethodField()

    class Meta(MessageSerializer.Meta):
        fields = [*MessageSerializer.Meta.fields, "warnings"]

    @extend_schema_field(_Warning(many=True))
    def get_warnings(self, message: Message) -> list[dict]:
        from channels_email.selectors import suppressed_among

        found = suppressed_among(tenant_id=message.tenant_id,
                                 addresses=[*message.to_addresses, *message.cc_addresses])
        return [{"code": f"suppressed_{entry.reason}", "address": address,
                 "detail": f"{address} is on the suppression list "
                           f"({entry.get_reason_display().lower()})."}
                for address, entry in found.items()]


class ReplyWriteSerializer(_Files):
    body = serializers.CharField(max_length=100_000)
    to = serializers.ListField(child=serializers.EmailField(max_length=320), required=False,
                               max_length=ADDRESSES_MAX, help_text=(
                                   "Default: the latest customer mail's Reply-To, else its "
                                   "sender, else the contact."))
    cc = serializers.ListField(child=serializers.EmailField(max_length=320), required=False,
                               max_length=ADDRESSES_MAX,
                               help_text="Default: the ticket's CC addresses.")
    set_status = serializers.ChoiceField(
        choices=[(s, TicketStatus(s).label) for s in STATUSES_AFTER_SEND], required=False,
        help_text="Send and set Pending or Solved (default: the composer's rule).")
    assign_to_me = serializers.BooleanField(required=False, default=False,
                                            help_text="Take an unassigned ticket.")


class NoteWriteSerializer(_Files):
    body = serializers.CharField(max_length=100_000)


class TicketReplyView(_OfTicket, GenericAPIView):
    """A reply to the customer, as the composer sends it: JSON, or multipart with
    ``attachments``. Answers 201 with the Pending message (poll the timeline, or take
    the webhook, for its delivery status)."""

    serializer_class = ReplySerializer
    parser_classes = [JSONParser, MultiPartParser]

    @extend_schema(request=ReplyWriteSerializer, responses={201: ReplySerializer, **_problems(
        s409="The ticket was merged, or there is no mailbox to reply from.",
        s413="The attachments are over the limits.")})
    def post(self, request, number: int):
        ticket = _ticket_or_404(request, number)
        given = ReplyWriteSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        message = ticket_reply(ticket=ticket, author=_author(request), body_text=data["body"],
                               public=True, to=data.get("to"), cc=data.get("cc"),
                               attachments=given.files(),
                               set_status=data.get("set_status", ""),
                               assign_to_me=data["assign_to_me"])
        return Response(self.get_serializer(message).data, status=status.HTTP_201_CREATED)


class TicketNoteView(_OfTicket, GenericAPIView):
    """An internal note (never emailed): JSON, or multipart with ``attachments``."""

    serializer_class = MessageSerializer
    parser_classes = [JSONParser, MultiPartParser]

    @extend_schema(request=NoteWriteSerializer, responses={201: MessageSerializer, **_problems(
        s409="The ticket was merged.", s413="The attachments are over the limits.")})
    def post(self, request, number: int):
        ticket = _ticket_or_404(request, number)
        given = NoteWriteSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        message = ticket_reply(ticket=ticket, author=_author(request),
                               body_text=given.validated_data["body"], public=False,
                               attachments=given.files())
        return Response(self.get_serializer(message).data, status=status.HTTP_201_CREATED)


class MessageRetryView(_OfTicket, GenericAPIView):
    """Send a Failed or Bounced reply again (the Retry button): it is Pending again."""

    serializer_class = MessageSerializer

    @extend_schema(request=None, responses={200: MessageSerializer, **_problems(
        s409="The message is neither Failed nor Bounced.")})
    def post(self, request, number: int, message_id: int):
        from channels_email.outbound import reply_retry

        ticket = _ticket_or_404(request, number)
        try:
            message = outbound_message_get_for(ticket=ticket, message_id=message_id)
        except Message.DoesNotExist:
            raise Http404 from None
        if not reply_retry(message=message):
            raise ApplicationError("not_retryable", f"Only a Failed or Bounced reply is sent "
                                   f"again; this one is {message.get_delivery_status_display()}.",
                                   status=409)
        message.refresh_from_db()
        return Response(self.get_serializer(message).data)


class _FileRenderer(BaseRenderer):
    """Lets a client that asks for the file (``Accept: application/octet-stream``) have
    it; the answer is the file itself, so this renders only problem documents."""

    media_type = "application/octet-stream"
    format = "bin"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return JSONRenderer().render(data)


class AttachmentDownloadView(GenericAPIView):
    """An attachment's file, with the UI's headers: always a download
    (``Content-Disposition: attachment``), ``X-Content-Type-Options: nosniff`` and a
    sandboxing ``Content-Security-Policy``."""

    renderer_classes = [JSONRenderer, _FileRenderer]

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse(
        OpenApiTypes.BINARY, description="The file.")})
    def get(self, request, number: int, attachment_id: int):
        from tickets.views import attachment_response

        ticket = _ticket_or_404(request, number)
        try:
            attachment = attachment_get_for(ticket=ticket, attachment_id=attachment_id)
        except Attachment.DoesNotExist:
            raise Http404 from None
        return attachment_response(attachment=attachment)
