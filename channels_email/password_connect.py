"""Adding and re-signing a mailbox that signs in with a password (IMAP/SMTP): the settings
are checked against the servers first ("Test connection"), and nothing is saved unless
the check passes.

Contract:
- ``account_check(provider=, credentials=)`` signs in to the provider's servers with the
  settings as entered and lists what it found; a failure raises ``ConnectError`` with the
  failure in words (DNS, refused, TLS, timeout, sign-in, folder missing). Nothing is
  written.
- ``account_save(tenant=, actor=, provider=, address=, credentials=, sync_start_at=,
  connection=None)`` runs the same check, then creates the connection (credentials
  encrypted by the model field; its first sync imports mail since ``sync_start_at``) or,
  for an existing one, stores the new settings and makes it Active again (Reconnect after
  "Sign-in failed": the catch-up sync runs from its cursor). A mailbox connected in
  another workspace is refused. Audited; the sync is queued on commit.
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction

from channels_email import health, providers
from channels_email.connect import ConnectError, ConnectResult
from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.providers.base import Capability
from channels_email.webhooks import forget_mailbox
from helpdesk.models import Tenant, User
from helpdesk.services import audit_record


def account_check(*, provider: str, credentials: dict):
    if not providers.can(provider, Capability.PASSWORD_SIGN_IN):
        raise ConnectError("That kind of mailbox is not offered on this server.")
    try:
        found = providers.get(provider).check_account(credentials)
    except providers.ProviderError as exc:
        raise ConnectError(str(exc)) from exc
    if found.missing:
        raise ConnectError("Signed in, but the server has no folder named "
                           + ", ".join(repr(f) for f in found.missing)
                           + ". Its folders: " + ", ".join(found.folders) + ".")
    return found


def account_save(*, tenant: Tenant, actor: User | None, provider: str, address: str,
                 credentials: dict, sync_start_at: datetime,
                 connection: EmailConnection | None = None) -> ConnectResult:
    account_check(provider=provider, credentials=credentials)
    address = address.strip().lower()
    client = providers.get(provider)
    try:
        with transaction.atomic():
            if connection is None:
                conn = EmailConnection.objects.create(
                    tenant=tenant, provider=provider, address=address,
                    status=ConnectionStatus.ACTIVE, credentials=credentials,
                    cursor=client.start_cursor(), sync_start_at=sync_start_at)
                created, action = True, "email_connection.connected"
            else:
                conn = connection
                if conn.address != address:
                    raise ConnectError("The address of a connected mailbox cannot change; "
                                       "add it as a new mailbox instead.")
                health.reactivate(conn, credentials=credentials)
                created, action = False, "email_connection.reconnected"
            audit_record(tenant=tenant, actor=actor, action=action, target=conn,
                         details={"provider": provider, "address": address})
            transaction.on_commit(lambda: _queue_sync(conn.pk))
    except IntegrityError as exc:
        raise ConnectError(f"{address} is already connected in this or another workspace. "
                           "Disconnect it there first.") from exc
    forget_mailbox(provider, address)
    return ConnectResult(conn, created)


def _queue_sync(connection_id: int) -> None:
    from channels_email.sync import sync_request

    sync_request(connection_id, "reconnect")
