"""Email channel models: connections (mailboxes), inbound emails, thread references."""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from channels_email import providers
from helpdesk.crypto import EncryptedJSONField
from helpdesk.tenancy import TenantOwnedModel


class ConnectionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DISCONNECTED = "disconnected", "Disconnected"
    TOKEN_EXPIRED = "token_expired", "Token Expired"
    RATE_LIMITED = "rate_limited", "Rate Limited"


class RoutingMode(models.TextChoices):
    NONE = "none", "No routing (unassigned queue)"
    TEAM = "team", "Team"
    FLOW = "flow", "Flow"


class AllowedEmails(models.TextChoices):
    BOTH = "both", "New threads and replies"
    NEW_THREADS = "new_threads", "New threads only"
    REPLIES = "replies", "Replies only"


class AllowedSenders(models.TextChoices):
    ANYONE = "anyone", "Anyone"
    KNOWN_CONTACTS = "known_contacts", "Known contacts only"


class BodyPreference(models.TextChoices):
    HTML = "html", "HTML"
    TEXT = "text", "Plain text"


DEFAULT_ACKNOWLEDGEMENT = (
    "Hello {name},\n\n"
    "Thank you for writing to us. Your request has been received and is being reviewed "
    "by our support staff. Its reference is ticket #{number}: \"{subject}\".\n\n"
    "To add anything, reply to this email.\n"
)


ACKNOWLEDGEMENT_PLACEHOLDERS = ("name", "number", "subject")


FAILING_AFTER = 5  # consecutive errors before the health page flags a mailbox as failing


