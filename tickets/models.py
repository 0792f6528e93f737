"""Tickets, their timeline messages and attachments."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from helpdesk.tenancy import TenantOwnedModel


class TicketStatus(models.TextChoices):
    NEW = "new", "New"
    OPEN = "open", "Open"
    PENDING = "pending", "Pending"
    SOLVED = "solved", "Solved"
    CLOSED = "closed", "Closed"


class TicketPriority(models.TextChoices):
    LOW = "low", "Low"
    NORMAL = "normal", "Normal"
    HIGH = "high", "High"
    URGENT = "urgent", "Urgent"


class SourceChannel(models.TextChoices):
    EMAIL = "email", "Email"
    WEB = "web", "Web"
    API = "api", "API"
    MANUAL = "manual", "Manual"


class TicketSequence(models.Model):
    """The last ticket number handed out in a tenant.

    ``tickets.services.next_ticket_number`` bumps it with one upsert inside the ticket's
    own transaction: the row lock serialises concurrent creators in the tenant until they
    commit, so numbers are unique, increasing, and gap-free unless a transaction rolls back
    after taking one (then the next creator reuses it).
    """

    tenant = models.OneToOneField("helpdesk.Tenant", on_delete=models.CASCADE, primary_key=True,
                                  related_name="+")
    last_number = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"tenant {self.tenant_id}: last #{self.last_number}"


class TicketNumberField(models.PositiveBigIntegerField):
    """Read back with RETURNING on INSERT, so that a number the database assigns (see
    ``tickets.services.ticket_create``) reaches the instance without another query."""

    db_returning = True


class Ticket(TenantOwnedModel):
    number = TicketNumberField()
    title = models.CharField(max_length=998)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=TicketStatus.choices,
                              default=TicketStatus.NEW)
    priority = models.CharField(max_length=10, choices=TicketPriority.choices,
                                default=TicketPriority.NORMAL)
    contact = models.ForeignKey("contacts.Contact", on_delete=models.PROTECT,
                                related_name="tickets")
    cc_addresses = ArrayField(models.EmailField(max_length=320), default=list, blank=True)
    team = models.ForeignKey("routing.Team", on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="tickets")
    assignee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                 blank=True, related_name="assigned_tickets")
    tags = ArrayField(models.CharField(max_length=50), default=list, blank=True)
    source_channel = models.CharField(max_length=10, choices=SourceChannel.choices,
                                      default=SourceChannel.MANUAL)
    email_connection = models.ForeignKey("channels_email.EmailConnection",
                                         on_delete=models.SET_NULL, null=True, blank=True,
                                         related_name="tickets")
    merged_into = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="merged_tickets")
    # How the ticket was routed when it was created: mode, flow, rules fired and why
    # (written by routing.engine, shown in the ticket view).
    routing = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "number"],
                                    name="ticket_tenant_number_unique"),
        ]
        indexes = [
            # The agents' queues: status / team filters, most recently updated first.
            models.Index(fields=["tenant", "status", "team", "-updated_at"], name="ticket_queue"),
            models.Index(fields=["tenant", "assignee", "status", "-updated_at"],
                         name="ticket_assignee"),
            models.Index(fields=["tenant", "-updated_at"], name="ticket_recent"),
            models.Index(fields=["tenant", "contact", "-created_at"], name="ticket_contact"),
        ]

    def __str__(self) -> str:
        return f"#{self.number} {self.title}"

    @property
    def is_open(self) -> bool:
        return self.status not in (TicketStatus.SOLVED, TicketStatus.CLOSED)

    @property
    def token(self) -> str:
        """The subject token that threads mail to this ticket (see channels_email.ingest)."""
        return f"[#{self.number}]"


class MessageKind(models.TextChoices):
    INBOUND = "inbound", "Inbound"
    OUTBOUND = "outbound", "Outbound"
    NOTE = "note", "Internal note"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"
    BOUNCED = "bounced", "Bounced"


BOUNCE_WATCH = timedelta(minutes=15)  # a delivered badge keeps watching for a bounce


class Message(TenantOwnedModel):
    """One entry of a ticket's timeline. Delivery fields apply to outbound messages only."""

    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="messages")
    kind = models.CharField(max_length=10, choices=MessageKind.choices)
    author_contact = models.ForeignKey("contacts.Contact", on_delete=models.SET_NULL, null=True,
                                       blank=True, related_name="messages")
    author_user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                    null=True, blank=True, related_name="messages")
    subject = models.CharField(max_length=998, blank=True)
    body_text = models.TextField(blank=True)
    body_html = models.TextField(blank=True, help_text="Sanitised HTML")
    created_at = models.DateTimeField(auto_now_add=True)
    delivery_status = models.CharField(max_length=10, choices=DeliveryStatus.choices,
                                       blank=True)
    delivery_error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)  # in the current round of sending
    # When an agent last pressed Retry: the current round's 24 hours count from here.
    retried_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # Outbound email: our Message-ID (and the one the provider stored, when it differs),
    # the provider's id once accepted, the recipients and the connection that sends it.
    message_id_header = models.CharField(max_length=998, blank=True)
    provider_message_id = models.CharField(max_length=255, blank=True)
    to_addresses = ArrayField(models.EmailField(max_length=320), default=list, blank=True)
    cc_addresses = ArrayField(models.EmailField(max_length=320), default=list, blank=True)
    email_connection = models.ForeignKey("channels_email.EmailConnection",
                                         on_delete=models.SET_NULL, null=True, blank=True,
                                         related_name="+")
    # An email we sent without a person writing it (an acknowledgement): marked
    # "Auto-Submitted: auto-replied" (RFC 3834) so that auto-responders stay quiet.
    auto_submitted = models.BooleanField(default=False)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["tenant", "ticket", "created_at"], name="message_timeline"),
            # The redrive sweep over every tenant: only the few messages still Pending.
            models.Index(fields=["created_at"], condition=models.Q(delivery_status="pending"),
                         name="message_pending_send"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind="outbound") | models.Q(delivery_status=""),
                name="message_delivery_only_outbound",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} on ticket {self.ticket_id}"

    @property
    def delivery_poll_seconds(self) -> int:
        """How often the ticket view re-reads this message's delivery badge: every 2 s
        while Pending, every 30 s in the first 15 minutes after delivery (when most
        bounces come back), otherwise never (0)."""
        if self.delivery_status == DeliveryStatus.PENDING:
            return 2
        if (self.delivery_status == DeliveryStatus.DELIVERED and self.delivered_at
                and timezone.now() - self.delivered_at < BOUNCE_WATCH):
            return 30
        return 0

    @property
    def author_name(self) -> str:
        if self.author_user_id:
            return self.author_user.display_name
        if self.author_contact_id:
            return self.author_contact.display_name
        return "System"


