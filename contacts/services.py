"""Writes on contacts."""

from __future__ import annotations

from contacts.models import Contact, ContactSource, normalize_email
from helpdesk import sql
from helpdesk.models import Tenant


def contact_get_or_create(
    *, tenant: Tenant, email: str, name: str = "", source: str = ContactSource.MANUAL
) -> tuple[Contact, bool]:
    """Match a contact by address (case-insensitive) within ``tenant`` or create it.

    A missing name is filled from ``name`` when one is given later. One upsert on the
    (tenant, email) unique constraint, so concurrent callers cannot make two contacts.
    Returns (contact, created).
    """
    address = normalize_email(email)
    name = (name or "").strip()[:200]
    table = Contact._meta.db_table  # our model's table name, never input
    query = (
        f"INSERT INTO {table} AS c (tenant_id, email, name, source, created_at, updated_at) "  # noqa: S608
        "VALUES (%s, %s, %s, %s, now(), now()) "
        "ON CONFLICT (tenant_id, email) DO UPDATE SET "
        "  name = CASE WHEN c.name = '' THEN EXCLUDED.name ELSE c.name END, "
        "  updated_at = CASE WHEN c.name = '' AND EXCLUDED.name <> '' THEN now() "
        "               ELSE c.updated_at END "
        f"RETURNING {sql.columns(Contact, 'c')}, (xmax = 0)"
    )
    contact, (created,) = sql.fetch_one(Contact, query, [tenant.pk, address, name, source])
    return contact, bool(created)
