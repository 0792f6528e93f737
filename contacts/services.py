"""Writes on contacts."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from contacts.models import Contact, ContactSource, normalize_email
from helpdesk.models import Tenant


def contact_get_or_create(
    *, tenant: Tenant, email: str, name: str = "", source: str = ContactSource.MANUAL
) -> tuple[Contact, bool]:
    """Match a contact by address (case-insensitive) within ``tenant`` or create it.

    A missing name is filled from ``name`` when one is given later. Safe under concurrent
    callers: the (tenant, email) unique constraint decides, and the loser re-reads.
    Returns (contact, created).
    """
    address = normalize_email(email)
    name = (name or "").strip()[:200]
    contact = Contact.objects.filter(tenant=tenant, email=address).first()
    if contact is None:
        try:
            with transaction.atomic():
                return (
                    Contact.objects.create(tenant=tenant, email=address, name=name, source=source),
                    True,
                )
        except IntegrityError:
            contact = Contact.objects.get(tenant=tenant, email=address)
    if name and not contact.name:
        contact.name = name
        contact.save(update_fields=["name", "updated_at"])
    return contact, False
