"""Writes on contacts."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from contacts.models import Contact, ContactSource, normalize_email
from helpdesk import sql
from helpdesk.errors import ApplicationError
from helpdesk.models import Tenant


def contact_get_or_create(
    *, tenant: Tenant, email: str, name: str = "", source: str = ContactSource.MANUAL
) -> tuple[Contact, bool]:
    """Match a contact by address (case-insensitive) within ``tenant`` or create it.

    A missing name is filled from ``name`` when one is given later. One upsert on the
    (tenant, email) unique constraint, so concurrent callers cannot make two contacts.
    Returns (contact, created).
    """
    query, params = contact_upsert_sql(tenant_id=tenant.pk, email=email, name=name,
                                       source=source)
    return contact_upsert_run(query, params)


def contact_upsert_sql(*, tenant_id: int, email: str, name: str = "",
                       source: str = ContactSource.MANUAL,
                       before: tuple[str, list] | None = None,
                       unless: tuple[str, list] | None = None) -> tuple[str, list]:
    """The upsert of ``contact_get_or_create`` as (SQL, parameters), for a caller that
    runs it inside a statement of its own: ``before`` is a CTE ``(SQL, parameters)`` named
    ``b`` that is evaluated first (the upsert selects its row from ``b``), and ``unless``
    a condition ``(SQL, parameters)`` evaluated after it that cancels the upsert when true
    (then no row comes back). Run it with ``contact_upsert_run``."""
    address = normalize_email(email)
    name = (name or "").strip()[:200]
    table = Contact._meta.db_table  # our model's table name, never input
    values, params = "VALUES (%s, %s, %s, %s, now(), now())", [tenant_id, address, name, source]
    prefix, prefix_params = "", []
    if before is not None:
        prefix, prefix_params = f"WITH b AS ({before[0]}) ", list(before[1])
        values = "SELECT %s, %s, %s, %s, now(), now() FROM b"
        if unless is not None:
            values += f" WHERE NOT ({unless[0]})"
            params += list(unless[1])
    query = (
        f"{prefix}INSERT INTO {table} AS c "  # noqa: S608
        f"(tenant_id, email, name, source, created_at, updated_at) {values} "
        "ON CONFLICT (tenant_id, email) DO UPDATE SET "
        "  name = CASE WHEN c.name = '' THEN EXCLUDED.name ELSE c.name END, "
        "  updated_at = CASE WHEN c.name = '' AND EXCLUDED.name <> '' THEN now() "
        "               ELSE c.updated_at END "
        f"RETURNING {sql.columns(Contact, 'c')}, (xmax = 0)"
    )
    return query, [*prefix_params, *params]


def contact_upsert_run(query: str, params: list) -> tuple[Contact | None, bool]:
    """(contact, created); (None, False) when ``unless`` cancelled the upsert."""
    found = sql.fetch_one(Contact, query, params)
    if found is None:
        return None, False
    contact, (created,) = found
    return contact, bool(created)


def contact_create(*, tenant: Tenant, email: str, name: str = "",
                   source: str = ContactSource.MANUAL) -> Contact:
    """A new contact; ApplicationError ``email_taken`` (409) when the workspace has one
    with that address already (case-insensitive), ``email_invalid`` when it is none."""
    address = _checked_address(email)
    with transaction.atomic():
        contact, created = contact_get_or_create(tenant=tenant, email=address, name=name,
                                                 source=source)
        if not created:
            raise ApplicationError("email_taken", f"A contact with {address} exists already "
                                   f"(id {contact.pk}).", field="email", status=409)
    return contact


def contact_update(*, contact: Contact, email: str | None = None,
                   name: str | None = None) -> Contact:
    """Change a contact's name and/or address (the same ``email_taken`` rule)."""
    fields = []
    if name is not None:
        contact.name = name.strip()[:200]
        fields.append("name")
    if email is not None and normalize_email(email) != contact.email:
        contact.email = _checked_address(email)
        fields.append("email")
    if not fields:
        return contact
    try:
        with transaction.atomic():
            contact.save(update_fields=[*fields, "updated_at"])
    except IntegrityError:
        raise ApplicationError("email_taken", f"A contact with {contact.email} exists "
                               "already.", field="email", status=409) from None
    return contact


def _checked_address(email: str) -> str:
    address = normalize_email(email or "")
    try:
        validate_email(address)
    except ValidationError:
        raise ApplicationError("email_invalid", f"{email!r} is not an email address.",
                               field="email") from None
    return address