# The only attachment types ever shown inline (the ticket view's cid: images and the
# download view's ?inline=1): raster images, which cannot carry script.
RASTER_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def attachment_path(instance: Attachment, filename: str) -> str:
    # A random folder per file: names stay readable and never collide or traverse.
    return f"attachments/{instance.tenant_id}/{uuid.uuid4().hex}/{filename[-150:]}"


class Attachment(TenantOwnedModel):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachments")
    file = models.FileField(upload_to=attachment_path, max_length=300)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_id = models.CharField(max_length=255, blank=True)
    inline = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "message"], name="attachment_message")]

    def __str__(self) -> str:
        return self.filename


class ReplySubmission(TenantOwnedModel):
    """A composer form that was sent: its one-time token, taken in the same transaction as
    the reply or note it made (``tickets.services.ticket_reply``). The unique constraint
    refuses a second POST of the same form (a double click, a resubmitted page), and a
    reply that fails rolls the token back, so the form can be sent again."""

    token = models.UUIDField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="+")
    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "token"], name="reply_submission_unique"),
        ]

    def __str__(self) -> str:
        return f"form {self.token} on ticket {self.ticket_id}"


class NotificationKind(models.TextChoices):
    TEAM_TICKET = "team_ticket", "New ticket in your team"
    TEAM_TRANSFER = "team_transfer", "Moved to your team"
    ASSIGNED = "assigned", "Assigned to you"
    CUSTOMER_REPLY = "customer_reply", "Customer replied"


class Notification(TenantOwnedModel):
    """An in-app notice for one agent about one ticket; unread while ``read_at`` is empty."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="notifications")
    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=20, choices=NotificationKind.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["tenant", "user", "-created_at"], name="notification_user"),
            models.Index(fields=["tenant", "user"], condition=models.Q(read_at__isnull=True),
                         name="notification_unread"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} on ticket {self.ticket_id} for user {self.user_id}"
