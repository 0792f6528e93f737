"""Core models: users, tenants, memberships, invitations and the audit trail."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from helpdesk.crypto import EncryptedJSONField
from helpdesk.tenancy import TenantOwnedModel


class EmailUserManager(UserManager):
    """Users log in with their e-mail address; there is no separate username."""

    use_in_migrations = True

    def _create_user(self, email, password, **extra_fields):
        if not email:
            raise ValueError("An e-mail address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def get_by_natural_key(self, username):
        # Addresses are stored lower-cased; people type them any way they like.
        return self.get(email__iexact=(username or "").strip())

    def create_user(self, email, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email, password=None, **extra_fields):
        extra_fields["is_staff"] = True
        extra_fields["is_superuser"] = True
        return self._create_user(email, password, **extra_fields)


class User(AbstractUser):
    username = None
    email = models.EmailField("e-mail address", unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = EmailUserManager()

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_ci_unique")]

    def __str__(self) -> str:
        return self.get_full_name() or self.email

    @property
    def display_name(self) -> str:
        return self.get_full_name() or self.email.split("@", 1)[0]


def validate_tenant_slug(value: str) -> None:
    if value.lower() in settings.TENANT_RESERVED_SLUGS:
        raise ValidationError(f"“{value}” is reserved; choose another address.")


class Tenant(models.Model):
    """A company using the helpdesk. Its slug is the first segment of every UI URL."""

    slug = models.SlugField(max_length=50, unique=True, validators=[validate_tenant_slug])
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    # Ticket settings (edited by the workspace's admins; read by tickets.services).
    # Off: replying on an unassigned ticket offers "assign to me"; on: it assigns the agent.
    auto_assign_on_reply = models.BooleanField(default=False)
    # Outbound subjects carry "[#123]", so a reply that lost its threading headers still
    # finds its ticket (ingest honours the token for the ticket's participants only).
    subject_ticket_token = models.BooleanField(default=True)
    # The event types some active webhook endpoint of the tenant wants, kept by
    # helpdesk.webhooks_out with every endpoint change: services emitting an event check
    # the scope's tenant here first, so a workspace without webhooks pays no query.
    webhook_events = ArrayField(models.CharField(max_length=64), default=list, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.slug = (self.slug or "").lower()


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    AGENT = "agent", "Agent"


class Membership(TenantOwnedModel):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.AGENT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant_id} ({self.role})"

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Invitation(TenantOwnedModel):
    """An e-mailed link that lets someone set a password and join a tenant.

    Only the sha256 of the token is stored; the link carries the token itself.
    """

    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.AGENT)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "email"], name="invitation_tenant_email")]

    def __str__(self) -> str:
        return f"Invitation for {self.email}"

    @property
    def is_usable(self) -> bool:
        return self.accepted_at is None and self.expires_at > timezone.now()


class AuditEvent(TenantOwnedModel):
    """Who did what to which object; written by services, never edited."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                              blank=True, related_name="+")
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-at"], name="audit_tenant_at")]
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id}"


class ApiScope(models.TextChoices):
    """What an API key may do: read everything an agent can see; also write what an agent
    can change; also the admin-only endpoints (routing, filters, webhooks)."""

    READ = "read", "Read only"
    WRITE = "write", "Read and write"
    ADMIN = "admin", "Read, write and admin"


class ApiKey(TenantOwnedModel):
    """A workspace's key for the REST API (``Authorization: Bearer hd_<prefix>_<secret>``).

    Only the sha256 of the whole key is stored; the prefix is kept in clear so admins can
    tell keys apart and so a request finds its row with one indexed lookup. A key acts as
    a member of its workspace with the agent role (``admin`` scope: the admin role)."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scope = models.CharField(max_length=10, choices=ApiScope.choices, default=ApiScope.READ)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"], name="apikey_tenant_created")]

    def __str__(self) -> str:
        return f"API key {self.name} (hd_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def can_write(self) -> bool:
        return self.scope in (ApiScope.WRITE, ApiScope.ADMIN)

    @property
    def is_admin(self) -> bool:
        return self.scope == ApiScope.ADMIN


class IdempotencyRecord(TenantOwnedModel):
    """The first answer to a POST sent with ``Idempotency-Key``, replayed for 24 hours to
    a request with the same key and body (``helpdesk.api``). Written in the same
    transaction as the request's own changes, so a request that failed leaves none."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField(null=True)
    content_type = models.CharField(max_length=100, blank=True)
    body = models.BinaryField(default=b"")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "api_key", "key"],
                                               name="idempotency_key_unique")]
        indexes = [models.Index(fields=["tenant", "created_at"], name="idempotency_created")]

    def __str__(self) -> str:
        return f"Idempotency-Key {self.key}"


# ------------------------------------------------------------------ outgoing webhooks


class WebhookEventType(models.TextChoices):
    """What an integration can subscribe to (``helpdesk.webhooks_out``)."""

    TICKET_CREATED = "ticket.created", "Ticket created"
    TICKET_UPDATED = "ticket.updated", "Ticket updated"
    MESSAGE_CREATED = "message.created", "Message created"
    MESSAGE_DELIVERY_STATUS_CHANGED = ("message.delivery_status_changed",
                                       "Message delivery status changed")
    CONNECTION_STATUS_CHANGED = "connection.status_changed", "Connection status changed"


class WebhookEndpoint(TenantOwnedModel):
    """A URL of an integration that receives the workspace's events it subscribed to,
    signed with its secret (Standard Webhooks). ``secrets`` (encrypted at rest) holds
    ``{"secret": "whsec_...", "expires_at": ISO time or None}`` entries, the current one
    first; a rotated-out secret keeps signing alongside until its ``expires_at``."""

    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    events = ArrayField(models.CharField(max_length=64, choices=WebhookEventType.choices),
                        default=list)
    secrets = EncryptedJSONField(default=list)
    is_active = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "is_active"], name="webhook_ep_tenant_active")]

    def __str__(self) -> str:
        return f"Webhook endpoint {self.pk} ({self.url})"


class WebhookEventState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookEvent(TenantOwnedModel):
    """The outbox: one event for one endpoint, written in the transaction of the change it
    reports. ``webhook_id`` is its ``webhook-id`` header, the same on every attempt, so
    receivers can drop a repeat. ``payload`` is the JSON body, sent as stored."""

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE,
                                 related_name="outbox")
    webhook_id = models.CharField(max_length=64, unique=True)
    type = models.CharField(max_length=64)
    payload = models.JSONField()
    state = models.CharField(max_length=10, choices=WebhookEventState.choices,
                             default=WebhookEventState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "endpoint", "-created_at"], name="webhook_ev_endpoint"),
            models.Index(fields=["next_attempt_at"], name="webhook_ev_due",
                         condition=models.Q(state="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.webhook_id}"


class WebhookAttempt(TenantOwnedModel):
    """One try at delivering an event: when, the HTTP status (None when no answer came)
    and, for a failure, why."""

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="tries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="+")
    attempted_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["tenant", "endpoint", "-attempted_at"],
                                name="webhook_try_endpoint")]

    def __str__(self) -> str:
        return f"Attempt {self.pk} of {self.event_id}: {self.status_code or self.error}"
