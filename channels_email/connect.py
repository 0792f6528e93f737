"""Connecting, reconnecting and disconnecting a provider mailbox (OAuth in the browser).

Contract:
- ``oauth_start`` returns the provider's consent URL. The ``state`` it carries is signed
  and names the tenant, the user, the provider, a single-use nonce kept in the session
  (with the provider's flow: the PKCE verifier, msal's nonce...), and the connection
  being reconnected, if any. The callback
  URL is fixed (``/oauth/<provider>/callback/``), not tenant-scoped, as providers require.
- ``oauth_complete`` checks all of that (a replayed, foreign, stale or tampered state, or
  a state from another session, changes nothing), exchanges the code, reads the mailbox
  address, and creates the connection or, on reconnect, updates it (signing in with an
  address this workspace has already, connected, Token Expired or disconnected,
  re-authorizes that connection, like Reconnect); credentials are
  stored encrypted; a new connection starts from the mailbox's current cursor, read in
  the callback (mail already in the inbox is not imported; mail arriving before the watch
  runs is). Its watch (subscription) is started by a task queued on commit, never in the
  callback request: Graph validates the notification URL while the creating call waits,
  which a one-worker server could not answer. A mailbox connected in another
  tenant (or another connection of this one) is refused. Each outcome that changes
  something writes an AuditEvent.
- ``connection_disconnect`` stops the watch, revokes the grant, wipes the credentials and
  marks the connection Disconnected; its tickets and messages stay. Provider errors on
  the way do not stop the disconnect.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import Case, When
from django.urls import reverse
from django.utils import timezone

from channels_email import health, providers
from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.providers.base import Capability, SignInRefused
from channels_email.tokens import authorized
from channels_email.webhooks import forget_mailbox, forget_subscription
from helpdesk.models import Tenant, User
from helpdesk.services import audit_record
from helpdesk.tenancy import tenant_scope, unscoped

logger = logging.getLogger(__name__)

STATE_SALT = "channels_email.oauth"
STATE_MAX_AGE_SECONDS = 15 * 60
SESSION_KEY = "oauth_pending"


class ConnectError(Exception):
    """Shown to the admin as is; nothing was changed. ``help_url`` / ``help_label``: a
    link that fixes it (the tenant-wide admin consent); ``declined``: the admin said no,
    which is no error."""

    def __init__(self, message: str, *, help_url: str = "", help_label: str = "",
                 declined: bool = False):
        super().__init__(message)
        self.help_url = help_url
        self.help_label = help_label
        self.declined = declined


@dataclass
class ConnectResult:
    connection: EmailConnection
    created: bool


def callback_url(provider: str) -> str:
    return settings.PUBLIC_BASE_URL.rstrip("/") + reverse("oauth_callback",
                                                          kwargs={"provider": provider})


def oauth_start(*, request, tenant: Tenant, provider: str,
                reconnect: EmailConnection | None = None) -> str:
    """The provider's sign-in URL; ConnectError when the provider cannot be reached."""
    nonce = secrets.token_urlsafe(24)
    state = signing.dumps({"t": tenant.slug, "u": request.user.pk, "p": provider, "n": nonce,
                           "r": reconnect.pk if reconnect else None}, salt=STATE_SALT)
    client = providers.get(provider)
    try:
        url, flow = client.begin_sign_in(state=state, redirect_uri=callback_url(provider),
                                         login_hint=reconnect.address if reconnect else "")
    except providers.ProviderError as exc:
        raise ConnectError(f"{client.label} cannot be reached to sign in ({exc}). Please try "
                           "again in a moment.") from exc
    pending = request.session.get(SESSION_KEY, {})
    pending[nonce] = {"flow": flow, "at": timezone.now().timestamp()}
    request.session[SESSION_KEY] = dict(list(pending.items())[-5:])  # a few tabs at most
    return url


def callback_notice(*, provider: str, params: dict) -> str:
    """What to say for a return to the callback that is no sign-in (an organization's
    admin consent); "" for a sign-in. Changes nothing."""
    if not providers.can(provider, Capability.OAUTH_SIGN_IN):
        return ""
    return providers.get(provider).callback_notice(params)


