"""Writes on connections and inbound emails that are not the ingest pipeline itself."""

from __future__ import annotations

import os

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db import connection as db_connection

from channels_email.models import (
    ConnectionStatus,
    EmailConnection,
    InboundEmail,
    InboundState,
    SuppressedAddress,
    SuppressionReason,
    inbound_raw_path,
)
from channels_email.providers import manual
from helpdesk import sql
from helpdesk.errors import ApplicationError
from helpdesk.models import Tenant, User
from helpdesk.services import audit_record


def connection_create_manual(*, tenant: Tenant, address: str, display_name: str = "",
                             **settings) -> EmailConnection:
    """A connection of the manual kind: no provider calls; mail arrives as files."""
    return EmailConnection.objects.create(
        tenant=tenant, provider=manual.NAME, address=address, display_name=display_name,
        status=ConnectionStatus.ACTIVE, **settings,
    )


def connection_create_forwarding(*, tenant: Tenant, actor: User | None, provider: str,
                                 address: str, display_name: str = "") -> EmailConnection:
    """A forwarding mailbox for the support ``address``: Active, with a newly generated
    address on the inbound domain (``inbound_address``; a clash with an existing one, which
    the unique constraint catches, draws again). Its support address is its own address,
    so the loop filter knows it from now on (``selectors.tenant_addresses``). Audited.
    ApplicationError ``not_offered`` when no enabled provider receives forwarded mail under
    that name or it is not configured, ``already_connected`` when the address is forwarded
    to a live mailbox already (in this or another workspace)."""
    from channels_email import providers

    if not providers.can(provider, providers.Capability.FORWARDED) or \
            not providers.get(provider).is_configured():
        raise ApplicationError("not_offered", "Forwarding is not offered on this server.")
    client = providers.get(provider)
    address = address.strip().lower()
    for _ in range(5):
        try:
            with transaction.atomic():
                conn = EmailConnection.objects.create(
                    tenant=tenant, provider=provider, address=address,
                    display_name=display_name.strip(), status=ConnectionStatus.ACTIVE,
                    inbound_address=client.generate_address(address))
                audit_record(tenant=tenant, actor=actor, action="email_connection.connected",
                             target=conn, details={"provider": provider, "address": address,
                                                   "inbound_address": conn.inbound_address})
            return conn
        except IntegrityError as exc:
            if "connection_inbound_address_unique" not in str(exc):
                raise ApplicationError(
                    "already_connected", f"{address} is forwarded to a mailbox already, in "
                    "this or another workspace. Disconnect it there first.",
                    field="address") from exc
    raise ApplicationError("address_exhausted", "Could not generate a new address; try again.")


