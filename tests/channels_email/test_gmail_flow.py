"""Gmail end to end through the sandbox over HTTP: connect in the browser (OAuth with PKCE),
Pub/Sub push to the webhook, sync, ingest; token care, rate limits, expired cursors,
disconnect. The worker's tasks run in-process here; test_gmail_worker.py runs them on a
real Celery worker."""

from __future__ import annotations

import urllib.parse

import pytest
import requests

from channels_email import health
from channels_email.models import ConnectionStatus, EmailConnection, InboundEmail
from channels_email.sync import connection_sync, push_unmark
from channels_email.tasks import process_inbound_email
from helpdesk.models import AuditEvent
from helpdesk.tenancy import tenant_scope, unscoped
from tests.sandbox_support import (
    PushCatcher,
    consent,
    own_redis,  # noqa: F401 - a fixture
    use_sandbox_google,
)
from tickets.models import Ticket

pytestmark = pytest.mark.django_db(transaction=True)
TOPIC = "projects/helpdesk-test/topics/gmail"
AUDIENCE = "https://helpdesk.test/webhooks/google/pubsub/"
PUSH_ACCOUNT = "pubsub-push@helpdesk-test.iam.gserviceaccount.com"


@pytest.fixture
def gmail(settings, sandbox):
    """Settings pointing at the sandbox; the sandbox pushing to a catcher."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    catcher = PushCatcher()
    use_sandbox_google(settings, sandbox, public_base_url="http://testserver", topic=TOPIC,
                       push_endpoint=catcher.url, audience=AUDIENCE,
                       service_account=PUSH_ACCOUNT)
    yield sandbox, catcher
    catcher.close()


def connect_mailbox(client, tenant, address: str, decision: str = "allow"):
    """Through the consent screens and back; then what the worker does after the
    callback: the watch task the callback queued (``run_watch_task``)."""
    start = client.post(f"/{tenant.slug}/settings/email/connect/gmail/")
    assert start.status_code == 302
    location = consent(start["Location"], address, decision=decision)
    callback = urllib.parse.urlsplit(location)
    answer = client.get(callback.path + "?" + callback.query)
    run_watch_task(tenant, address)
    return answer


def run_watch_task(tenant, address: str) -> None:
    """Run the start-watch task in-process for ``address``'s connection, if it has one
    (the tests of this module run no worker)."""
    from channels_email.tasks import start_watch

    with tenant_scope(tenant):
        ids = list(EmailConnection.objects.filter(address=address)
                   .values_list("pk", flat=True))
    for pk in ids:
        start_watch.run(connection_id=pk)


def connected_mailbox(client, tenant, address: str) -> EmailConnection:
    """Connect ``address`` through the consent screens and return its connection."""
    assert connect_mailbox(client, tenant, address).status_code == 302
    with tenant_scope(tenant):
        return EmailConnection.objects.get(address=address)


def deliver(sandbox, to, subject, **extra):
    reply = requests.post(sandbox + "/_sandbox/deliver", json={
        "to": to, "from": "Maria Lopez <maria@customer.example>", "subject": subject,
        "body": "Hello, the printer is on fire.", **extra}, timeout=5)
    reply.raise_for_status()
    return reply.json()


def run_tasks(connection_id):
    """What the worker does after a push: sync, then ingest each new row."""
    push_unmark(connection_id)
    result = connection_sync(connection_id)
    for pk in result.new_rows:
        process_inbound_email.run(inbound_email_id=pk)
    return result


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_connect_push_sync_ingest_and_reply_threading(gmail, admin_client, tenant):
    sandbox, catcher = gmail
    answer = connect_mailbox(admin_client, tenant, "support@acme.test")
    assert answer.status_code == 302
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get(address="support@acme.test")
        assert conn.status == ConnectionStatus.ACTIVE and conn.cursor
        assert conn.credentials["refresh_token"] and conn.subscription_expires_at
        assert AuditEvent.objects.filter(action="email_connection.connected").exists()
    catcher.next()  # the watch's first notification

    deliver(sandbox, "support@acme.test", "Printer on fire",
            attachments=[{"filename": "photo.png", "content_type": "image/png",
                          "data_base64": "iVBORw0KGgo="}])
    headers, body = catcher.next()
    webhook = admin_client.post("/webhooks/google/pubsub/", data=body,
                                content_type="application/json",
                                HTTP_AUTHORIZATION=headers["Authorization"])
    assert webhook.status_code == 204
    result = run_tasks(conn.pk)
    assert len(result.new_rows) == 1
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
        assert ticket.title == "Printer on fire"
        assert ticket.contact.email == "maria@customer.example"
        assert [a.filename for a in ticket.messages.get().attachments.all()] == ["photo.png"]
        first = InboundEmail.objects.get()

    # The customer answers in the same Gmail thread: same ticket.
    parent = f"<{first.message_id_header}>"
    deliver(sandbox, "support@acme.test", "Re: Printer on fire",
            headers={"In-Reply-To": parent, "References": parent})
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        reply = InboundEmail.objects.exclude(pk=first.pk).get()
        assert reply.provider_thread_id == first.provider_thread_id  # Gmail's own thread
        assert Ticket.objects.count() == 1 and ticket.messages.count() == 2


def test_duplicate_pushes_and_overlapping_syncs_ingest_once(gmail, admin_client, tenant):
    sandbox, catcher = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    for n in range(3):
        deliver(sandbox, "support@acme.test", f"Question {n}")
    for _ in range(5):
        run_tasks(conn.pk)
    with unscoped():
        assert InboundEmail.objects.count() == 3
    with tenant_scope(tenant):
        assert sorted(Ticket.objects.values_list("title", flat=True)) == [
            "Question 0", "Question 1", "Question 2"]


def test_denied_consent_and_replayed_state_change_nothing(gmail, admin_client, tenant):
    answer = connect_mailbox(admin_client, tenant, "support@acme.test", decision="deny")
    assert answer.status_code == 302
    start = admin_client.post(f"/{tenant.slug}/settings/email/connect/gmail/")
    location = urllib.parse.urlsplit(consent(start["Location"], "support@acme.test"))
    assert admin_client.get(location.path + "?" + location.query).status_code == 302
    replay = admin_client.get(location.path + "?" + location.query)
    assert replay.status_code == 400
    with unscoped():
        assert EmailConnection.objects.count() == 1


def test_a_mailbox_is_connected_in_one_tenant_only(gmail, client, tenant, admin_user):
    from tests.factories import MembershipFactory, TenantFactory

    other = TenantFactory()
    MembershipFactory(tenant=other, user=admin_user, role="admin")
    client.force_login(admin_user)
    connect_mailbox(client, tenant, "support@acme.test")
    connect_mailbox(client, other, "support@acme.test")
    with unscoped():
        assert list(EmailConnection.objects.values_list("tenant_id", flat=True)) == [tenant.pk]


def test_forged_or_foreign_push_tokens_are_refused(gmail, admin_client, tenant):
    sandbox, catcher = gmail
    connect_mailbox(admin_client, tenant, "support@acme.test")
    headers, body = catcher.next()
    assert admin_client.post("/webhooks/google/pubsub/", data=body,
                             content_type="application/json").status_code == 401
    forged = admin_client.post("/webhooks/google/pubsub/", data=body,
                               content_type="application/json",
                               HTTP_AUTHORIZATION="Bearer eyJhbGciOiJub25lIn0.e30.")
    assert forged.status_code == 403
    from django.test import override_settings

    with override_settings(PUBSUB_AUDIENCE="https://elsewhere.example/"):
        wrong = admin_client.post("/webhooks/google/pubsub/", data=body,
                                  content_type="application/json",
                                  HTTP_AUTHORIZATION=headers["Authorization"])
    assert wrong.status_code == 403
    malformed = admin_client.post("/webhooks/google/pubsub/", data=b"{}",
                                  content_type="application/json",
                                  HTTP_AUTHORIZATION=headers["Authorization"])
    assert malformed.status_code == 400
    with unscoped():
        assert InboundEmail.objects.count() == 0
        assert EmailConnection.objects.get().last_push_at is None


def test_webhook_writes_no_row_and_ignores_unknown_mailboxes(gmail, admin_client, tenant,
                                                             caplog):
    import base64
    import json

    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    sandbox, catcher = gmail
    connect_mailbox(admin_client, tenant, "support@acme.test")
    headers, body = catcher.next()
    with CaptureQueriesContext(db) as queries:
        answer = admin_client.post("/webhooks/google/pubsub/", data=body,
                                   content_type="application/json",
                                   HTTP_AUTHORIZATION=headers["Authorization"])
    assert answer.status_code == 204
    assert all(q["sql"].lstrip().upper().startswith("SELECT") for q in queries.captured_queries)
    envelope = json.loads(body)
    envelope["message"]["data"] = base64.b64encode(json.dumps(
        {"emailAddress": "nobody@elsewhere.test", "historyId": "1"}).encode()).decode()
    unknown = admin_client.post("/webhooks/google/pubsub/", data=json.dumps(envelope),
                                content_type="application/json",
                                HTTP_AUTHORIZATION=headers["Authorization"])
    assert unknown.status_code == 204 and "unknown_mailbox" in caplog.text


def test_reconciliation_queues_one_sync_per_connected_mailbox(gmail, admin_client, tenant):
    from channels_email.sync import push_unmark
    from channels_email.tasks import reconcile_connections

    connect_mailbox(admin_client, tenant, "support@acme.test")
    connect_mailbox(admin_client, tenant, "sales@acme.test")
    with tenant_scope(tenant):
        ids = list(EmailConnection.objects.values_list("pk", flat=True))
    for pk in ids:
        push_unmark(pk)
    assert reconcile_connections.run() == 2
    assert reconcile_connections.run() == 0  # coalesced until those syncs start
    for pk in ids:
        push_unmark(pk)


def test_expired_cursor_recovers_every_message(gmail, admin_client, tenant):
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    deliver(sandbox, "support@acme.test", "Lost one")
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "expired_history", "count": 1},
                  timeout=5).raise_for_status()
    result = run_tasks(conn.pk)
    assert result.full_sync and len(result.new_rows) == 1
    with tenant_scope(tenant):
        assert Ticket.objects.get().title == "Lost one"


def test_rate_limit_then_active_and_invalid_grant_then_reconnect(gmail, admin_client, tenant):
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    requests.post(sandbox + "/_sandbox/faults", json={"kind": "too_many_requests", "count": 1,
                                                      "retry_after": 30}, timeout=5)
    deliver(sandbox, "support@acme.test", "Busy day")
    from channels_email.providers import RateLimited

    with pytest.raises(RateLimited):
        run_tasks(conn.pk)
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.RATE_LIMITED and not health.may_call(conn)
        assert run_tasks(conn.pk).state == "skipped"  # honours rate_limited_until
        EmailConnection.objects.filter(pk=conn.pk).update(rate_limited_until=None)
    assert len(run_tasks(conn.pk).new_rows) == 1
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.ACTIVE and conn.consecutive_errors == 0

    # The user revokes access at Google; the token runs out: Token Expired, nothing fetched.
    requests.post(sandbox + "/_sandbox/revoke-all", json={"email": "support@acme.test"},
                  timeout=5)
    with tenant_scope(tenant):
        creds = dict(conn.credentials, expires_at="2000-01-01T00:00:00+00:00")
        conn.credentials = creds
        conn.save(update_fields=["credentials"])
    deliver(sandbox, "support@acme.test", "While disconnected")
    from channels_email.providers import AuthError

    with pytest.raises(AuthError):
        run_tasks(conn.pk)
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.TOKEN_EXPIRED
        assert run_tasks(conn.pk).state == "skipped"
    # Every page tells the workspace's admins (not its agents) until someone reconnects.
    banner = "support@acme.test</strong> lost its sign-in"
    assert banner in admin_client.get(f"/{tenant.slug}/tickets/").content.decode()
    from django.test import Client

    from helpdesk.models import Role
    from tests.factories import MembershipFactory, UserFactory

    agent_browser = Client()
    agent_browser.force_login(MembershipFactory(tenant=tenant, user=UserFactory(),
                                                role=Role.AGENT).user)
    assert banner not in agent_browser.get(f"/{tenant.slug}/tickets/").content.decode()
    # Reconnect: Active again, and what arrived meanwhile is ingested.
    reconnect = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/reconnect/")
    location = urllib.parse.urlsplit(consent(reconnect["Location"], "support@acme.test"))
    assert admin_client.get(location.path + "?" + location.query).status_code == 302
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.ACTIVE
        assert Ticket.objects.filter(title="While disconnected").exists()
        assert AuditEvent.objects.filter(action="email_connection.reconnected").exists()
    assert "lost its sign-in" not in admin_client.get(f"/{tenant.slug}/tickets/").content.decode()


def test_token_is_refreshed_before_expiry_and_rotation_kept(gmail, admin_client, tenant):
    from datetime import timedelta

    from django.utils import timezone

    from channels_email.tasks import refresh_tokens

    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    with tenant_scope(tenant):
        old = dict(conn.credentials)
        soon = (timezone.now() + timedelta(minutes=10)).isoformat()  # not expired yet
        conn.credentials = dict(old, expires_at=soon)
        conn.save(update_fields=["credentials"])
    assert refresh_tokens.run() == 1
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.credentials["access_token"] != old["access_token"]
        assert conn.credentials["refresh_token"]  # kept (or rotated), never lost
    assert refresh_tokens.run() == 0  # fresh now


def test_disconnect_stops_revokes_and_ignores_later_pushes(gmail, admin_client, tenant):
    sandbox, catcher = gmail
    connect_mailbox(admin_client, tenant, "support@acme.test")
    headers, body = catcher.next()
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get()
    answer = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/disconnect/")
    assert answer.status_code == 302
    seen = {(r["method"], r["path"]) for r in
            requests.get(sandbox + "/_sandbox/requests", timeout=5).json()["requests"]}
    assert ("POST", "/gmail/v1/users/me/stop") in seen and ("POST", "/revoke") in seen
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.DISCONNECTED and conn.credentials is None
        assert AuditEvent.objects.filter(action="email_connection.disconnected").exists()
    assert admin_client.post("/webhooks/google/pubsub/", data=body,
                             content_type="application/json",
                             HTTP_AUTHORIZATION=headers["Authorization"]).status_code == 204
    assert connection_sync(conn.pk).state == "skipped"
    with unscoped():
        assert InboundEmail.objects.count() == 0


def test_a_disconnected_mailbox_comes_back_with_its_tickets_and_settings(
        gmail, admin_client, tenant):
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    deliver(sandbox, "support@acme.test", "Before")
    run_tasks(conn.pk)
    page = f"/{tenant.slug}/settings/email/{conn.pk}/"
    assert "/disconnect/" in admin_client.get(page).content.decode()
    admin_client.post(page + "disconnect/")
    deliver(sandbox, "support@acme.test", "While disconnected")
    settings_page = admin_client.get(page).content.decode()
    assert "/reconnect/" in settings_page and "/disconnect/" not in settings_page

    # Reconnect from its settings page: the same connection, Active, and the mail that
    # arrived while it was disconnected is fetched.
    reconnect = admin_client.post(page + "reconnect/")
    location = urllib.parse.urlsplit(consent(reconnect["Location"], "support@acme.test"))
    assert admin_client.get(location.path + "?" + location.query).status_code == 302
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert list(EmailConnection.objects.values_list("pk", "status")) == [
            (conn.pk, ConnectionStatus.ACTIVE)]
        assert set(Ticket.objects.values_list("title", flat=True)) == {
            "Before", "While disconnected"}

    # Connecting the address again after another disconnect brings back that connection
    # too, instead of a second one its old tickets would not reply through.
    admin_client.post(page + "disconnect/")
    assert connect_mailbox(admin_client, tenant, "support@acme.test").status_code == 302
    with tenant_scope(tenant):
        assert list(EmailConnection.objects.values_list("pk", "status")) == [
            (conn.pk, ConnectionStatus.ACTIVE)]
        assert AuditEvent.objects.filter(action="email_connection.reconnected").count() == 2


def test_bringing_a_mailbox_back_never_crosses_workspaces(gmail, admin_client, tenant,
                                                          other_tenant):
    from django.test import Client

    from helpdesk.models import Role
    from tests.factories import MembershipFactory, UserFactory

    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/disconnect/")
    other = Client()
    other.force_login(MembershipFactory(tenant=other_tenant, user=UserFactory(),
                                        role=Role.ADMIN).user)
    # Another workspace connects the address: a connection of its own, not ours revived.
    assert connect_mailbox(other, other_tenant, "support@acme.test").status_code == 302
    with unscoped():
        rows = list(EmailConnection.objects.order_by("pk").values_list("tenant_id", "status"))
    assert rows == [(tenant.pk, ConnectionStatus.DISCONNECTED),
                    (other_tenant.pk, ConnectionStatus.ACTIVE)]
    # While it has the mailbox, ours cannot come back, by Connect or by Reconnect.
    answer = connect_mailbox(admin_client, tenant, "support@acme.test")
    assert "connected in another workspace" in admin_client.get(
        answer["Location"]).content.decode()
    reconnect = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/reconnect/")
    location = urllib.parse.urlsplit(consent(reconnect["Location"], "support@acme.test"))
    answer = admin_client.get(location.path + "?" + location.query)
    assert "connected in another workspace" in admin_client.get(
        answer["Location"]).content.decode()
    with unscoped():
        assert list(EmailConnection.objects.order_by("pk").values_list(
            "tenant_id", "status")) == rows


def test_watches_close_to_expiry_are_renewed(gmail, admin_client, tenant):
    from datetime import timedelta

    from django.utils import timezone

    from channels_email.tasks import renew_watches

    connect_mailbox(admin_client, tenant, "support@acme.test")
    assert renew_watches.run() == 0  # a fresh watch lasts days
    with tenant_scope(tenant):
        EmailConnection.objects.update(subscription_expires_at=timezone.now()
                                       + timedelta(hours=2))
    assert renew_watches.run() == 1
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get()
        assert conn.subscription_expires_at > timezone.now() + timedelta(days=5)


def test_credentials_are_never_stored_or_shown_in_plaintext(gmail, admin_client, tenant,
                                                           caplog):
    from django.db import connection as db

    connect_mailbox(admin_client, tenant, "support@acme.test")
    with tenant_scope(tenant):
        creds = EmailConnection.objects.get().credentials
    secrets = [creds["access_token"], creds["refresh_token"]]
    with db.cursor() as cursor:
        cursor.execute("SELECT credentials::text FROM channels_email_emailconnection")
        stored = cursor.fetchone()[0]
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "support@acme.test" in page
    for secret in secrets:
        assert secret not in stored and secret not in page
        assert secret not in caplog.text


def test_quiet_pushes_and_expired_watches_show_on_the_health_page(gmail, admin_client, tenant):
    from datetime import timedelta

    from django.utils import timezone

    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    deliver(sandbox, "support@acme.test", "Announced")
    push_unmark(conn.pk)
    connection_sync(conn.pk, "push")
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "Pushes missing" not in page and "Watch expired" not in page

    deliver(sandbox, "support@acme.test", "Never announced")  # its push got lost
    push_unmark(conn.pk)
    assert len(connection_sync(conn.pk, "reconcile").new_rows) == 1
    with tenant_scope(tenant):
        EmailConnection.objects.update(subscription_expires_at=timezone.now()
                                       - timedelta(hours=1))
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "Pushes missing" in page and "Watch expired" in page


def test_a_mailbox_whose_errors_keep_coming_is_flagged_failing_until_a_sync_works(
        gmail, admin_client, tenant):
    from channels_email.models import FAILING_AFTER
    from channels_email.providers import TransientError

    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    requests.post(sandbox + "/_sandbox/faults", json={
        "kind": "server_error", "count": FAILING_AFTER}, timeout=5).raise_for_status()
    for attempt in range(FAILING_AFTER):
        page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
        assert "Failing" not in page, attempt
        with pytest.raises(TransientError):
            run_tasks(conn.pk)
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "Failing</span>" in page and f"{FAILING_AFTER} errors in a row" in page
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.ACTIVE  # still fetching, with backoff
    run_tasks(conn.pk)
    assert "Failing</span>" not in admin_client.get(
        f"/{tenant.slug}/settings/email/").content.decode()


def test_mail_stored_already_is_not_a_missed_push_and_reconnect_is_not_a_push(
        gmail, admin_client, tenant):
    sandbox, _ = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    deliver(sandbox, "support@acme.test", "Announced")
    push_unmark(conn.pk)
    assert len(connection_sync(conn.pk, "push").new_rows) == 1  # stored, not ingested yet
    # Our cursor falls behind Gmail's history: the sweep's full sync lists the stored mail
    # again.
    with unscoped():
        EmailConnection.objects.update(cursor="1")
    requests.post(sandbox + "/_sandbox/expire-history", json={"email": "support@acme.test"},
                  timeout=5).raise_for_status()
    push_unmark(conn.pk)
    result = connection_sync(conn.pk, "reconcile")
    assert result.full_sync and len(result.new_rows) == 1  # still queued for ingest
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "Pushes missing" not in page

    with unscoped():
        EmailConnection.objects.update(last_push_at=None)
    push_unmark(conn.pk)
    connection_sync(conn.pk, "reconnect")
    with unscoped():
        assert EmailConnection.objects.get().last_push_at is None


def test_a_state_from_another_session_is_refused(gmail, client, tenant, admin_user):
    from django.test import Client

    from tests.factories import MembershipFactory, UserFactory

    client.force_login(admin_user)
    start = client.post(f"/{tenant.slug}/settings/email/connect/gmail/")
    location = urllib.parse.urlsplit(consent(start["Location"], "support@acme.test"))
    other_admin = UserFactory()
    MembershipFactory(tenant=tenant, user=other_admin, role="admin")
    intruder = Client()
    intruder.force_login(other_admin)
    assert intruder.get(location.path + "?" + location.query).status_code == 400
    with unscoped():
        assert EmailConnection.objects.count() == 0


def test_mail_already_in_the_inbox_is_not_imported(gmail, admin_client, tenant):
    sandbox, _ = gmail
    requests.post(sandbox + "/_sandbox/mailboxes", json={"email": "support@acme.test"},
                  timeout=5).raise_for_status()
    deliver(sandbox, "support@acme.test", "Old mail from before")
    connect_mailbox(admin_client, tenant, "support@acme.test")
    deliver(sandbox, "support@acme.test", "New mail")
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get()
    run_tasks(conn.pk)
    with tenant_scope(tenant):
        assert list(Ticket.objects.values_list("title", flat=True)) == ["New mail"]


def _push_for(body: bytes, address: str) -> bytes:
    import base64
    import json

    envelope = json.loads(body)
    envelope["message"]["data"] = base64.b64encode(json.dumps(
        {"emailAddress": address, "historyId": "1"}).encode()).decode()
    return json.dumps(envelope).encode()


def test_redis_down_answers_503_warm_or_cold_and_the_retried_push_queues_the_sync(
        gmail, admin_client, tenant, own_redis):  # noqa: F811 - the fixture
    """The mailbox lookup (cached in Redis) and the coalescing mark both need Redis; with
    Redis stopped every path answers 503 (Pub/Sub retries), and once Redis is back the
    same push queues exactly one sync."""
    import redis

    from channels_email import webhooks
    from helpdesk.coordination import redis_key

    sandbox, catcher = gmail
    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    headers, body = catcher.next()

    def push():
        return admin_client.post("/webhooks/google/pubsub/", data=body,
                                 content_type="application/json",
                                 HTTP_AUTHORIZATION=headers["Authorization"])

    webhooks._LOCAL.clear()
    queue = redis.Redis.from_url(own_redis.url)
    queue.flushall()  # whatever connecting queued
    assert push().status_code == 204  # looks the mailbox up and caches it in Redis
    assert push().status_code == 204  # found in Redis: now cached in this process too
    assert queue.llen("ingest") == 1
    queue.flushall()
    own_redis.stop()
    assert push().status_code == 503  # warm cache: the coalescing mark fails
    webhooks._LOCAL.clear()
    assert push().status_code == 503  # cold cache: the lookup itself fails
    own_redis.start()
    webhooks._LOCAL.clear()
    assert push().status_code == 204
    queue = redis.Redis.from_url(own_redis.url)
    assert queue.llen("ingest") == 1
    assert queue.exists(redis_key("sync-pending", conn.pk))
    assert push().status_code == 204  # coalesced: still one sync queued
    assert queue.llen("ingest") == 1


def test_deeply_nested_or_nul_bearing_push_bodies_answer_400(gmail, admin_client, tenant):
    import base64
    import json

    sandbox, catcher = gmail
    connect_mailbox(admin_client, tenant, "support@acme.test")
    headers, body = catcher.next()
    deep = b"[" * 200_000 + b"]" * 200_000
    envelope = json.loads(body)
    envelope["message"]["data"] = base64.b64encode(deep).decode()
    for bad in (deep, json.dumps(envelope).encode(),
                _push_for(body, "support\x00@acme.test"),
                _push_for(body, "support@acme.test\r\nX: y")):
        answer = admin_client.post("/webhooks/google/pubsub/", data=bad,
                                   content_type="application/json",
                                   HTTP_AUTHORIZATION=headers["Authorization"])
        assert answer.status_code == 400, bad[:80]
    with unscoped():
        assert EmailConnection.objects.get().last_push_at is None


def test_postgres_unreachable_for_the_lookup_answers_503_then_the_push_works(
        gmail, admin_client, tenant):
    """A cold mailbox lookup reads PostgreSQL: unreachable, the push gets 503 (Pub/Sub
    retries) instead of a 500; reachable again, the same push is accepted."""
    from django.db import connection

    from channels_email import webhooks
    from tests.sandbox_support import free_port

    conn = connected_mailbox(admin_client, tenant, "support@acme.test")
    headers, body = gmail[1].next()
    webhooks.forget_mailbox(conn.provider, conn.address)  # cold: only PostgreSQL knows

    def push():
        return admin_client.post("/webhooks/google/pubsub/", data=body,
                                 content_type="application/json",
                                 HTTP_AUTHORIZATION=headers["Authorization"])

    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(free_port())  # nothing listens there
    try:
        assert push().status_code == 503
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert push().status_code == 204
