"""Connecting a Microsoft 365 mailbox in the browser (Django's test client and the
sandbox's sign-in pages) through the real msal over the sandbox's TLS: the auth code flow
with PKCE and nonce, the per-mailbox token cache stored encrypted, the address from Graph
/me, the state bound to the session, consent errors in words an admin can act on; then
token care: refresh under the lock with the rotated cache saved, a revoked or idle grant
is Token Expired with its reason, Disconnect drops the cache and says where Microsoft's
permissions are removed."""

from __future__ import annotations

import json
import logging
import urllib.parse
from datetime import timedelta

import pytest
import requests
from django.db import connection as db_connection
from django.utils import timezone

from channels_email import connect, health
from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.tokens import ensure_fresh_token
from helpdesk.models import AuditEvent
from helpdesk.tenancy import tenant_scope
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from tests.sandbox_support import (
    MS_CLIENT_ID,
    ms_mailbox,
    ms_register,
    ms_sign_in,
    use_sandbox_microsoft,
)

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.filterwarnings("ignore:response_mode='form_post':UserWarning")]
CALLBACK = "http://testserver/oauth/microsoft/callback/"


@pytest.fixture
def ms(settings, sandbox, sandbox_https_url, sandbox_ca_file):
    use_sandbox_microsoft(settings, sandbox, sandbox_https_url, sandbox_ca_file)
    ms_mailbox(sandbox, "support@contoso.test", "contoso")
    ms_mailbox(sandbox, "help@fabrikam.test", "fabrikam")
    ms_mailbox(sandbox, "admin@fabrikam.test", "fabrikam")
    return sandbox


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def start(client, tenant):
    answer = client.post(f"/{tenant.slug}/settings/email/connect/microsoft/")
    assert answer.status_code == 302, answer.content
    return answer["Location"]


def back(client, query: dict):
    return client.get("/oauth/microsoft/callback/?" + urllib.parse.urlencode(query))


def connect_mailbox(client, tenant, address="support@contoso.test", decision="accept"):
    query = ms_sign_in(start(client, tenant), address, decision=decision)
    assert isinstance(query, dict), query.text
    return back(client, query)


def test_connect_stores_an_encrypted_token_cache_and_audits(ms, admin_client, tenant,
                                                            settings):
    auth_uri = start(admin_client, tenant)
    parts = urllib.parse.urlsplit(auth_uri)
    params = dict(urllib.parse.parse_qsl(parts.query))
    # msal's flow: our signed state, PKCE S256, a nonce, the three Graph scopes and the
    # ones msal adds itself; the page on the sandbox's plain-http side.
    assert auth_uri.startswith(ms + "/organizations/oauth2/v2.0/authorize?")
    assert params["code_challenge_method"] == "S256" and params["nonce"]
    assert set(params["scope"].split()) == {"Mail.Read", "Mail.Send", "User.Read",
                                            "offline_access", "openid", "profile"}
    assert ms in admin_client.get(f"/{tenant.slug}/settings/email/")[
        "Content-Security-Policy"]
    answer = back(admin_client, ms_sign_in(auth_uri, "support@contoso.test"))
    assert answer.status_code == 302
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get()
        assert (conn.provider, conn.address, conn.status) == (
            "microsoft", "support@contoso.test", ConnectionStatus.ACTIVE)
        cache = json.loads(conn.credentials["token_cache"])
        assert cache["RefreshToken"] and cache["Account"]
        assert conn.credentials["account"] and conn.credentials["access_token"]
        assert AuditEvent.objects.filter(action="email_connection.connected",
                                         details__provider="microsoft").exists()
    with db_connection.cursor() as cur:  # encrypted at rest
        cur.execute("SELECT credentials::text FROM channels_email_emailconnection")
        stored = cur.fetchone()[0]
    assert "RefreshToken" not in stored and conn.credentials["access_token"] not in stored


def test_state_is_bound_to_the_session_and_single_use(ms, admin_client, tenant):
    from django.test import Client

    query = ms_sign_in(start(admin_client, tenant), "support@contoso.test")
    other_admin = UserFactory()
    MembershipFactory(tenant=tenant, user=other_admin, role="admin")
    client = Client()
    client.force_login(other_admin)  # another session with the same link
    assert back(client, query).status_code == 400
    assert back(admin_client, query).status_code == 302
    replay = back(admin_client, query)
    assert replay.status_code == 400
    with tenant_scope(tenant):
        assert EmailConnection.objects.count() == 1


def test_a_mailbox_connected_in_another_workspace_is_refused(ms, admin_client, tenant):
    from django.test import Client

    assert connect_mailbox(admin_client, tenant).status_code == 302
    other = TenantFactory()
    user = UserFactory()
    MembershipFactory(tenant=other, user=user, role="admin")
    client = Client()
    client.force_login(user)
    answer = connect_mailbox(client, other)
    page = client.get(answer["Location"]).content.decode()
    assert "already connected in another workspace" in page
    with tenant_scope(other):
        assert not EmailConnection.objects.exists()


