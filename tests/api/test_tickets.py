"""Tickets over the API: one ticket and its timeline (messages, notes, delivery status,
attachments, the inbound email's DMARC verdict), at a constant query count."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from helpdesk.tenancy import tenant_scope
from tests.api.test_foundation import bearer, make_key
from tests.factories import (
    AttachmentFactory,
    InboundEmailFactory,
    MessageFactory,
    TicketFactory,
)

pytestmark = pytest.mark.django_db


def _conversation(tenant, agent, replies: int):
    ticket = TicketFactory(tenant=tenant, title="Printer on fire", tags=["hardware"])
    inbound = MessageFactory(ticket=ticket, kind="inbound", body_text="It burns.")
    InboundEmailFactory(tenant=tenant, message=inbound, ticket=ticket,
                        connection__tenant=tenant, details={"dmarc": "pass"})
    AttachmentFactory(message=inbound, tenant=tenant)
    for n in range(replies):
        MessageFactory(ticket=ticket, kind="outbound", author_contact=None, author_user=agent,
                       delivery_status="delivered", to_addresses=[ticket.contact.email],
                       body_text=f"Reply {n}")
    MessageFactory(ticket=ticket, kind="note", author_contact=None, author_user=agent,
                   body_text="Internal: call them.")
    return ticket


def test_one_ticket_and_its_timeline(client, tenant, admin_user, agent):
    _, key = make_key(tenant, admin_user)
    with tenant_scope(tenant):
        ticket = _conversation(tenant, agent, replies=2)
    detail = client.get(f"/api/v1/tickets/{ticket.number}/", **bearer(key)).json()
    assert detail["title"] == "Printer on fire" and detail["tags"] == ["hardware"]
    assert detail["contact"]["email"] == ticket.contact.email
    assert detail["created_at"].endswith("Z")  # ISO 8601, UTC
    timeline = client.get(f"/api/v1/tickets/{ticket.number}/timeline/", **bearer(key))
    entries = timeline.json()["results"]
    assert [e["kind"] for e in entries] == ["inbound", "outbound", "outbound", "note"]
    first = entries[0]
    assert first["dmarc"] == "pass" and first["author"]["type"] == "contact"
    assert [a["filename"] for a in first["attachments"]] == ["invoice.pdf"]
    assert entries[1]["delivery_status"] == "delivered"
    assert entries[1]["author"] == {"type": "agent", "id": agent.pk, "email": agent.email,
                                    "name": agent.display_name}
    assert entries[3]["body_text"] == "Internal: call them."


def test_the_timeline_costs_the_same_for_3_and_60_messages(client, tenant, admin_user, agent):
    _, key = make_key(tenant, admin_user)
    client.get("/api/v1/tickets/", **bearer(key))  # stamps last_used (once a minute)
    costs = []
    with tenant_scope(tenant):
        small = _conversation(tenant, agent, replies=1)
        large = _conversation(tenant, agent, replies=58)
    for ticket in (small, large):
        with CaptureQueriesContext(connection) as queries:
            answer = client.get(f"/api/v1/tickets/{ticket.number}/timeline/?page_size=100",
                                **bearer(key))
        assert answer.status_code == 200
        costs.append(len(queries))
    assert costs[0] == costs[1]


def test_another_workspaces_ticket_and_timeline_are_404(client, tenant, other_tenant,
                                                        admin_user, agent):
    _, key = make_key(tenant, admin_user)
    with tenant_scope(other_tenant):
        theirs = [_conversation(other_tenant, agent, replies=1) for _ in range(3)][-1]
    with tenant_scope(tenant):
        TicketFactory(tenant=tenant)  # number 1 exists here; theirs is number 3
    for url in (f"/api/v1/tickets/{theirs.number}/",
                f"/api/v1/tickets/{theirs.number}/timeline/"):
        answer = client.get(url, **bearer(key))
        assert answer.status_code == 404, url
        assert b"Printer" not in answer.content
    listed = client.get(f"/api/v1/tickets/?contact={theirs.contact_id}", **bearer(key))
    assert listed.status_code == 200 and listed.json()["results"] == []
