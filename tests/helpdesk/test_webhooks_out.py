"""Outgoing webhooks against a real HTTP receiver: the outbox written with the change,
Standard Webhooks signatures checked with the reference verifier (``standardwebhooks``),
retries with the same ``webhook-id``, attempts recorded, disabling after persistent
failure, secret rotation, redirects and private addresses refused; the admin pages and
the admin API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from helpdesk.errors import ApplicationError
from helpdesk.models import AuditEvent, Tenant, WebhookAttempt, WebhookEndpoint, WebhookEvent
from helpdesk.tenancy import tenant_scope, unscoped
from helpdesk.webhook_transport import url_refusal
from helpdesk.webhooks_out import (
    live_secrets,
    webhook_attempt,
    webhook_endpoint_create,
    webhook_endpoint_test,
    webhook_endpoint_update,
    webhook_secret_rotate,
    webhooks_purge,
    webhooks_redrive,
)
from tests.api.test_foundation import bearer, make_key, problem_of
from tests.factories import ContactFactory, EmailConnectionFactory, TicketFactory
from tests.helpdesk.webhook_receiver import Receiver
from tickets.models import MessageKind
from tickets.services import message_add, ticket_create, ticket_update

pytestmark = pytest.mark.django_db
ALL_EVENTS = ["ticket.created", "ticket.updated", "message.created",
              "message.delivery_status_changed", "connection.status_changed"]


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def no_waits(settings):
    """Every retry due at once (the schedule's length is what matters here)."""
    settings.WEBHOOK_RETRY_SCHEDULE_SECONDS = [0, 0, 0, 0, 0, 0, 0]


def endpoint_for(tenant, url, events=("ticket.created",), actor=None) -> WebhookEndpoint:
    with tenant_scope(tenant):
        return webhook_endpoint_create(tenant=tenant, actor=actor, url=url, events=events)


def new_ticket(tenant, title="Printer on fire"):
    with tenant_scope(tenant), transaction.atomic():
        return ticket_create(tenant=Tenant.objects.get(pk=tenant.pk), title=title,
                             contact=ContactFactory(tenant=tenant))


def events_of(tenant) -> list[WebhookEvent]:
    with tenant_scope(tenant):
        return list(WebhookEvent.objects.filter(tenant=tenant).order_by("id"))


def verify(secret: str, received) -> dict:
    return Webhook(secret).verify(received.body, received.headers)


# ------------------------------------------------------------------------ delivery


def test_a_receiver_failing_three_times_gets_the_event_again_with_the_same_id(
        tenant, receiver, no_waits):
    endpoint = endpoint_for(tenant, receiver.url)
    ticket = new_ticket(tenant)
    [event] = events_of(tenant)
    receiver.answers = [500, 503, 500]
    states = [webhook_attempt(event_id=event.pk) for _ in range(4)]
    assert states == ["pending", "pending", "pending", "delivered"]
    assert len(receiver.received) == 4
    assert {r.headers["webhook-id"] for r in receiver.received} == {event.webhook_id}
    assert len({r.body for r in receiver.received}) == 1  # the same event each time
    secret = live_secrets(endpoint)[0]
    payload = verify(secret, receiver.received[-1])
    assert payload["type"] == "ticket.created"
    assert payload["data"]["number"] == ticket.number
    assert payload["data"]["title"] == "Printer on fire"
    # Delivered: a later copy of the task (or the redrive sweep) sends nothing more.
    assert webhook_attempt(event_id=event.pk) == "delivered"
    assert webhooks_redrive() == 0
    assert len(receiver.received) == 4
    with tenant_scope(tenant):
        attempts = list(WebhookAttempt.objects.filter(endpoint=endpoint)
                        .order_by("attempted_at", "id"))
    assert [(a.status_code, a.succeeded) for a in attempts] == [
        (500, False), (503, False), (500, False), (204, True)]
    assert "HTTP 503" in attempts[1].error and attempts[3].error == ""


def test_a_forged_or_altered_request_fails_verification(tenant, receiver):
    endpoint = endpoint_for(tenant, receiver.url)
    new_ticket(tenant)
    webhook_attempt(event_id=events_of(tenant)[0].pk)
    [got] = receiver.received
    secret = live_secrets(endpoint)[0]
    verify(secret, got)
    with pytest.raises(WebhookVerificationError):  # signed with another secret
        Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MjQyNDI=").verify(
            got.body, got.headers)
    with pytest.raises(WebhookVerificationError):  # the body changed on the way
        Webhook(secret).verify(got.body.replace(b"Printer", b"Scanner"), got.headers)
    with pytest.raises(WebhookVerificationError):  # another webhook-id, same signature
        Webhook(secret).verify(got.body, {**got.headers, "webhook-id": "msg_forged"})