def raw_store(row: InboundEmail, raw: bytes) -> None:
    """Write ``raw`` as ``row``'s raw MIME file (named by ``models.inbound_raw_path``, a
    fresh random name) and set ``row.raw`` / ``row.raw_size``; the caller then writes the
    row. On local disk this is one exclusive create and one write, as Django's
    FileSystemStorage does them (same permissions, no fsync either), without the name
    checks around them that cost more than the write (about 0.7 ms of every email): the
    name is new, and the exclusive create refuses to overwrite a file all the same."""
    storage = row.raw.storage
    if not isinstance(storage, FileSystemStorage):
        row.raw.save("raw.eml", ContentFile(raw), save=False)
        row.raw_size = len(raw)
        return
    name = inbound_raw_path(row, "raw.eml")
    path = storage.path(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:  # the day's first mail (or a cleanup took the folder)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o666)
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
    if storage.file_permissions_mode is not None:
        os.chmod(path, storage.file_permissions_mode)
    row.raw = name
    row.raw_size = len(raw)


def inbound_email_receive(
    *, connection: EmailConnection, provider_message_id: str, raw: bytes | None = None,
    provider_thread_id: str = "", wait_for_flush: bool = False, details: dict | None = None,
) -> tuple[InboundEmail, bool]:
    """Record that a message reached ``connection``, storing its raw bytes first.

    Idempotent on (connection, provider_message_id): a second call returns the existing
    row and ``False``. ``raw`` may be None when the provider is to be asked later (the
    ingest step fetches it). Returns (row, created).

    Outside a transaction the row's commit does not wait for the WAL flush
    (``sql.NO_FLUSH_WAIT``): the worker dying after this returns cannot lose the row
    (PostgreSQL has it), and the ingest's commit, which does wait, flushes it first, so
    no outcome of this mail (ticket, skip, quarantine) is ever durable without its row
    and raw bytes. Only a PostgreSQL crash in the moment before that flush (at most
    3 x wal_writer_delay) can lose the row, as if the mail had not been received yet:
    harmless where the source keeps the message (a provider's mailbox, a file on disk).
    A caller that tells the sender the mail is safe once this returns (an SMTP server's
    250, after which the sender forgets it) passes ``wait_for_flush=True``.
    """
    row = InboundEmail(
        tenant_id=connection.tenant_id, connection=connection,
        provider_message_id=provider_message_id[:255],
        provider_thread_id=provider_thread_id[:255], details=details or {},
    )
    if raw is not None:
        # Stored before the row is inserted: a row never points at bytes that are missing.
        raw_store(row, raw)
    try:
        # The insert is the existence check: one autocommitted statement on the usual, new
        # path; inside a caller's transaction a savepoint keeps a conflict from spoiling it.
        if db_connection.in_atomic_block:
            with transaction.atomic():
                sql.insert(row)
        else:
            sql.insert(row, wait_for_flush=wait_for_flush)
        return row, True
    except IntegrityError:
        # Delivered before (or a concurrent receiver won the race): that row is the record.
        if row.raw:
            row.raw.storage.delete(row.raw.name)
        return InboundEmail.objects.get(connection=connection,
                                        provider_message_id=provider_message_id[:255]), False


def inbound_email_raw_read(*, inbound_email: InboundEmail, actor: User | None = None) -> bytes:
    """The stored raw bytes; every read is written to the audit trail (actor None: the
    command line)."""
    with inbound_email.raw.open("rb") as handle:
        data = handle.read()
    audit_record(tenant=inbound_email.tenant, actor=actor, action="inbound_email.downloaded",
                 target=inbound_email, details={"state": inbound_email.state})
    return data


def inbound_email_reset_for_reprocess(*, inbound_email: InboundEmail, actor: User | None) -> bool:
    """Put a quarantined, failed or skipped email back to received (audited).

    Returns False when the row is processed already (nothing to redo).
    """
    if inbound_email.state in (InboundState.PROCESSED, InboundState.RECEIVED):
        return inbound_email.state == InboundState.RECEIVED
    with transaction.atomic():
        updated = InboundEmail.objects.filter(pk=inbound_email.pk,
                                              state=inbound_email.state).update(
            state=InboundState.RECEIVED, reason="",
        )
        if updated:
            audit_record(tenant=inbound_email.tenant, actor=actor,
                         action="inbound_email.reprocessed", target=inbound_email,
                         details={"previous_state": inbound_email.state,
                                  "previous_reason": inbound_email.reason[:500]})
    return bool(updated)


SETTINGS_FIELDS = ("display_name", "routing_mode", "routing_team", "routing_flow",
                   "reply_connection", "is_default", "send_acknowledgement",
                   "acknowledgement_text")
# The inbound filters, edited in their own form on the same page.
FILTER_FIELDS = ("alias_addresses", "skip_auto_replies", "block_list",
                 "allowed_sender_domains", "allowed_emails", "allowed_senders", "import_cc",
                 "body_preference", "sender_rate_limit", "sender_rate_window_minutes")


def connection_settings_save(*, connection: EmailConnection, actor: User | None,
                             changed: list[str],
                             fields: tuple[str, ...] = SETTINGS_FIELDS) -> EmailConnection:
    """Save a connection's edited ``fields`` (the settings, or the FILTER_FIELDS; audited);
    only those columns are written, so health, cursor and credentials that a worker
    changed meanwhile stay. Making it the workspace's default mailbox takes that role from
    the previous one in the same transaction (a partial unique constraint allows one
    default per tenant); the tenant's mailboxes are locked first, so two admins doing it at
    once serialise instead of one hitting the constraint."""
    with transaction.atomic():
        if "is_default" in fields and connection.is_default:
            list(EmailConnection.objects.filter(tenant_id=connection.tenant_id)
                 .select_for_update().values_list("pk", flat=True))
            EmailConnection.objects.filter(tenant_id=connection.tenant_id, is_default=True) \
                .exclude(pk=connection.pk).update(is_default=False)
        connection.save(update_fields=[*fields, "updated_at"])
        if changed:
            audit_record(tenant=connection.tenant, actor=actor,
                         action="email_connection.settings_changed", target=connection,
                         details={"fields": changed})
    return connection


def suppression_add(*, tenant: Tenant, email: str, actor: User | None,
                    details: str = "") -> tuple[SuppressedAddress, bool]:
    """Put an address on the suppression list by hand (audited); (entry, created). An
    address already on it keeps its first entry (and reason). ApplicationError
    ``email_invalid`` for anything that is not an address."""
    address = email.strip().lower()
    try:
        validate_email(address)
    except ValidationError:
        raise ApplicationError("email_invalid", f"{email.strip() or 'An empty value'} is not "
                               "an email address.", field="email") from None
    with transaction.atomic():
        entry, created = SuppressedAddress.objects.get_or_create(
            tenant=tenant, email=address,
            defaults={"reason": SuppressionReason.MANUAL, "details": details[:2000]})
        if created:
            audit_record(tenant=tenant, actor=actor, action="suppression.added", target=None,
                         details={"email": address})
    return entry, created


def suppression_remove(*, tenant: Tenant, suppression_id: int, actor: User | None) -> bool:
    """Take an address off the suppression list (audited); False when it is not on it."""
    with transaction.atomic():
        entry = SuppressedAddress.objects.filter(tenant=tenant, pk=suppression_id).first()
        if entry is None:
            return False
        entry.delete()
        audit_record(tenant=tenant, actor=actor, action="suppression.removed", target=None,
                     details={"email": entry.email, "reason": entry.reason})
    return True


def connection_credentials_rotate() -> int:
    """Re-encrypt every stored mailbox credential under the first key of FERNET_KEYS, in
    one transaction; returns how many rows were re-encrypted.

    Unscoped on purpose: a sweep over every tenant's connections, reading and writing the
    encrypted column as stored (raw SQL: the field would decrypt it), nothing else."""
    from helpdesk.crypto import rotate

    table = EmailConnection._meta.db_table  # our own table name, never input
    done = 0
    with transaction.atomic(), db_connection.cursor() as cursor:
        cursor.execute(f"SELECT id, credentials FROM {table} "  # noqa: S608
                       "WHERE credentials IS NOT NULL AND credentials <> '' FOR UPDATE")
        for pk, token in cursor.fetchall():
            cursor.execute(f"UPDATE {table} SET credentials = %s WHERE id = %s",  # noqa: S608
                           [rotate(token), pk])
            done += 1
    return done
