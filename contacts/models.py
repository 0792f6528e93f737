from django.db import models
from django.db.models.functions import Lower

from helpdesk.tenancy import TenantOwnedModel


class ContactSource(models.TextChoices):
    EMAIL = "email", "Email"
    WEB = "web", "Web"
    API = "api", "API"
    MANUAL = "manual", "Manual"


def normalize_email(address: str) -> str:
    """Addresses are compared case-insensitively (RFC 5321 allows case-sensitive local
    parts, but no mail provider our customers use treats them so)."""
    return (address or "").strip().lower()


class Contact(TenantOwnedModel):
    """A customer, identified by one e-mail address per tenant (stored lower-cased)."""

    email = models.EmailField(max_length=320)
    name = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=10, choices=ContactSource.choices,
                              default=ContactSource.MANUAL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["email"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "email"], name="contact_tenant_email_unique"),
            models.CheckConstraint(condition=models.Q(email=Lower("email")),
                                   name="contact_email_lowercase"),
        ]
        indexes = [models.Index(fields=["tenant", "name"], name="contact_tenant_name")]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email

    def save(self, *args, **kwargs):
        self.email = normalize_email(self.email)
        super().save(*args, **kwargs)

    @property
    def display_name(self) -> str:
        return self.name or self.email
