"""Reads on contacts shared by the UI and the API. Each takes the tenant explicitly."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from contacts.models import Contact
from helpdesk.models import Tenant


def contact_list(*, tenant: Tenant, search: str = "") -> QuerySet[Contact]:
    qs = Contact.objects.filter(tenant=tenant).annotate(ticket_count=Count("tickets"))
    search = search.strip()
    if search:
        qs = qs.filter(Q(email__icontains=search) | Q(name__icontains=search))
    return qs.order_by("email")


def contact_get(*, tenant: Tenant, contact_id: int) -> Contact:
    """Raises Contact.DoesNotExist for an unknown id or another tenant's contact."""
    return Contact.objects.get(tenant=tenant, pk=contact_id)
