"""Contacts over the API: list and search with keyset pages, one contact with their
tickets, create (address taken: 409 naming the field), update, other workspaces 404."""

from __future__ import annotations

import pytest

from contacts.models import Contact
from helpdesk.tenancy import tenant_scope
from tests.api.test_foundation import bearer, make_key, problem_of
from tests.factories import ContactFactory, TicketFactory

pytestmark = pytest.mark.django_db


def test_list_search_and_one_contact_with_tickets(client, tenant, admin_user):
    _, key = make_key(tenant, admin_user)
    with tenant_scope(tenant):
        maria = ContactFactory(tenant=tenant, email="maria@customer.example", name="Maria")
        ContactFactory(tenant=tenant, email="bob@customer.example", name="Bob")
        ticket = TicketFactory(tenant=tenant, contact=maria, title="Printer")
    everyone = client.get("/api/v1/contacts/?page_size=1", **bearer(key)).json()
    assert [c["email"] for c in everyone["results"]] == ["bob@customer.example"]
    second = client.get(everyone["next"], **bearer(key)).json()
    assert [c["email"] for c in second["results"]] == ["maria@customer.example"]
    assert second["next"] is None
    found = client.get("/api/v1/contacts/?q=MAR", **bearer(key)).json()["results"]
    assert [c["id"] for c in found] == [maria.pk]
    one = client.get(f"/api/v1/contacts/{maria.pk}/", **bearer(key)).json()
    assert one["name"] == "Maria" and [t["number"] for t in one["tickets"]] == [ticket.number]
    assert one["tickets_url"].endswith(f"/api/v1/tickets/?contact={maria.pk}")


def test_create_and_update_need_a_write_key_and_addresses_stay_unique(client, tenant,
                                                                       admin_user):
    _, read = make_key(tenant, admin_user, scope="read")
    _, write = make_key(tenant, admin_user, scope="write", name="CRM")
    body = {"email": "New.Person@Example.NET", "name": "New Person"}
    assert client.post("/api/v1/contacts/", body, content_type="application/json",
                       **bearer(read)).status_code == 403
    created = client.post("/api/v1/contacts/", body, content_type="application/json",
                          **bearer(write))
    assert created.status_code == 201, created.content
    contact = created.json()
    assert contact["email"] == "new.person@example.net" and contact["source"] == "api"
    again = client.post("/api/v1/contacts/", {"email": "new.person@example.net"},
                        content_type="application/json", **bearer(write))
    assert again.status_code == 409
    assert problem_of(again)["errors"][0]["field"] == "email"
    bad = client.post("/api/v1/contacts/", {"email": "not an address"},
                      content_type="application/json", **bearer(write))
    assert bad.status_code == 400 and problem_of(bad)["errors"][0]["field"] == "email"
    renamed = client.patch(f"/api/v1/contacts/{contact['id']}/", {"name": "Renamed"},
                           content_type="application/json", **bearer(write))
    assert renamed.status_code == 200 and renamed.json()["name"] == "Renamed"
    with tenant_scope(tenant):
        ContactFactory(tenant=tenant, email="taken@example.net")
        assert Contact.objects.get(pk=contact["id"]).name == "Renamed"
    clash = client.patch(f"/api/v1/contacts/{contact['id']}/", {"email": "TAKEN@example.net"},
                         content_type="application/json", **bearer(write))
    assert clash.status_code == 409 and problem_of(clash)["errors"][0]["field"] == "email"


def test_another_workspaces_contacts_are_404_and_unchanged(client, tenant, other_tenant,
                                                           admin_user):
    _, write = make_key(tenant, admin_user, scope="write")
    with tenant_scope(other_tenant):
        theirs = ContactFactory(tenant=other_tenant, name="Theirs")
    assert client.get(f"/api/v1/contacts/{theirs.pk}/", **bearer(write)).status_code == 404
    patch = client.patch(f"/api/v1/contacts/{theirs.pk}/", {"name": "Mine now"},
                         content_type="application/json", **bearer(write))
    assert patch.status_code == 404
    listed = client.get("/api/v1/contacts/", **bearer(write)).json()["results"]
    assert theirs.pk not in [c["id"] for c in listed]
    with tenant_scope(other_tenant):
        theirs.refresh_from_db()
    assert theirs.name == "Theirs"
