"""Sign-in, throttling, password reset and invitations."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from helpdesk.models import AuditEvent, Invitation, Membership, Role, User
from helpdesk.tenancy import tenant_scope, unscoped
from tests.factories import PASSWORD, InvitationFactory, UserFactory


@pytest.fixture(autouse=True)
def _fresh_cache():
    from django.core.cache import cache

    cache.clear()


@pytest.mark.django_db
def test_sign_in_with_email_lands_on_the_only_workspace(client, tenant, agent):
    response = client.post("/accounts/login/", {"username": agent.email.upper(),
                                                "password": PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0] == f"/{tenant.slug}/tickets/"


@pytest.mark.django_db
def test_repeated_failures_lock_the_account_for_that_address(client, agent):
    for _ in range(4):
        assert client.post("/accounts/login/", {"username": agent.email,
                                                "password": "wrong"}).status_code == 200
    # The fifth failure locks the pair out, and then even the right password is refused.
    assert client.post("/accounts/login/", {"username": agent.email,
                                            "password": "wrong"}).status_code == 429
    locked = client.post("/accounts/login/", {"username": agent.email, "password": PASSWORD})
    assert locked.status_code == 429
    assert "Too many sign-in attempts" in locked.content.decode()
    # Someone else from the same address is not locked out.
    other = UserFactory()
    ok = client.post("/accounts/login/", {"username": other.email, "password": PASSWORD})
    assert ok.status_code == 302


@pytest.mark.django_db
def test_password_reset_sends_a_working_link(client, agent):
    client.post("/accounts/password_reset/", {"email": agent.email})
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    new = "a brand new passphrase 42"
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert done.status_code == 302
    agent.refresh_from_db()
    assert agent.check_password(new)


@pytest.mark.django_db
def test_admin_invites_and_the_link_creates_a_member(client, tenant, admin_user,
                                                    django_capture_on_commit_callbacks):
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/{tenant.slug}/settings/members/",
                               {"email": "New.Agent@Example.com", "role": Role.AGENT})
    assert response.status_code == 302
    assert mail.outbox[0].to == ["new.agent@example.com"]
    link = re.search(r"http://localhost:8000(/accounts/invite/\S+/)", mail.outbox[0].body).group(1)
    client.logout()

    assert client.get(link).status_code == 200
    bad = client.post(link, {"password1": "short", "password2": "short"})
    assert bad.status_code == 200 and bad.context["form"].errors
    password = "welcome aboard 2026!"
    joined = client.post(link, {"first_name": "Nia", "password1": password,
                                "password2": password}, follow=True)
    assert joined.redirect_chain[-1][0] == f"/{tenant.slug}/tickets/"
    user = User.objects.get(email="new.agent@example.com")
    assert user.check_password(password) and user.first_name == "Nia"
    with tenant_scope(tenant):
        assert Membership.objects.get(user=user).role == Role.AGENT
        assert set(AuditEvent.objects.values_list("action", flat=True)) == {
            "invitation.created", "invitation.accepted"}
    client.logout()
    assert client.get(link).status_code == 404  # one use only


@pytest.mark.django_db
def test_agents_cannot_invite(agent_client, tenant):
    response = agent_client.post(f"/{tenant.slug}/settings/members/",
                                 {"email": "x@example.com", "role": Role.ADMIN})
    assert response.status_code == 403
    with unscoped():
        assert not Invitation.objects.exists()
    assert mail.outbox == []


@pytest.mark.django_db
def test_inviting_an_existing_member_is_refused(client, tenant, admin_user, agent):
    client.force_login(admin_user)
    response = client.post(f"/{tenant.slug}/settings/members/",
                           {"email": agent.email, "role": Role.AGENT})
    assert response.status_code == 200
    assert "already a member" in response.content.decode()


@pytest.mark.django_db
def test_expired_invitation_is_refused(client, tenant):
    InvitationFactory(tenant=tenant, token="old", expires_at=timezone.now() - timedelta(hours=1))
    assert client.get("/accounts/invite/old/").status_code == 404


@pytest.mark.django_db
def test_signed_in_user_joins_a_second_workspace(client, tenant, other_tenant, agent):
    InvitationFactory(tenant=other_tenant, token="join", email=agent.email, role=Role.ADMIN)
    client.force_login(agent)
    response = client.post("/accounts/invite/join/")
    assert response.status_code == 302
    with tenant_scope(other_tenant):
        assert Membership.objects.get(user=agent).role == Role.ADMIN


@pytest.mark.django_db
def test_invitation_for_someone_else_is_refused_when_signed_in(client, tenant, agent):
    InvitationFactory(tenant=tenant, token="theirs", email="someone@else.example")
    client.force_login(agent)
    response = client.post("/accounts/invite/theirs/", follow=True)
    assert "This invitation is for someone@else.example" in response.content.decode()


@pytest.mark.django_db
def test_admin_site_is_for_superusers_only(client, admin_user):
    client.force_login(admin_user)  # a tenant admin, not an operator
    assert client.get("/admin/").status_code == 302
    operator = UserFactory(is_superuser=True, is_staff=True)
    client.force_login(operator)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/tickets/ticket/").status_code == 200