def test_need_admin_approval_shows_the_admin_consent_link(ms, admin_client, tenant):
    answer = connect_mailbox(admin_client, tenant, "help@fabrikam.test", decision="return")
    assert answer.status_code == 403
    page = answer.content.decode()
    assert "AADSTS90094" in page and "Grant admin consent for your organization" in page
    import html
    import re

    link = html.unescape(re.search(r'href="([^"]*adminconsent[^"]*)"', page).group(1))
    assert link.startswith(ms + "/organizations/v2.0/adminconsent?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query))
    assert query["client_id"] == MS_CLIENT_ID and query["redirect_uri"] == CALLBACK

    # The admin follows it; Microsoft sends them back to our callback, which says so and
    # needs no helpdesk login; then the user connects without a consent screen.
    session = requests.Session()
    url, query = link.split("?", 1)
    params = dict(urllib.parse.parse_qsl(query))
    session.get(link, timeout=5)
    session.post(url, data={**params, "email": "admin@fabrikam.test"}, timeout=5)
    done = session.post(url, data={**params, "email": "admin@fabrikam.test",
                                   "decision": "accept"}, allow_redirects=False, timeout=5)
    returned = urllib.parse.urlsplit(done.headers["Location"])
    from django.test import Client

    notice = Client().get(returned.path + "?" + returned.query)
    assert notice.status_code == 200
    assert "Microsoft 365 permissions for the organization" in notice.content.decode()
    # Not signed in here: the page points at the sign-in; a helpdesk admin who is signed
    # in gets the way to each of their workspaces' Email channels.
    assert 'href="/accounts/login/"' in notice.content.decode()
    signed_in = admin_client.get(returned.path + "?" + returned.query).content.decode()
    assert f'href="/{tenant.slug}/settings/email/"' in signed_in
    assert connect_mailbox(admin_client, tenant, "help@fabrikam.test").status_code == 302
    with tenant_scope(tenant):
        assert EmailConnection.objects.get().address == "help@fabrikam.test"


def test_consent_required_at_the_token_endpoint_shows_the_admin_consent_link(
        ms, admin_client, tenant):
    requests.post(ms + "/_sandbox/faults", json={"kind": "consent_required", "count": 1},
                  timeout=5).raise_for_status()
    answer = connect_mailbox(admin_client, tenant)
    page = answer.content.decode()
    assert answer.status_code == 403 and "AADSTS65001" in page and "adminconsent" in page


def test_declined_wrong_account_and_bad_secret(ms, admin_client, tenant, caplog):
    answer = connect_mailbox(admin_client, tenant, decision="deny")
    page = admin_client.get(answer["Location"]).content.decode()
    assert "permissions were declined" in page

    query = ms_sign_in(start(admin_client, tenant), "someone@outlook.com")
    page = admin_client.get(back(admin_client, query)["Location"]).content.decode()
    assert "work or school" in page

    ms_register(ms, [CALLBACK], secret_expired=True)
    with caplog.at_level(logging.ERROR, logger="channels_email.providers.microsoft.identity"):
        answer = connect_mailbox(admin_client, tenant)
    page = admin_client.get(answer["Location"]).content.decode()
    assert "AADSTS7000222" in page and "MS_CLIENT_SECRET" in page
    assert any("client_secret_rejected" in r.getMessage() for r in caplog.records)
    with tenant_scope(tenant):
        assert not EmailConnection.objects.exists()


def _connected(client, tenant) -> EmailConnection:
    assert connect_mailbox(client, tenant).status_code == 302
    with tenant_scope(tenant):
        return EmailConnection.objects.get()


def _expire_soon(conn: EmailConnection) -> None:
    conn.credentials = {**conn.credentials,
                        "expires_at": (timezone.now() + timedelta(minutes=1)).isoformat()}
    conn.save(update_fields=["credentials"])


def _refresh_fails(conn: EmailConnection, tenant) -> None:
    """The token is due: its refresh is refused (an AuthError), and health records it."""
    from channels_email import providers

    _expire_soon(conn)
    with tenant_scope(tenant):
        with pytest.raises(providers.AuthError) as caught:
            ensure_fresh_token(conn)
        health.record_error(conn, caught.value)
        conn.refresh_from_db()


def test_refresh_before_expiry_saves_the_rotated_cache(ms, admin_client, tenant):
    conn = _connected(admin_client, tenant)
    before = conn.credentials
    with tenant_scope(tenant):
        assert ensure_fresh_token(conn) is False  # an hour left: nothing to do
        _expire_soon(conn)
        assert ensure_fresh_token(conn) is True
        conn.refresh_from_db()
    after = conn.credentials
    assert after["access_token"] != before["access_token"]
    old_rt = next(iter(json.loads(before["token_cache"])["RefreshToken"].values()))["secret"]
    new_rt = next(iter(json.loads(after["token_cache"])["RefreshToken"].values()))["secret"]
    assert new_rt != old_rt and after["account"] == before["account"]
    me = requests.get(ms + "/_sandbox/state", timeout=5).json()["refresh_tokens"]
    assert me[new_rt]["email"] == "support@contoso.test"


@pytest.mark.parametrize(("fault", "words"), [
    (None, "AADSTS50173"),  # the grant was revoked
    ("idle_refresh_token", "AADSTS700082"),
    ("interaction_required", "sign in again"),
])
def test_a_dead_grant_is_token_expired_with_its_reason(ms, admin_client, tenant, fault,
                                                      words):
    conn = _connected(admin_client, tenant)
    if fault:
        requests.post(ms + "/_sandbox/faults", json={"kind": fault, "count": 1},
                      timeout=5).raise_for_status()
    else:
        requests.post(ms + "/_sandbox/revoke-all", json={"email": conn.address},
                      timeout=5).raise_for_status()
    _refresh_fails(conn, tenant)
    assert conn.status == ConnectionStatus.TOKEN_EXPIRED and words in conn.last_error
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "Token expired" in page or "Token Expired" in page
    assert words in page


def test_consent_withdrawn_at_refresh_links_the_admin_consent_page(ms, admin_client, tenant):
    import html
    import re

    conn = _connected(admin_client, tenant)
    requests.post(ms + "/_sandbox/microsoft/withdraw-consent", json={"tenant": "contoso"},
                  timeout=5).raise_for_status()
    _refresh_fails(conn, tenant)
    assert conn.status == ConnectionStatus.TOKEN_EXPIRED and "AADSTS65001" in conn.last_error
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    found = re.search(r'<a class="button" href="([^"]*)"[^>]*>Grant admin consent for your '
                      r'organization</a>', page)
    assert found, page
    link = html.unescape(found.group(1))
    assert link.startswith(ms + "/organizations/v2.0/adminconsent?") and link in conn.last_error
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query))
    assert query["client_id"] == MS_CLIENT_ID and query["redirect_uri"] == CALLBACK

    # An admin of the organization follows it and is sent back to our callback, which
    # says the permissions were granted; Reconnect then signs the mailbox in again.
    ms_mailbox(ms, "admin@contoso.test", "contoso")
    url, encoded = link.split("?", 1)
    params = dict(urllib.parse.parse_qsl(encoded))
    session = requests.Session()
    session.get(link, timeout=5)
    session.post(url, data={**params, "email": "admin@contoso.test"}, timeout=5)
    done = session.post(url, data={**params, "email": "admin@contoso.test",
                                   "decision": "accept"}, allow_redirects=False, timeout=5)
    returned = urllib.parse.urlsplit(done.headers["Location"])
    notice = admin_client.get(returned.path + "?" + returned.query)
    assert "Microsoft 365 permissions for the organization" in notice.content.decode()
    assert connect_mailbox(admin_client, tenant).status_code == 302
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.ACTIVE
    page = admin_client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert "Grant admin consent for your organization" not in page


