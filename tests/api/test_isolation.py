"""The API's tenant-isolation matrix: every endpoint and method, with an admin key of
workspace A, against every object of workspace B (its ids in the URL, in filters and in
bodies). No B data in any answer and no B row changed. A new endpoint is walked
automatically; a URL keyword this file does not know fails the walk, so an endpoint
cannot ship without the check."""

from __future__ import annotations

import json

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from channels_email.models import EmailConnection, InboundEmail, SuppressedAddress
from contacts.models import Contact
from helpdesk.models import ApiKey, Membership, WebhookEndpoint, WebhookEvent
from helpdesk.tenancy import tenant_scope, unscoped
from routing.models import Flow, Rule, Team
from tests.api.test_foundation import bearer, make_key
from tests.factories import (
    AttachmentFactory,
    ContactFactory,
    EmailConnectionFactory,
    FlowFactory,
    InboundEmailFactory,
    MembershipFactory,
    MessageFactory,
    RuleFactory,
    TeamFactory,
    TicketFactory,
    UserFactory,
)
from tickets.models import Attachment, Message, Ticket

pytestmark = pytest.mark.django_db
MARK = "victimsecret"  # in every text field of B's objects
METHODS = ("get", "post", "patch", "put", "delete")


def _api_patterns():
    def walk(patterns, prefix="", namespace=""):
        for p in patterns:
            if isinstance(p, URLResolver):
                ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
                yield from walk(p.url_patterns, prefix + str(p.pattern), ns)
            elif isinstance(p, URLPattern) and namespace.startswith("api:"):
                yield namespace + p.name, p

    return list(walk(get_resolver().url_patterns))


def _victim(tenant, mark: str = MARK) -> dict:
    """Objects of ``tenant`` for every URL keyword, ``mark`` in each text field."""
    with tenant_scope(tenant):
        user = UserFactory(email=f"{mark}@victim.example", first_name=mark)
        MembershipFactory(tenant=tenant, user=user, role="admin")
        contact = ContactFactory(tenant=tenant, email=f"{mark}@customer.example", name=mark)
        tickets = [TicketFactory(tenant=tenant, contact=contact, title=f"{mark} {n}",
                                 tags=[mark]) for n in range(3)]
        MessageFactory(ticket=tickets[-1], body_text=mark)
        failed = MessageFactory(ticket=tickets[-1], kind="outbound", author_contact=None,
                                author_user=user, delivery_status="failed", body_text=mark,
                                delivery_error=mark, to_addresses=[contact.email])
        attachment = AttachmentFactory(message=failed, tenant=tenant, filename=f"{mark}.txt")
        team = TeamFactory(tenant=tenant, name=f"{mark} team")
        flow = FlowFactory(tenant=tenant, name=f"{mark} flow", fallback_team=team)
        RuleFactory(tenant=tenant, flow=flow, name=mark)
        connection = EmailConnectionFactory(tenant=tenant, address=f"{mark}@victim.example",
                                            last_error=mark)
        inbound = InboundEmailFactory(tenant=tenant, connection=connection, subject=mark,
                                      state="quarantined", reason=mark)
        suppression = SuppressedAddress.objects.create(tenant=tenant, reason="manual",
                                                       email=f"{mark}-s@example.net")
        make_key(tenant, user, scope="admin", name=mark)
        endpoint = WebhookEndpoint.objects.create(
            tenant=tenant, url=f"https://{mark}.example/hook", description=mark,
            events=["ticket.created"], secrets=[{"secret": "whsec_dmljdGlt", "expires_at": None}])
    return {"number": tickets[-1].number, "contact_id": contact.pk,
            "connection_id": connection.pk, "suppression_id": suppression.pk,
            "inbound_email_id": inbound.pk, "team": team.pk, "flow": flow.pk,
            "assignee": user.pk, "message_id": failed.pk, "attachment_id": attachment.pk,
            "webhook_endpoint_id": endpoint.pk}


def _snapshot(tenant) -> dict:
    """Everything of B an attack could change."""
    with tenant_scope(tenant):
        rows = {}
        for model in (Ticket, Message, Attachment, Contact, Team, Flow, Rule, EmailConnection,
                      InboundEmail, SuppressedAddress, ApiKey, Membership, WebhookEndpoint,
                      WebhookEvent):
            rows[model.__name__] = sorted(
                json.dumps(r, sort_keys=True, default=str)
                for r in model.objects.filter(tenant=tenant).values())
        return rows


