"""Tenant isolation: the scoped manager, the middleware, and a walk over every URL."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from channels_email.models import SuppressedAddress
from contacts.models import Contact
from helpdesk.models import Role, Tenant, WebhookEndpoint
from helpdesk.services import api_key_create, tenant_create
from helpdesk.tenancy import ScopeError, tenant_scope
from tests.factories import (
    AttachmentFactory,
    ContactFactory,
    EmailConnectionFactory,
    FlowFactory,
    InboundEmailFactory,
    InvitationFactory,
    MembershipFactory,
    MessageFactory,
    RuleFactory,
    TeamFactory,
    TicketFactory,
    UserFactory,
)
from tickets.models import Ticket

# The REST API (namespace "api:"): the workspace comes from the API key, never the URL;
# tests/api/test_isolation.py walks every one of its endpoints with another workspace's
# key and ids, the way the walk below does for the pages.
API_NAMESPACE = "api:"
# URL names that legitimately take no tenant: public, auth, operator or machine endpoints.
# A new pattern outside /<tenant_slug>/ must be added here on purpose, or this test fails.
UNSCOPED_URL_NAMES = {
    "home", "healthz", "favicon", "invitation_accept",
    "login", "logout", "password_change", "password_change_done", "password_reset",
    "password_reset_done", "password_reset_confirm", "password_reset_complete",
    # Provider webhooks: authenticated by the provider's signed token, not a session.
    "webhook_google_pubsub",
    # Graph's change and lifecycle notifications: each item carries its subscription's
    # clientState secret; the validation handshake is answered before anything else.
    "webhook_microsoft_graph", "webhook_microsoft_graph_lifecycle",
    # The OAuth redirect target: one fixed URL per provider; the signed state names the
    # tenant and the view checks the user is its admin.
    "oauth_callback",
    # Any /api/ URL that is no endpoint: a 404 problem document, whoever asks.
    "api_not_found",
}


def _walk(patterns, prefix="", namespace=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from _walk(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), (namespace + p.name) if p.name else None, p


def all_url_patterns():
    return [(route, name, p) for route, name, p in _walk(get_resolver().url_patterns)
            if not route.startswith("admin/")]


def tenant_object_kwargs(victim: Tenant) -> dict[str, int | str]:
    """One object of each kind that a tenant URL can name, all belonging to ``victim``.

    Every URL keyword besides tenant_slug must be listed here; an unknown keyword fails the
    walk below, so a new object page cannot ship without this isolation check.
    """
    # Several tickets so that the number used does not exist in the attacker's tenant.
    tickets = [TicketFactory(tenant=victim) for _ in range(3)]
    flow = FlowFactory(tenant=victim, fallback_team=TeamFactory(tenant=victim))
    return {
        "number": tickets[-1].number,
        "contact_id": ContactFactory(tenant=victim).pk,
        "invitation_id": InvitationFactory(tenant=victim).pk,
        "inbound_email_id": InboundEmailFactory(tenant=victim).pk,
        "connection_id": EmailConnectionFactory(tenant=victim).pk,
        "attachment_id": AttachmentFactory(message__ticket=tickets[-1],
                                           message__tenant=victim).pk,
        "message_id": MessageFactory(tenant=victim, ticket=tickets[-1], kind="outbound",
                                     delivery_status="failed").pk,
        "suppression_id": SuppressedAddress.objects.create(
            tenant=victim, email="bounced@example.net", reason="hard_bounce").pk,
        "team_id": flow.fallback_team_id,
        "flow_id": flow.pk,
        "rule_id": RuleFactory(tenant=victim, flow=flow).pk,
        "key_id": api_key_create(tenant=victim, actor=UserFactory(), name="Victim's",
                                 scope="admin")[0].pk,
        "endpoint_id": WebhookEndpoint.objects.create(
            tenant=victim, url="https://victim.example/hook", events=["ticket.created"],
            secrets=[{"secret": "whsec_dmljdGlt", "expires_at": None}]).pk,
        # Not an object, but a URL word: an unknown provider must be a 404 too.
        "provider": "no-such-provider",
    }


@pytest.mark.django_db
def test_every_url_is_tenant_scoped_or_explicitly_public():
    unscoped = sorted(
        f"{route} ({name})" for route, name, _ in all_url_patterns()
        if "<slug:tenant_slug>" not in route and name not in UNSCOPED_URL_NAMES
        and not (name or "").startswith(API_NAMESPACE)
    )
    assert unscoped == [], "URL patterns outside /<tenant_slug>/ that nobody declared public"


@pytest.mark.django_db
def test_member_of_a_gets_404_for_every_object_of_b(client):
    tenant_a, tenant_b = tenant_create(slug="alpha", name="A"), tenant_create(slug="beta", name="B")
    attacker = UserFactory()
    MembershipFactory(tenant=tenant_a, user=attacker, role=Role.ADMIN)
    client.force_login(attacker)
    b_objects = tenant_object_kwargs(tenant_b)

    checked = 0
    for route, name, _pattern in all_url_patterns():
        if "<slug:tenant_slug>" not in route:
            continue
        keys = [k for k in _pattern.pattern.converters if k != "tenant_slug"]
        if not keys:
            continue
        unknown = [k for k in keys if k not in b_objects]
        assert not unknown, f"{route}: add {unknown} to tenant_object_kwargs()"
        kwargs = {k: b_objects[k] for k in keys}
        for slug in (tenant_a.slug, tenant_b.slug):
            url = reverse(name, kwargs={"tenant_slug": slug, **kwargs})
            get, post = client.get(url), client.post(url)
            assert get.status_code in (404, 405), f"GET {url} -> {get.status_code}"
            assert post.status_code in (404, 405), f"POST {url} -> {post.status_code}"
            assert 404 in (get.status_code, post.status_code), url
        checked += 1
    assert checked >= 3
    # Nothing of B was changed by the attempts (e.g. the revoke POST).
    with tenant_scope(tenant_b):
        from helpdesk.models import Invitation

        assert Invitation.objects.filter(pk=b_objects["invitation_id"]).exists()
        assert SuppressedAddress.objects.filter(pk=b_objects["suppression_id"]).exists()
        from routing.models import Flow, Rule, Team

        assert Team.objects.filter(pk=b_objects["team_id"]).exists()
        assert Flow.objects.filter(pk=b_objects["flow_id"]).exists()
        assert Rule.objects.filter(pk=b_objects["rule_id"]).exists()


@pytest.mark.django_db
def test_every_tenant_page_404s_for_non_members_and_redirects_anonymous(client):
    tenant = tenant_create(slug="gamma", name="G")
    outsider = UserFactory()
    pages = [reverse(name, kwargs={"tenant_slug": tenant.slug})
             for route, name, p in all_url_patterns()
             if "<slug:tenant_slug>" in route and list(p.pattern.converters) == []]
    assert pages
    for url in pages:
        assert client.get(url).status_code == 302
        assert "/accounts/login/" in client.get(url)["Location"]
    client.force_login(outsider)
    for url in pages + ["/no-such-tenant/tickets/"]:
        assert client.get(url).status_code == 404, url


@pytest.mark.django_db
def test_scoped_manager_refuses_queries_without_a_scope(tenant, other_tenant):
    mine = ContactFactory(tenant=tenant)
    ContactFactory(tenant=other_tenant)
    with pytest.raises(ScopeError):
        list(Contact.objects.all())
    with pytest.raises(ScopeError):
        Ticket.objects.filter(number=1).exists()
    with tenant_scope(tenant):
        assert list(Contact.objects.all()) == [mine]
        # Even an explicit filter on the other tenant cannot escape the scope.
        assert not Contact.objects.filter(tenant=other_tenant).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("slug", ["admin", "api", "webhooks", "static", "media", "accounts",
                                  "sandbox", "Admin"])
def test_reserved_slugs_are_refused(slug):
    with pytest.raises(ValidationError):
        tenant_create(slug=slug, name="x")


@pytest.mark.django_db
def test_user_in_two_tenants_sees_each_and_the_switcher(client):
    a, b = tenant_create(slug="one", name="One Inc"), tenant_create(slug="two", name="Two Ltd")
    user = UserFactory()
    MembershipFactory(tenant=a, user=user)
    MembershipFactory(tenant=b, user=user)
    ticket_b = TicketFactory(tenant=b, title="Only in two")
    client.force_login(user)
    page = client.get("/one/tickets/").content.decode()
    assert "Two Ltd" in page and "One Inc" in page  # switcher lists both
    assert "Only in two" not in page
    assert "Only in two" in client.get("/two/tickets/?view=all").content.decode()
    assert client.get(f"/two/tickets/{ticket_b.number}/").status_code == 200
    assert client.get("/").status_code == 200  # chooser, since there are two


def test_every_tenant_owned_model_has_an_index_led_by_tenant():
    """TenantOwnedModel.tenant has no index of its own; this one must cover it."""
    from django.apps import apps

    from helpdesk.tenancy import TenantOwnedModel

    # EmailThreadRef: an index led by the tenant gave the ingest's lookup by Message-IDs a
    # plan that read the whole workspace (channels_email/migrations/0010); its rows are
    # reached through their ticket on a workspace's deletion.
    exempt = {"EmailThreadRef"}
    for model in apps.get_models():
        if not issubclass(model, TenantOwnedModel) or model.__name__ in exempt:
            continue
        leading = [c for c in model._meta.constraints
                   if getattr(c, "fields", ()) and c.fields[0] == "tenant"
                   and getattr(c, "condition", None) is None]
        leading += [i for i in model._meta.indexes if i.fields and i.fields[0] == "tenant"
                    and i.condition is None]
        assert leading, f"{model.__name__} needs an index or unique constraint led by tenant"


@pytest.mark.django_db
def test_every_page_carries_a_strict_content_security_policy(client, agent, tenant):
    client.force_login(agent)
    for url in ("/accounts/login/", f"/{tenant.slug}/tickets/"):
        policy = client.get(url).headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "object-src 'none'" in policy
        assert "unsafe-inline" not in policy
    page = client.get(f"/{tenant.slug}/tickets/").content.decode()
    assert " onchange=" not in page and " onclick=" not in page