def test_an_error_link_elsewhere_than_the_sign_in_origin_is_not_linked(ms):
    from channels_email import providers

    text = ("AuthError: The organization's consent for this app was withdrawn (AADSTS65001):"
            " ... at https://evil.example/organizations/v2.0/adminconsent?client_id=x then")
    assert providers.error_help("microsoft", ConnectionStatus.TOKEN_EXPIRED, text) is None
    assert providers.error_help("microsoft", ConnectionStatus.ACTIVE, text) is None


def test_reconnect_and_disconnect(ms, admin_client, tenant):
    conn = _connected(admin_client, tenant)
    with tenant_scope(tenant):
        health.record_error(conn, connect.providers.AuthError("gone", reason="invalid_grant"))
    # Reconnect signs in with the mailbox as the login hint: straight back, consented.
    answer = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/reconnect/")
    query = ms_sign_in(answer["Location"], conn.address)
    assert back(admin_client, query).status_code == 302
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.ACTIVE
    answer = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/disconnect/")
    page = admin_client.get(answer["Location"]).content.decode()
    assert "is disconnected. Its tickets stay." in page and "Enterprise applications" in page
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.DISCONNECTED and conn.credentials is None


def test_beat_refreshes_once_under_the_lock_however_many_workers_ask(ms, admin_client, tenant):
    import threading

    from django.db import connections

    from channels_email.tasks import refresh_tokens

    conn = _connected(admin_client, tenant)

    def issued() -> int:
        state = requests.get(ms + "/_sandbox/state", timeout=5).json()
        return sum(1 for r in state["refresh_tokens"].values()
                   if r["email"] == conn.address and r.get("provider") == "microsoft")

    before = issued()
    conn.credentials = {**conn.credentials,
                        "expires_at": (timezone.now() + timedelta(minutes=10)).isoformat()}
    conn.save(update_fields=["credentials"])
    results, barrier = [], threading.Barrier(4)

    def worker():
        try:
            barrier.wait()
            with tenant_scope(tenant):
                results.append(ensure_fresh_token(EmailConnection.objects.get(pk=conn.pk),
                                                  timedelta(minutes=15)))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    assert issued() == before + 1  # one refresh reached Microsoft
    with tenant_scope(tenant):
        conn.refresh_from_db()
        stored = conn.credentials["token_cache"]
        _expire_soon(conn)
    assert refresh_tokens.run() == 1  # beat's sweep: Microsoft mailboxes too
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.credentials["token_cache"] != stored and issued() == before + 2