def test_nothing_is_written_for_a_change_that_rolls_back_or_nobody_wants(tenant, other_tenant,
                                                                         receiver):
    endpoint_for(tenant, receiver.url, events=["ticket.updated"])
    new_ticket(tenant)  # only ticket.updated is wanted
    assert events_of(tenant) == []
    with tenant_scope(tenant), pytest.raises(RuntimeError), transaction.atomic():
        ticket = TicketFactory(tenant=tenant)
        ticket_update(ticket=ticket, status="open", priority="high", team=None, assignee=None)
        raise RuntimeError("the change fails after the event")
    assert events_of(tenant) == []
    new_ticket(other_tenant)  # another workspace's change: not for this endpoint
    assert events_of(tenant) == [] and events_of(other_tenant) == []


def test_the_services_emit_their_events(tenant, receiver):
    endpoint_for(tenant, receiver.url, events=ALL_EVENTS)
    ticket = new_ticket(tenant)
    with tenant_scope(tenant), transaction.atomic():
        ticket_update(ticket=ticket, status="open", priority="high", team=None, assignee=None)
        message_add(ticket=ticket, kind=MessageKind.NOTE, body_text="Checked the toner")
    kinds = [(e.type, e.payload["data"].get("status") or e.payload["data"].get("kind"))
             for e in events_of(tenant)]
    assert kinds == [("ticket.created", "new"), ("ticket.updated", "open"),
                     ("message.created", "note")]


def test_a_connection_status_change_is_an_event_and_a_mere_error_count_is_not(tenant,
                                                                               receiver):
    from channels_email import health
    from channels_email.providers.base import AuthError, TransientError

    endpoint_for(tenant, receiver.url, events=["connection.status_changed"])
    with tenant_scope(tenant), transaction.atomic():
        connection = EmailConnectionFactory(tenant=tenant, status="active")
        health.record_error(connection, TransientError("503 from the provider"))
        assert events_of(tenant) == []  # still Active
        health.record_error(connection, AuthError("invalid_grant", reason="invalid_grant"))
        health.reactivate(connection)
    data = [e.payload["data"] for e in events_of(tenant)]
    assert [(d["previous_status"], d["status"]) for d in data] == [
        ("active", "token_expired"), ("token_expired", "active")]
    assert data[0]["id"] == connection.pk and data[0]["address"] == connection.address


def test_a_redirect_is_not_followed(tenant, receiver):
    endpoint_for(tenant, receiver.url)
    new_ticket(tenant)
    receiver.answers = [302]
    assert webhook_attempt(event_id=events_of(tenant)[0].pk) == "pending"
    assert [r.path for r in receiver.received] == ["/hooks/helpdesk"]  # not /moved
    with tenant_scope(tenant):
        attempt = WebhookAttempt.objects.get()
    assert attempt.status_code == 302 and not attempt.succeeded
    assert "Redirects are not followed" in attempt.error


def test_persistent_failure_disables_the_endpoint_and_tells_the_admins(
        tenant, admin_user, receiver, settings, django_capture_on_commit_callbacks):
    settings.WEBHOOK_RETRY_SCHEDULE_SECONDS = [0, 0]
    endpoint = endpoint_for(tenant, receiver.url)
    new_ticket(tenant)
    [event] = events_of(tenant)
    receiver.answers = [500, 500, 500, 500]
    with django_capture_on_commit_callbacks(execute=True):  # the email goes on commit
        assert [webhook_attempt(event_id=event.pk) for _ in range(3)] == [
            "pending", "pending", "failed"]
    with tenant_scope(tenant):
        endpoint.refresh_from_db()
        assert AuditEvent.objects.filter(action="webhook_endpoint.disabled").exists()
    assert not endpoint.is_active and "failed all 3 attempts" in endpoint.disabled_reason
    [sent] = mail.outbox
    assert sent.to == [admin_user.email] and endpoint.url in sent.subject
    assert f"/settings/webhooks/{endpoint.pk}/" in sent.body
    # Disabled: no more events are written for it, and its subscription is gone.
    new_ticket(tenant)
    assert len(events_of(tenant)) == 1
    assert Tenant.objects.get(pk=tenant.pk).webhook_events == []
    with tenant_scope(tenant):
        webhook_endpoint_update(endpoint=endpoint, actor=admin_user, is_active=True)
    new_ticket(tenant)
    assert len(events_of(tenant)) == 2