def read_state(*, request, provider: str, state: str) -> dict:
    """The verified state, with its nonce spent; ConnectError otherwise."""
    try:
        data = signing.loads(state, salt=STATE_SALT, max_age=STATE_MAX_AGE_SECONDS)
    except signing.SignatureExpired as exc:
        raise ConnectError("The connection request expired. Please start again.") from exc
    except signing.BadSignature as exc:
        raise ConnectError("This connection request is not valid.") from exc
    pending = request.session.get(SESSION_KEY, {})
    entry = pending.pop(data.get("n"), None)
    request.session[SESSION_KEY] = pending
    if entry is None or data.get("u") != request.user.pk or data.get("p") != provider:
        raise ConnectError("This connection request was already used or belongs to another "
                           "session. Please start again.")
    data["flow"] = entry.get("flow") or {}
    return data


def oauth_complete(*, request, provider: str, tenant: Tenant, state: dict,
                   params: dict) -> ConnectResult:
    """``params``: the callback's query (``code`` and ``state``, or the provider's
    ``error``)."""
    client = providers.get(provider)
    try:
        tokens = client.complete_sign_in(flow=state["flow"], params=params,
                                         redirect_uri=callback_url(provider))
        credentials = tokens.as_credentials()
        address = client.mailbox_address(credentials).strip().lower()
    except SignInRefused as exc:
        raise ConnectError(str(exc), help_url=exc.help_url, help_label=exc.help_label,
                           declined=exc.declined) from exc
    except providers.ProviderError as exc:
        raise ConnectError(f"{client.label} did not accept the sign-in "
                           f"({exc.reason or 'error'}): {health.redact(str(exc))} Nothing "
                           "was changed.") from exc
    if client.missing_scopes(tokens):
        raise ConnectError("Both permissions are needed (read and send mail). Please allow "
                           "them on the consent screen.")
    reconnect_id = state.get("r")
    if reconnect_id:
        return _reconnect(request, tenant, reconnect_id, address, credentials)
    # Signing in again with a mailbox this workspace has (connected, or Token Expired
    # because its grant was revoked, or disconnected earlier) re-authorizes that
    # connection, tickets and settings included, exactly as Reconnect does; a connected
    # one wins over a disconnected one.
    known = (EmailConnection.objects.filter(tenant=tenant, provider=provider, address=address)
             .order_by(Case(When(status=ConnectionStatus.DISCONNECTED, then=1), default=0),
                       "-updated_at").values_list("pk", flat=True).first())
    if known is not None:
        return _reconnect(request, tenant, known, address, credentials)
    return _create(request, tenant, provider, address, credentials)


def _create(request, tenant, provider, address, credentials) -> ConnectResult:
    try:
        with transaction.atomic():
            conn = EmailConnection.objects.create(
                tenant=tenant, provider=provider, address=address, display_name="",
                status=ConnectionStatus.ACTIVE, credentials=credentials,
                sync_start_at=timezone.now())
    except IntegrityError as exc:
        raise ConnectError(f"{address} is already connected in another workspace. "
                           "Disconnect it there first.") from exc
    _signed_in(request, tenant, conn, "email_connection.connected")
    return ConnectResult(conn, True)


def _reconnect(request, tenant, connection_id, address, credentials) -> ConnectResult:
    conn = EmailConnection.objects.filter(pk=connection_id, tenant=tenant).first()
    if conn is None:
        raise ConnectError("That connection no longer exists.")
    if conn.address != address:
        raise ConnectError(f"You signed in as {address}, but this connection is for "
                           f"{conn.address}. Nothing was changed.")
    try:
        with transaction.atomic():
            health.reactivate(conn, credentials=credentials)
    except IntegrityError as exc:
        raise ConnectError(f"{address} is connected in another workspace now.") from exc
    _signed_in(request, tenant, conn, "email_connection.reconnected")
    _queue_sync(conn)  # catch up from the last cursor
    return ConnectResult(conn, False)


def _signed_in(request, tenant: Tenant, conn: EmailConnection, action: str) -> None:
    """What follows a (re)connect: the webhook's cached mailbox lookup forgotten, the
    mailbox's current cursor recorded when the connection has none yet, the push watch
    queued (``connection_watch_start``, after the commit), audited. A provider failure
    shows on the health page (the first sync or the beat task retries)."""
    forget_mailbox(conn.provider, conn.address)
    if not conn.cursor and providers.can(conn.provider, Capability.CURSOR_SYNC):
        try:
            cursor = authorized(conn).current_cursor()
        except providers.ProviderError as exc:
            health.record_error(conn, exc)
        else:
            EmailConnection.objects.filter(pk=conn.pk).update(cursor=cursor)
            conn.cursor = cursor
    if providers.can(conn.provider, Capability.PUSH):
        _queue_watch(conn)
    audit_record(tenant=tenant, actor=request.user, action=action, target=conn,
                 details={"provider": conn.provider, "address": conn.address})