class EmailConnection(TenantOwnedModel):
    """One connected mailbox and its settings, health and sync state.

    A provider mailbox (provider + address) is connected in at most one tenant at a time
    (a partial unique constraint over the not-disconnected rows): a push names only the
    mailbox, and stop/revoke act on the whole account.
    """

    # The provider's registry name (channels_email.providers): checked against the
    # registry, not a choices list, so that adding a provider needs no migration.
    provider = models.CharField(max_length=20)
    address = models.EmailField(max_length=320)
    display_name = models.CharField(max_length=200, blank=True)
    # Where a forwarding mailbox's mail reaches us: the address we generated on
    # INBOUND_EMAIL_DOMAIN that the admin forwards ``address`` to (lower case; unique over
    # every tenant, the inbound SMTP server resolves its RCPT TO by it). "" otherwise.
    inbound_address = models.CharField(max_length=320, blank=True, default="")
    status = models.CharField(max_length=20, choices=ConnectionStatus.choices,
                              default=ConnectionStatus.ACTIVE)
    credentials = EncryptedJSONField(null=True, blank=True)
    cursor = models.TextField(blank=True, help_text="The provider's opaque sync cursor")
    subscription_id = models.CharField(max_length=255, blank=True)
    subscription_expires_at = models.DateTimeField(null=True, blank=True)
    # The subscription's own secret its notifications carry (WatchState.secret), if any.
    subscription_secret = EncryptedJSONField(null=True, blank=True)

    routing_mode = models.CharField(max_length=10, choices=RoutingMode.choices,
                                    default=RoutingMode.NONE)
    routing_team = models.ForeignKey("routing.Team", on_delete=models.SET_NULL, null=True,
                                     blank=True, related_name="+")
    routing_flow = models.ForeignKey("routing.Flow", on_delete=models.SET_NULL, null=True,
                                     blank=True, related_name="+")

    # Filters and settings (each skip is recorded on the InboundEmail with its reason).
    alias_addresses = ArrayField(models.EmailField(max_length=320), default=list, blank=True)
    skip_auto_replies = models.BooleanField(default=True)
    block_list = ArrayField(
        models.CharField(max_length=300), default=list, blank=True,
        help_text="Sender or subject patterns: exact text, a wildcard like *@spam.example, "
                  "or a regular expression between slashes like /^win a prize/",
    )
    allowed_sender_domains = ArrayField(models.CharField(max_length=253), default=list,
                                        blank=True, help_text="Empty: every domain")
    allowed_emails = models.CharField(max_length=12, choices=AllowedEmails.choices,
                                      default=AllowedEmails.BOTH)
    allowed_senders = models.CharField(max_length=15, choices=AllowedSenders.choices,
                                       default=AllowedSenders.ANYONE)
    import_cc = models.BooleanField(default=True)
    body_preference = models.CharField(max_length=4, choices=BodyPreference.choices,
                                       default=BodyPreference.HTML)
    sender_rate_limit = models.PositiveIntegerField(
        default=20, help_text="Mails from one sender per window before they count as a loop")
    sender_rate_window_minutes = models.PositiveIntegerField(default=10)

    # Outbound: the mailbox replies to tickets from this one are sent through (empty:
    # this one), whether this is the tenant's default mailbox for system emails and for
    # tickets that did not come in by email, and the optional acknowledgement.
    reply_connection = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="Send replies to tickets from this mailbox through another one")
    is_default = models.BooleanField(
        default=False, help_text="The workspace's mailbox for system emails")
    send_acknowledgement = models.BooleanField(
        default=False, help_text="Confirm each new ticket to the customer by email")
    acknowledgement_text = models.TextField(blank=True, default=DEFAULT_ACKNOWLEDGEMENT)

    sync_start_at = models.DateTimeField(default=timezone.now)
    last_sync_at = models.DateTimeField(null=True, blank=True)
    consecutive_errors = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    rate_limited_until = models.DateTimeField(null=True, blank=True)
    # Push health: when a push last led to a sync, and when the reconciliation sweep last
    # found mail that no push had announced (pushes gone quiet while mail still arrives).
    last_push_at = models.DateTimeField(null=True, blank=True)
    missed_push_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "address"],
                condition=~models.Q(status="disconnected"),
                name="connection_mailbox_in_one_tenant",
            ),
            models.UniqueConstraint(fields=["tenant"], condition=models.Q(is_default=True),
                                    name="connection_one_default_per_tenant"),
            models.UniqueConstraint(fields=["inbound_address"],
                                    condition=~models.Q(inbound_address=""),
                                    name="connection_inbound_address_unique"),
        ]
        indexes = [
            models.Index(fields=["tenant", "status"], name="connection_tenant_status"),
            # The webhook finds a notification's connection by its subscription id.
            models.Index(fields=["provider", "subscription_id"], name="connection_subscription",
                         condition=~models.Q(subscription_id="")),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.provider_label})"

    def save(self, *args, **kwargs):
        self.address = (self.address or "").strip().lower()
        self.inbound_address = (self.inbound_address or "").strip().lower()
        self.alias_addresses = [a.strip().lower() for a in self.alias_addresses if a.strip()]
        super().save(*args, **kwargs)

    def clean_fields(self, exclude=None):
        super().clean_fields(exclude=exclude)
        if "provider" not in (exclude or ()) and not providers.is_enabled(self.provider):
            raise ValidationError({"provider": f"No provider {self.provider!r} is enabled."})

    @property
    def provider_label(self) -> str:
        return providers.label(self.provider)

    @property
    def can_push(self) -> bool:
        """The provider keeps a watch/subscription for it (shown as "Watch expires")."""
        return providers.can(self.provider, providers.Capability.PUSH)

    @property
    def can_sign_in(self) -> bool:
        """Connected by signing in, with OAuth or a password (Reconnect and Disconnect
        apply)."""
        return providers.can(self.provider, providers.Capability.OAUTH_SIGN_IN) or \
            providers.can(self.provider, providers.Capability.PASSWORD_SIGN_IN)

    @property
    def receives_forwarded(self) -> bool:
        """Mail is forwarded to its generated address, and the mailbox only receives: its
        replies go out through another one (Disconnect applies: the inbound SMTP server
        then refuses that address)."""
        return providers.can(self.provider, providers.Capability.FORWARDED)

    @property
    def status_label(self) -> str:
        """The status as its provider words it ("Sign-in failed" for a password)."""
        return providers.status_label(self.provider, self.status, self.get_status_display())

    @property
    def watch_expired(self) -> bool:
        expires = self.subscription_expires_at
        return (self.can_push and self.status != ConnectionStatus.DISCONNECTED
                and expires is not None and expires < timezone.now())

    @property
    def pushes_missing(self) -> bool:
        return self.missed_push_at is not None and (
            self.last_push_at is None or self.missed_push_at > self.last_push_at)

    @property
    def failing(self) -> bool:
        """Errors keep coming (FAILING_AFTER in a row) while the status says nothing worse:
        provider outages or bugs the backoff rides out, but that an admin should see."""
        return (self.status in (ConnectionStatus.ACTIVE, ConnectionStatus.RATE_LIMITED)
                and self.consecutive_errors >= FAILING_AFTER)

    @property
    def own_addresses(self) -> set[str]:
        return {self.address, *self.alias_addresses} | (
            {self.inbound_address} if self.inbound_address else set())