def test_an_endpoint_that_worked_since_is_not_disabled_by_one_old_event(tenant, receiver,
                                                                         settings):
    settings.WEBHOOK_RETRY_SCHEDULE_SECONDS = [0]
    endpoint = endpoint_for(tenant, receiver.url)
    new_ticket(tenant, "first")
    new_ticket(tenant, "second")
    first, second = events_of(tenant)
    receiver.answers = [500, 204, 500]  # first fails, second delivered, first fails again
    webhook_attempt(event_id=first.pk)
    webhook_attempt(event_id=second.pk)
    with unscoped():  # the success came after the first event was written
        WebhookEvent.objects.filter(pk=first.pk).update(
            created_at=timezone.now() - timedelta(hours=25))
    assert webhook_attempt(event_id=first.pk) == "failed"
    with tenant_scope(tenant):
        endpoint.refresh_from_db()
    assert endpoint.is_active and not mail.outbox


def test_the_default_schedule_retries_for_at_least_a_day():
    from django.conf import settings

    schedule = settings.WEBHOOK_RETRY_SCHEDULE_SECONDS
    assert sum(schedule) * 0.9 >= 24 * 3600  # even with every wait jittered short


def test_rotation_signs_with_both_secrets_during_the_overlap(tenant, admin_user, receiver,
                                                             no_waits):
    endpoint = endpoint_for(tenant, receiver.url)
    first = live_secrets(endpoint)[0]
    with tenant_scope(tenant):
        second = webhook_secret_rotate(endpoint=endpoint, actor=admin_user)
    new_ticket(tenant)
    webhook_attempt(event_id=events_of(tenant)[0].pk)
    got = receiver.received[-1]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    verify(first, got)
    verify(second, got)
    with tenant_scope(tenant):
        third = webhook_secret_rotate(endpoint=endpoint, actor=admin_user)
        endpoint.refresh_from_db()
    new_ticket(tenant)
    webhook_attempt(event_id=events_of(tenant)[1].pk)
    got = receiver.received[-1]
    verify(second, got)
    verify(third, got)
    with pytest.raises(WebhookVerificationError):
        verify(first, got)  # two rotations ago: no longer signs


def test_a_disabled_endpoint_takes_no_test_event_and_an_enabled_one_gets_it(
        tenant, admin_user, receiver):
    endpoint = endpoint_for(tenant, receiver.url)
    with tenant_scope(tenant):
        webhook_endpoint_update(endpoint=endpoint, actor=admin_user, is_active=False)
        with pytest.raises(ApplicationError) as refused:
            webhook_endpoint_test(endpoint=endpoint, actor=admin_user)
        assert refused.value.status == 409
        webhook_endpoint_update(endpoint=endpoint, actor=admin_user, is_active=True)
        event = webhook_endpoint_test(endpoint=endpoint, actor=admin_user)
    assert webhook_attempt(event_id=event.pk) == "delivered"
    assert verify(live_secrets(endpoint)[0], receiver.received[0])["type"] == "webhook.test"


# ------------------------------------------------------------------ address checks


def test_private_addresses_are_refused_when_loopback_is_not_allowed(tenant, receiver,
                                                                     settings):
    for url in ("http://10.1.2.3/x", "http://192.168.0.10/", "http://169.254.169.254/latest",
                "http://[fd00::1]/", "http://100.64.0.1/", "http://0.0.0.0/"):
        assert url_refusal(url), url
    assert url_refusal("ftp://example.com/") and url_refusal("http:///nohost")
    assert url_refusal(receiver.url) is None  # loopback: allowed in tests
    endpoint = endpoint_for(tenant, receiver.url)
    new_ticket(tenant)
    settings.WEBHOOK_ALLOW_LOOPBACK = False  # as in prod: the address is checked at connect
    assert url_refusal(receiver.url) and url_refusal("http://localhost:8000/")
    assert webhook_attempt(event_id=events_of(tenant)[0].pk) == "pending"
    assert receiver.received == []
    with tenant_scope(tenant):
        attempt = WebhookAttempt.objects.get(endpoint=endpoint)
    assert attempt.status_code is None and "loopback" in attempt.error