def _queue_watch(conn: EmailConnection) -> None:
    from channels_email.tasks import start_watch

    transaction.on_commit(lambda: start_watch.delay(connection_id=conn.pk))


def connection_watch_start(*, connection_id: int, fresh_token: bool = False) -> bool:
    """The push watch of a just (re)connected mailbox, or of one whose provider asked for
    it to be renewed (the ``start_watch`` task's unit): started unless the connection is
    gone, disconnected or must wait; a provider failure is recorded on its health (the
    beat task's renewal retries it). ``fresh_token``: refresh the access token first (the
    provider said the subscription's authorization is about to lapse); a refresh refused
    makes the connection Token Expired. Once started, one sync is queued: mail that
    arrived between the callback (or the provider's lapse) and the watch got no push.
    True when started."""
    from channels_email.sync import sync_request
    from channels_email.tokens import ensure_fresh_token

    with unscoped():  # the id names the connection; the call runs in its tenant
        conn = (EmailConnection.objects.select_related("tenant")
                .filter(pk=connection_id).first())
    if conn is None or not providers.can(conn.provider, Capability.PUSH):
        return False
    with tenant_scope(conn.tenant):
        if fresh_token and health.may_call(conn):
            try:
                ensure_fresh_token(conn, rejected_token=(conn.credentials or {}).get(
                    "access_token", ""))
            except providers.ProviderError as exc:
                health.record_error(conn, exc)
                return False
        if not watch_renew(conn):
            return False
    sync_request(conn.pk, "watch")
    return True


def watch_start(conn: EmailConnection) -> None:
    """Start (or renew) the provider's push for ``conn`` and record its expiry and secret;
    a connection without a cursor yet takes the watch's, one with a cursor keeps it. A
    subscription the provider replaced by a new one (it had lost the old one) queues a
    catch-up sync."""
    previous = conn.subscription_id
    watch = authorized(conn).start_watch()
    fields = {"subscription_id": watch.subscription_id,
              "subscription_expires_at": watch.expires_at,
              "subscription_secret": watch.secret or None}
    if watch.cursor and not conn.cursor:
        fields["cursor"] = watch.cursor
    EmailConnection.objects.filter(pk=conn.pk).update(**fields)
    for name, value in fields.items():
        setattr(conn, name, value)
    if previous and previous != watch.subscription_id:
        # The provider had lost the subscription (it was recreated): the notifications
        # of the gap are lost too, so catch up.
        from channels_email.sync import sync_request

        logger.warning("watch.recreated connection=%s", conn.pk)
        transaction.on_commit(lambda: sync_request(conn.pk, "watch"))


def watch_renew(conn: EmailConnection) -> bool:
    """Renew the watch of ``conn`` (the beat task's unit); a failure is recorded on the
    connection's health, where the Email channels page shows it. True when renewed."""
    if not health.may_call(conn):
        return False
    try:
        watch_start(conn)
    except providers.ProviderError as exc:
        health.record_error(conn, exc)
        return False
    return True


def _queue_sync(conn: EmailConnection) -> None:
    from channels_email.sync import sync_request

    transaction.on_commit(lambda: sync_request(conn.pk, "reconnect"))


def connection_disconnect(*, connection: EmailConnection, actor: User | None) -> None:
    if connection.status == ConnectionStatus.DISCONNECTED:
        return
    if providers.is_enabled(connection.provider) and connection.credentials:
        client = authorized(connection)
        steps = [client.stop_watch] if providers.can(connection.provider, Capability.PUSH) \
            else []
        if providers.can(connection.provider, Capability.OAUTH_SIGN_IN):
            steps.append(lambda: client.revoke(connection.credentials))
        for step in steps:
            try:
                step()
            except providers.ProviderError as exc:
                logger.warning("disconnect.provider_error connection=%s error=%s",
                               connection.pk, health.redact(str(exc)))
    subscription = connection.subscription_id
    health.record_disconnected(connection)
    forget_mailbox(connection.provider, connection.address)
    forget_subscription(connection.provider, subscription)
    audit_record(tenant=connection.tenant, actor=actor, action="email_connection.disconnected",
                 target=connection, details={"address": connection.address})