def test_no_endpoint_shows_or_changes_another_workspaces_data(client, tenant, other_tenant,
                                                              admin_user):
    ids = _victim(other_tenant)
    before = _snapshot(other_tenant)
    _, key = make_key(tenant, admin_user, scope="admin")
    with tenant_scope(tenant):  # our own objects exist, with other numbers and ids
        TicketFactory(tenant=tenant)
    body = {"contact": ids["contact_id"], "team": ids["team"], "assignee": ids["assignee"],
            "ticket": ids["number"], "email": "made-by-a@example.net", "name": "x",
            "connection": ids["connection_id"], "status": "solved", "into": ids["number"],
            "subject": "x", "body": "x", "tags": ["x"]}
    filters = "&".join(f"{name}={ids[name]}" for name in ("team", "assignee"))
    filters += f"&contact={ids['contact_id']}&q={MARK}&tag={MARK}"
    walked = 0
    for name, pattern in _api_patterns():
        keywords = set(pattern.pattern.converters)
        unknown = keywords - set(ids)
        assert not unknown, f"{name}: add an object for URL keyword(s) {unknown}"
        url = reverse(name, kwargs={k: ids[k] for k in keywords})
        for method in METHODS:
            answer = client.generic(method.upper(), url + "?" + filters, json.dumps(body),
                                    content_type="application/json", **bearer(key))
            walked += 1
            assert answer.status_code < 500, (method, url, answer.content[:300])
            if name not in ("api:docs", "api:schema"):  # no data; the docs echo the query
                assert MARK.encode() not in answer.content, (method, url, answer.content[:300])
    assert walked >= 5 * 10
    assert _snapshot(other_tenant) == before


def test_another_workspaces_ids_in_bodies_link_nothing(client, tenant, other_tenant,
                                                       admin_user):
    """The same walk on the key's own objects, with B's ids in every body (and filters):
    whatever the endpoint does with its own object, it neither shows B's data nor links
    one of A's rows to one of B's, and B is unchanged."""
    theirs = _victim(other_tenant)
    before = _snapshot(other_tenant)
    ours = _victim(tenant, mark="ownobject")
    _, key = make_key(tenant, admin_user, scope="admin")
    body = {"contact": theirs["contact_id"], "team": theirs["team"],
            "assignee": theirs["assignee"], "ticket": theirs["number"],
            "into": theirs["number"], "connection": theirs["connection_id"],
            "reply_connection": theirs["connection_id"], "fallback_team": theirs["team"],
            "subject": "x", "body": "x", "status": "open", "email": "made-by-a@example.net"}
    filters = f"team={theirs['team']}&assignee={theirs['assignee']}" \
              f"&contact={theirs['contact_id']}&q={MARK}&tag={MARK}"
    for name, pattern in _api_patterns():
        url = reverse(name, kwargs={k: ours[k] for k in pattern.pattern.converters})
        for method in METHODS:
            answer = client.generic(method.upper(), url + "?" + filters, json.dumps(body),
                                    content_type="application/json", HTTP_IF_MATCH="*",
                                    **bearer(key))
            content = b"".join(answer.streaming_content) if answer.streaming \
                else answer.content  # our own attachment's file
            assert answer.status_code < 500, (method, url, content[:300])
            if name not in ("api:docs", "api:schema"):
                assert MARK.encode() not in content, (method, url, content[:300])
    assert _snapshot(other_tenant) == before
    with tenant_scope(tenant):
        tickets = Ticket.objects.filter(tenant=tenant)
        assert not tickets.filter(team_id=theirs["team"]).exists()
        assert not tickets.filter(assignee_id=theirs["assignee"]).exists()
        assert not tickets.filter(contact_id=theirs["contact_id"]).exists()
        assert not tickets.filter(merged_into__tenant=other_tenant).exists()
        assert not EmailConnection.objects.filter(
            tenant=tenant, reply_connection_id=theirs["connection_id"]).exists()
        # The walk did write where B's ids played no part (the note's body is "x").
        assert Message.objects.filter(tenant=tenant, kind="note", body_text="x").exists()


def test_a_read_only_key_changes_nothing_anywhere(client, tenant, admin_user):
    _, key = make_key(tenant, admin_user, scope="read")
    ids = _victim(tenant)  # this time the objects are the key's own workspace's
    with unscoped():
        ApiKey.objects.filter(tenant=tenant).exclude(scope="read").update(revoked_at=None)
    before = _snapshot(tenant)
    for name, pattern in _api_patterns():
        url = reverse(name, kwargs={k: ids[k] for k in pattern.pattern.converters})
        for method in ("post", "patch", "put", "delete"):
            answer = client.generic(method.upper(), url, json.dumps({"name": "changed"}),
                                    content_type="application/json", **bearer(key))
            assert answer.status_code in (403, 405), (method, url, answer.status_code)
    after = _snapshot(tenant)
    after["ApiKey"] = before["ApiKey"]  # last_used_at stamps are not a change of data
    assert after == before
