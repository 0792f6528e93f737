from __future__ import annotations

import pytest

from contacts.models import Contact, ContactSource
from contacts.services import contact_get_or_create
from helpdesk.tenancy import tenant_scope
from tests.factories import ContactFactory, TicketFactory


@pytest.mark.django_db
def test_match_is_case_insensitive_and_fills_a_missing_name(tenant, other_tenant):
    with tenant_scope(tenant):
        first, created = contact_get_or_create(tenant=tenant, email="Bob@Example.COM",
                                               source=ContactSource.EMAIL)
        assert created and first.email == "bob@example.com" and first.name == ""
        again, created = contact_get_or_create(tenant=tenant, email="bob@example.com",
                                               name="Bob Builder")
        assert not created and again.pk == first.pk and again.name == "Bob Builder"
        kept, _ = contact_get_or_create(tenant=tenant, email="BOB@example.com", name="Other")
        assert kept.name == "Bob Builder"
    with tenant_scope(other_tenant):
        elsewhere, created = contact_get_or_create(tenant=other_tenant, email="bob@example.com")
        assert created and elsewhere.pk != first.pk
        assert Contact.objects.count() == 1


@pytest.mark.django_db
def test_contact_pages(agent_client, tenant):
    contact = ContactFactory(tenant=tenant, name="Zed Zulu", email="zed@zulu.example")
    ContactFactory(tenant=tenant, name="Amy Alpha")
    TicketFactory(tenant=tenant, contact=contact, title="Zed's question")
    listing = agent_client.get(f"/{tenant.slug}/contacts/?q=zulu").content.decode()
    assert "zed@zulu.example" in listing and "Amy Alpha" not in listing
    detail = agent_client.get(f"/{tenant.slug}/contacts/{contact.pk}/").content.decode()
    assert "Zed Zulu" in detail and "Zed&#x27;s question" in detail