class InboundState(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSED = "processed", "Processed"
    SKIPPED = "skipped", "Skipped"
    FAILED = "failed", "Failed"
    QUARANTINED = "quarantined", "Quarantined"


def inbound_raw_path(instance: InboundEmail, filename: str) -> str:
    now = timezone.now()
    return f"inbound/{instance.tenant_id}/{now:%Y/%m/%d}/{uuid.uuid4().hex}.eml"


class InboundEmail(TenantOwnedModel):
    """The durable record of one email that reached a connection.

    Unique per (connection, provider_message_id): the idempotency key of every sync and
    ingest. The raw bytes are stored before anything else; parsing can be re-run.
    Nothing that reached us is dropped without a row saying why (state + reason).
    """

    # Indexed by the (connection, provider_message_id) unique constraint.
    connection = models.ForeignKey(EmailConnection, on_delete=models.CASCADE,
                                   related_name="inbound_emails", db_index=False)
    provider_message_id = models.CharField(max_length=255)
    provider_thread_id = models.CharField(max_length=255, blank=True)
    message_id_header = models.CharField(max_length=998, blank=True)
    raw = models.FileField(upload_to=inbound_raw_path, max_length=300, blank=True)
    raw_size = models.PositiveBigIntegerField(default=0)
    state = models.CharField(max_length=12, choices=InboundState.choices,
                             default=InboundState.RECEIVED)
    reason = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    from_address = models.CharField(max_length=320, blank=True)
    ticket = models.ForeignKey("tickets.Ticket", on_delete=models.SET_NULL, null=True,
                               blank=True, related_name="inbound_emails")
    message = models.ForeignKey("tickets.Message", on_delete=models.SET_NULL, null=True,
                                blank=True, related_name="inbound_emails")
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "provider_message_id"],
                                    name="inbound_connection_provider_id_unique"),
        ]
        indexes = [
            models.Index(fields=["tenant", "state", "-received_at"], name="inbound_state"),
            # The redrive sweep over every tenant: rows still waiting for their task.
            models.Index(fields=["received_at"], name="inbound_waiting",
                         condition=models.Q(state="received")),
            models.Index(fields=["connection", "provider_thread_id"], name="inbound_thread",
                         condition=~models.Q(provider_thread_id="")),
        ]

    def __str__(self) -> str:
        return f"inbound {self.pk} ({self.state})"


class EmailThreadRef(TenantOwnedModel):
    """A Message-ID we saw, were referenced by, or sent, and the ticket it belongs to.

    ``message`` is set when the id is the Message-ID of a timeline message (ours or the
    customer's); it is empty for ids we only know from References / In-Reply-To, which
    lets a reply that arrives before its parent still land in the same ticket.
    """

    message_id_header = models.CharField(max_length=998)
    ticket = models.ForeignKey("tickets.Ticket", on_delete=models.CASCADE,
                               related_name="thread_refs")
    message = models.ForeignKey("tickets.Message", on_delete=models.CASCADE, null=True,
                                blank=True, related_name="thread_refs")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # The Message-ID leads: a lookup by ids (``ingest._find_thread``) can then only
            # go through them, never along every reference of the workspace (which a
            # prepared statement's generic plan chose when it guessed a small workspace).
            models.UniqueConstraint(fields=["message_id_header", "tenant"],
                                    name="thread_ref_message_id_tenant_unique"),
        ]
        # No index led by the tenant (the rule of tests/helpdesk/test_tenancy.py), on
        # purpose: any such index is a way for a plan to read the whole workspace instead
        # of a few ids. A workspace's deletion reaches these rows through its tickets
        # (ticket_id is indexed).

    def __str__(self) -> str:
        return self.message_id_header


class SuppressionReason(models.TextChoices):
    HARD_BOUNCE = "hard_bounce", "Hard bounce"
    COMPLAINT = "complaint", "Spam complaint"
    MANUAL = "manual", "Added by an admin"


class SuppressedAddress(TenantOwnedModel):
    """An address automatic emails (acknowledgements) are never sent to, and that the reply
    composer warns about: added by a hard bounce, a spam complaint or an admin. ``email``
    is lower case (a constraint keeps it so)."""

    email = models.EmailField(max_length=320)
    reason = models.CharField(max_length=12, choices=SuppressionReason.choices)
    details = models.TextField(blank=True, help_text="Status code and diagnostic")
    inbound_email = models.ForeignKey(InboundEmail, on_delete=models.SET_NULL, null=True,
                                      blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "email"],
                                    name="suppressed_address_tenant_email_unique"),
            models.CheckConstraint(condition=models.Q(email=Lower("email")),
                                   name="suppressed_address_email_lower_case"),
        ]

    def __str__(self) -> str:
        return f"{self.email} ({self.reason})"
