"""Teams, flows, members, email connections (health, never a secret), the suppression
list and the inbound mail log over the API."""

from __future__ import annotations

import pytest

from channels_email.models import InboundEmail, SuppressedAddress
from helpdesk.models import AuditEvent
from helpdesk.tenancy import tenant_scope
from tests.api.test_foundation import bearer, make_key, problem_of
from tests.factories import (
    EmailConnectionFactory,
    FlowFactory,
    InboundEmailFactory,
    RuleFactory,
    TeamFactory,
    TeamMemberFactory,
)

pytestmark = pytest.mark.django_db


def test_teams_flows_and_members(client, tenant, admin_user, agent):
    _, key = make_key(tenant, admin_user)
    with tenant_scope(tenant):
        billing = TeamFactory(tenant=tenant, name="Billing")
        TeamMemberFactory(tenant=tenant, team=billing, user=agent)
        flow = FlowFactory(tenant=tenant, name="Triage", fallback_team=billing)
        RuleFactory(tenant=tenant, flow=flow, name="Refunds", position=0)
    [team] = client.get("/api/v1/teams/", **bearer(key)).json()["results"]
    assert team["name"] == "Billing" and [m["id"] for m in team["members"]] == [agent.pk]
    [triage] = client.get("/api/v1/flows/", **bearer(key)).json()["results"]
    assert triage["fallback_team"] == billing.pk
    assert [r["name"] for r in triage["rules"]] == ["Refunds"]
    members = client.get("/api/v1/members/", **bearer(key)).json()["results"]
    assert {(m["email"], m["role"]) for m in members} == {(admin_user.email, "admin"),
                                                          (agent.email, "agent")}


def test_connections_show_health_and_never_a_secret(client, tenant, admin_user):
    _, key = make_key(tenant, admin_user)
    with tenant_scope(tenant):
        conn = EmailConnectionFactory(
            tenant=tenant, provider="gmail", status="token_expired", consecutive_errors=2,
            last_error="AuthError: invalid_grant", cursor="12345",
            credentials={"access_token": "ya29.secret-access", "refresh_token": "1//secret"})
    listed = client.get("/api/v1/email-connections/", **bearer(key))
    assert listed.status_code == 200
    [row] = listed.json()["results"]
    assert row["status"] == "token_expired" and row["consecutive_errors"] == 2
    assert row["last_error"] == "AuthError: invalid_grant" and row["last_error_past"] is False
    one = client.get(f"/api/v1/email-connections/{conn.pk}/", **bearer(key))
    for text in (listed.content, one.content):
        assert b"secret" not in text and b"12345" not in text and b"credentials" not in text


def test_suppressions_and_the_inbound_log_need_an_admin_key(client, tenant, admin_user):
    _, write = make_key(tenant, admin_user, scope="write")
    _, admin = make_key(tenant, admin_user, scope="admin", name="Ops")
    for url in ("/api/v1/suppressions/", "/api/v1/inbound-emails/"):
        refused = client.get(url, **bearer(write))
        assert refused.status_code == 403 and "admin" in problem_of(refused)["detail"]
    added = client.post("/api/v1/suppressions/", {"email": "Gone@Example.NET"},
                        content_type="application/json", **bearer(admin))
    assert added.status_code == 201 and added.json()["email"] == "gone@example.net"
    again = client.post("/api/v1/suppressions/", {"email": "gone@example.net"},
                        content_type="application/json", **bearer(admin))
    assert again.status_code == 200 and again.json()["id"] == added.json()["id"]
    bad = client.post("/api/v1/suppressions/", {"email": "not-an-address"},
                      content_type="application/json", **bearer(admin))
    assert bad.status_code == 400 and problem_of(bad)["errors"][0]["field"] == "email"
    listed = client.get("/api/v1/suppressions/", **bearer(admin)).json()["results"]
    assert [s["email"] for s in listed] == ["gone@example.net"]
    entry = added.json()["id"]
    assert client.delete(f"/api/v1/suppressions/{entry}/", **bearer(admin)).status_code == 204
    assert client.delete(f"/api/v1/suppressions/{entry}/", **bearer(admin)).status_code == 404
    with tenant_scope(tenant):
        assert not SuppressedAddress.objects.exists()
        assert AuditEvent.objects.filter(action="suppression.removed", actor=admin_user).exists()


def test_the_inbound_log_and_reprocess(client, tenant, admin_user):
    _, admin = make_key(tenant, admin_user, scope="admin")
    with tenant_scope(tenant):
        conn = EmailConnectionFactory(tenant=tenant)
        stuck = InboundEmailFactory(
            tenant=tenant, connection=conn, state="failed", reason="worker crashed",
            content=b"From: Maria <maria@customer.example>\r\nTo: " + conn.address.encode()
            + b"\r\nSubject: Printer\r\nMessage-ID: <p1@customer.example>\r\n\r\nHelp\r\n")
        InboundEmailFactory(tenant=tenant, connection=conn, state="processed")
    everything = client.get("/api/v1/inbound-emails/", **bearer(admin)).json()["results"]
    assert len(everything) == 2
    failed = client.get("/api/v1/inbound-emails/?state=failed", **bearer(admin)).json()
    assert [r["id"] for r in failed["results"]] == [stuck.pk]
    wrong = client.get("/api/v1/inbound-emails/?state=lost", **bearer(admin))
    assert wrong.status_code == 400 and problem_of(wrong)["errors"][0]["field"] == "state"
    redone = client.post(f"/api/v1/inbound-emails/{stuck.pk}/reprocess/", **bearer(admin))
    assert redone.status_code == 200 and redone.json()["state"] == "processed"
    assert redone.json()["ticket"] is not None
    with tenant_scope(tenant):
        assert InboundEmail.objects.get(pk=stuck.pk).state == "processed"


def test_connection_flags_are_the_health_pages(client, tenant, admin_user):
    from datetime import timedelta

    from django.utils import timezone

    _, key = make_key(tenant, admin_user)
    long_ago = timezone.now() - timedelta(hours=2)
    with tenant_scope(tenant):
        EmailConnectionFactory(tenant=tenant, provider="gmail", status="active",
                               consecutive_errors=6, last_sync_at=long_ago,
                               last_error="TransientError: 503", last_error_at=timezone.now(),
                               subscription_expires_at=long_ago)
    [row] = client.get("/api/v1/email-connections/", **bearer(key)).json()["results"]
    assert {flag["name"] for flag in row["flags"]} == {"not_syncing", "failing",
                                                       "watch_expired"}
    assert all(flag["detail"] for flag in row["flags"])