def test_prod_settings_refuse_private_and_loopback_targets(receiver):
    """The prod profile itself (a fresh interpreter with DJANGO_ENV=prod): no loopback,
    no private addresses, neither when saved nor when connecting."""
    script = (
        "import django, json; django.setup()\n"
        "from django.conf import settings\n"
        "from helpdesk.webhook_transport import AddressRefused, guarded_session, url_refusal\n"
        "urls = ['http://127.0.0.1/', 'http://localhost/', 'http://10.0.0.8/',"
        " 'http://[::1]/', 'http://169.254.169.254/']\n"
        "refused = [bool(url_refusal(u)) for u in urls]\n"
        "try:\n"
        f"    guarded_session().post({receiver.url!r}, data=b'{{}}', timeout=5)\n"
        "    connected = 'sent'\n"
        "except AddressRefused as exc:\n"
        "    connected = str(exc)\n"
        "print(json.dumps({'loopback': settings.WEBHOOK_ALLOW_LOOPBACK, 'refused': refused,"
        " 'connected': connected}))\n"
    )
    env = dict(os.environ, DJANGO_ENV="prod", SECRET_KEY="p" * 50,
               FERNET_KEYS="zvLE3f5vOGDDVbXYbW5S6yO0QfhwQxyiBoEg7jDyqoA=",
               DATABASE_URL="postgres://nobody@127.0.0.1:1/none",
               REDIS_URL="redis://127.0.0.1:1/0", ALLOWED_HOSTS="helpdesk.example")
    env.pop("DEBUG", None)
    env.pop("WEBHOOK_ALLOW_LOOPBACK", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["loopback"] is False
    assert result["refused"] == [True] * 5
    assert "loopback" in result["connected"]
    assert receiver.received == []


# ------------------------------------------------------------------------ the API


def test_admin_keys_manage_endpoints_over_the_api(client, tenant, admin_user, receiver):
    _, key = make_key(tenant, admin_user, scope="admin")
    created = client.post("/api/v1/webhook-endpoints/", {
        "url": receiver.url, "events": ["ticket.created", "message.created"],
        "description": "CRM"}, content_type="application/json", **bearer(key))
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["is_active"] is True
    number = body["id"]
    listed = client.get("/api/v1/webhook-endpoints/", **bearer(key)).json()
    assert [e["id"] for e in listed["results"]] == [number]
    assert "secret" not in listed["results"][0]
    patched = client.patch(f"/api/v1/webhook-endpoints/{number}/", {"events": ["ticket.updated"]},
                           content_type="application/json", **bearer(key))
    assert patched.status_code == 200 and patched.json()["events"] == ["ticket.updated"]
    tested = client.post(f"/api/v1/webhook-endpoints/{number}/test/", **bearer(key))
    assert tested.status_code == 202 and tested.json()["type"] == "webhook.test"
    webhook_attempt(event_id=events_of(tenant)[0].pk)
    assert verify(body["secret"], receiver.received[0])["type"] == "webhook.test"
    attempts = client.get(f"/api/v1/webhook-endpoints/{number}/attempts/", **bearer(key)).json()
    [attempt] = attempts["results"]
    assert attempt["succeeded"] and attempt["status_code"] == 204
    assert attempt["webhook_id"] == receiver.received[0].headers["webhook-id"]
    rotated = client.post(f"/api/v1/webhook-endpoints/{number}/rotate-secret/", **bearer(key))
    assert rotated.status_code == 200 and rotated.json()["secret"] not in ("", body["secret"])
    assert client.delete(f"/api/v1/webhook-endpoints/{number}/", **bearer(key)).status_code == 204
    assert client.get(f"/api/v1/webhook-endpoints/{number}/", **bearer(key)).status_code == 404


def test_the_api_refuses_private_urls_and_unknown_events_naming_the_field(
        client, tenant, admin_user, settings):
    _, key = make_key(tenant, admin_user, scope="admin")
    refused = client.post("/api/v1/webhook-endpoints/", {
        "url": "http://10.0.0.5/hook", "events": ["ticket.created"]},
        content_type="application/json", **bearer(key))
    assert refused.status_code == 400
    problem = problem_of(refused)
    assert problem["errors"][0]["field"] == "url" and "private" in problem["detail"]
    unknown = client.post("/api/v1/webhook-endpoints/", {
        "url": "http://127.0.0.1:9/", "events": ["ticket.deleted"]},
        content_type="application/json", **bearer(key))
    assert unknown.status_code == 400 and problem_of(unknown)["errors"][0]["field"] \
        .startswith("events")
    with unscoped():
        assert not WebhookEndpoint.objects.exists()


def test_webhook_endpoints_need_an_admin_key(client, tenant, admin_user, receiver):
    endpoint = endpoint_for(tenant, receiver.url)
    for scope in ("read", "write"):
        _, key = make_key(tenant, admin_user, scope=scope, name=scope)
        for url in ("/api/v1/webhook-endpoints/", f"/api/v1/webhook-endpoints/{endpoint.pk}/",
                    f"/api/v1/webhook-endpoints/{endpoint.pk}/attempts/"):
            assert client.get(url, **bearer(key)).status_code == 403, (scope, url)


# ------------------------------------------------------------------------ the pages


def test_admins_add_test_rotate_and_see_attempts_on_the_settings_page(
        client, tenant, admin_user, receiver):
    client.force_login(admin_user)
    base = f"/{tenant.slug}/settings/webhooks/"
    page = client.get(base)
    assert page.status_code == 200 and b"No webhook endpoints yet" in page.content
    refused = client.post(base, {"url": "http://192.168.1.1/", "events": ["ticket.created"]})
    assert refused.status_code == 400 and b"private address" in refused.content
    added = client.post(base, {"url": receiver.url, "events": ["ticket.created"],
                               "description": "CRM"})
    with tenant_scope(tenant):
        endpoint = WebhookEndpoint.objects.get()
    assert added.status_code == 302 and added["Location"] == f"{base}{endpoint.pk}/"
    detail = client.get(f"{base}{endpoint.pk}/")
    secret = live_secrets(endpoint)[0]
    assert secret.encode() in detail.content and b"No attempts yet" in detail.content
    assert client.post(f"{base}{endpoint.pk}/test/").status_code == 302
    webhook_attempt(event_id=events_of(tenant)[0].pk)
    detail = client.get(f"{base}{endpoint.pk}/").content.decode()
    assert "webhook.test" in detail and "Delivered" in detail and ">204<" in detail
    client.post(f"{base}{endpoint.pk}/rotate/")
    with tenant_scope(tenant):
        endpoint.refresh_from_db()
    assert live_secrets(endpoint)[1] == secret
    assert "Previous secret" in client.get(f"{base}{endpoint.pk}/").content.decode()
    client.post(f"{base}{endpoint.pk}/disable/")
    with tenant_scope(tenant):
        endpoint.refresh_from_db()
    assert not endpoint.is_active
    assert client.post(f"{base}{endpoint.pk}/delete/").status_code == 302
    with tenant_scope(tenant):
        assert not WebhookEndpoint.objects.exists()


def test_agents_cannot_open_the_webhooks_page(agent_client, tenant, receiver):
    endpoint = endpoint_for(tenant, receiver.url)
    base = f"/{tenant.slug}/settings/webhooks/"
    assert agent_client.get(base).status_code == 403
    assert agent_client.get(f"{base}{endpoint.pk}/").status_code == 403
    assert agent_client.post(f"{base}{endpoint.pk}/rotate/").status_code == 403


def test_an_endpoint_whose_host_stopped_resolving_can_still_be_disabled(tenant, admin_user,
                                                                        receiver):
    endpoint = endpoint_for(tenant, receiver.url)
    with tenant_scope(tenant):
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url="http://gone.invalid/hook")
        endpoint.refresh_from_db()
        webhook_endpoint_update(endpoint=endpoint, actor=admin_user, is_active=False)
        endpoint.refresh_from_db()
        assert not endpoint.is_active and endpoint.disabled_reason == "Disabled by an admin."
        with pytest.raises(ApplicationError) as refused:
            webhook_endpoint_update(endpoint=endpoint, actor=admin_user,
                                    url="http://also-gone.invalid/")
    assert refused.value.field == "url" and "does not resolve" in refused.value.message


def test_finished_events_are_purged_after_the_retention_and_pending_ones_stay(tenant,
                                                                           receiver):
    endpoint_for(tenant, receiver.url)
    for title in ("old delivered", "recent delivered", "old pending"):
        new_ticket(tenant, title)
    old, recent, pending = events_of(tenant)
    webhook_attempt(event_id=old.pk)
    webhook_attempt(event_id=recent.pk)
    with unscoped():
        WebhookEvent.objects.filter(pk__in=[old.pk, pending.pk]).update(
            finished_at=timezone.now() - timedelta(days=31))
    assert webhooks_purge() >= 2  # the event and its attempt
    assert [e.pk for e in events_of(tenant)] == [recent.pk, pending.pk]
    with tenant_scope(tenant):
        assert list(WebhookAttempt.objects.values_list("event_id", flat=True)) == [recent.pk]
