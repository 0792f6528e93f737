"""A grant that stops working, through the sandbox over HTTP: a refused access token is
refreshed once and the call retried; a revoked grant is Token Expired within one sync or
send, nothing more is fetched, admins are told, and signing in again (Add Email Account
or Reconnect) brings the same connection back with what arrived meanwhile."""

from __future__ import annotations

import urllib.parse

import pytest
import requests

from channels_email import outbound
from channels_email.ingest import FetchDeferred, inbound_email_ingest
from channels_email.models import ConnectionStatus, EmailConnection, InboundEmail
from channels_email.providers import AuthError
from channels_email.sync import connection_sync, push_unmark
from channels_email.tasks import process_inbound_email, refresh_tokens
from helpdesk.tenancy import tenant_scope
from tests.channels_email.test_gmail_flow import (  # noqa: F401 - fixtures
    admin_client,
    connect_mailbox,
    connected_mailbox,
    deliver,
    gmail,
    run_tasks,
)
from tests.channels_email.test_outbound import conversation, reply, sent_mail  # noqa: F401
from tests.sandbox_support import consent
from tickets.models import DeliveryStatus, Ticket

pytestmark = pytest.mark.django_db(transaction=True)
MAILBOX = "support@acme.test"
BANNER = f"{MAILBOX}</strong> lost its sign-in"


def sandbox_calls(sandbox) -> list[tuple[str, str]]:
    log = requests.get(sandbox + "/_sandbox/requests", timeout=5).json()["requests"]
    return [(r["method"], r["path"]) for r in log]


def gmail_calls(sandbox) -> int:
    return sum(1 for _, path in sandbox_calls(sandbox) if path.startswith("/gmail/"))


def token_calls(sandbox) -> int:
    return sandbox_calls(sandbox).count(("POST", "/token"))


def control(sandbox, what: str) -> None:
    requests.post(f"{sandbox}/_sandbox/{what}", json={"email": MAILBOX},
                  timeout=5).raise_for_status()


def test_a_refused_access_token_is_refreshed_once_and_the_call_retried(
        gmail, admin_client, tenant):  # noqa: F811
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, MAILBOX)
    old_token = conn.credentials["access_token"]
    deliver(sandbox, MAILBOX, "Token ended early")
    control(sandbox, "expire-access-tokens")  # our stored expiry still says "valid"
    tokens_before = token_calls(sandbox)

    result = run_tasks(conn.pk)

    assert len(result.new_rows) == 1
    assert token_calls(sandbox) == tokens_before + 1  # one forced refresh, not one per call
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.ACTIVE and conn.consecutive_errors == 0
        assert conn.credentials["access_token"] != old_token
        assert Ticket.objects.filter(title="Token ended early").count() == 1


def test_a_revoked_grant_is_token_expired_within_one_sync_and_nothing_more_is_fetched(
        gmail, admin_client, tenant):  # noqa: F811
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, MAILBOX)
    deliver(sandbox, MAILBOX, "Before the revoke")
    run_tasks(conn.pk)
    control(sandbox, "revoke-all")  # the user removes our access at Google
    deliver(sandbox, MAILBOX, "While revoked")

    with pytest.raises(AuthError):
        run_tasks(conn.pk)  # 401, one refresh answered invalid_grant

    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.TOKEN_EXPIRED
        assert "invalid_grant" in conn.last_error
    page = admin_client.get(f"/{tenant.slug}/tickets/").content.decode()
    assert BANNER in page
    channels = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert f"/settings/email/{conn.pk}/reconnect/" in channels
    calls = gmail_calls(sandbox), token_calls(sandbox)
    assert run_tasks(conn.pk).state == "skipped"
    assert (gmail_calls(sandbox), token_calls(sandbox)) == calls  # nothing more asked

    # Signing in again through Add Email Account re-authorizes this same connection.
    answer = connect_mailbox(admin_client, tenant, MAILBOX)
    assert answer.status_code == 302
    flashes = admin_client.get(answer["Location"]).content.decode()
    assert "already connected" not in flashes and "reconnected" in flashes
    run_tasks(conn.pk)  # the catch-up sync the sign-in queued
    with tenant_scope(tenant):
        assert EmailConnection.objects.filter(address=MAILBOX).count() == 1
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.ACTIVE and conn.consecutive_errors == 0
        assert Ticket.objects.filter(title="While revoked").count() == 1
        assert Ticket.objects.filter(title="Before the revoke").count() == 1
    assert BANNER not in admin_client.get(f"/{tenant.slug}/tickets/").content.decode()


def test_mail_waiting_to_be_fetched_is_not_fetched_once_the_grant_is_gone(
        gmail, admin_client, tenant):  # noqa: F811
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, MAILBOX)
    deliver(sandbox, MAILBOX, "Listed, not fetched yet")
    push_unmark(conn.pk)
    [row_id] = connection_sync(conn.pk).new_rows  # listed; its fetch is still queued
    control(sandbox, "revoke-all")
    with pytest.raises(FetchDeferred):
        inbound_email_ingest(inbound_email_id=row_id)
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.TOKEN_EXPIRED
    fetches = gmail_calls(sandbox)
    with pytest.raises(FetchDeferred):
        inbound_email_ingest(inbound_email_id=row_id)
    assert gmail_calls(sandbox) == fetches
    with tenant_scope(tenant):
        assert InboundEmail.objects.get(pk=row_id).state == "received"  # kept, not lost

    # Reconnect (the button) restores it; the row is ingested then.
    reconnect = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/reconnect/")
    location = consent(reconnect["Location"], MAILBOX)
    callback = urllib.parse.urlsplit(location)
    assert admin_client.get(callback.path + "?" + callback.query).status_code == 302
    assert process_inbound_email.run(inbound_email_id=row_id) == "processed"
    with tenant_scope(tenant):
        assert Ticket.objects.filter(title="Listed, not fetched yet").count() == 1


def test_a_reply_after_the_revoke_fails_with_a_reason_and_marks_the_mailbox(
        conversation, tenant, admin_user):  # noqa: F811
    sandbox, conn, ticket = conversation
    control(sandbox, "revoke-all")
    message = reply(tenant, ticket, admin_user)

    assert outbound.deliver(message.pk) == DeliveryStatus.FAILED

    with tenant_scope(tenant):
        message.refresh_from_db()
        conn.refresh_from_db()
    assert "reconnected" in message.delivery_error
    assert conn.status == ConnectionStatus.TOKEN_EXPIRED
    assert sent_mail(sandbox) == []


def test_a_reply_with_a_refused_access_token_is_sent_once_after_a_refresh(
        conversation, tenant, admin_user):  # noqa: F811
    sandbox, conn, ticket = conversation
    control(sandbox, "expire-access-tokens")
    message = reply(tenant, ticket, admin_user)

    assert outbound.deliver(message.pk) == DeliveryStatus.DELIVERED
    assert len(sent_mail(sandbox)) == 1
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.ACTIVE


def test_the_beat_refresh_marks_a_revoked_grant_at_once(
        gmail, admin_client, tenant):  # noqa: F811
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, MAILBOX)
    control(sandbox, "revoke-all")
    with tenant_scope(tenant):
        conn.credentials = dict(conn.credentials, expires_at="2000-01-01T00:00:00+00:00")
        conn.save(update_fields=["credentials"])

    assert refresh_tokens.run() == 0

    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.TOKEN_EXPIRED
