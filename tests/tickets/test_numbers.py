"""Per-tenant ticket numbers under concurrent creation on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from helpdesk.tenancy import tenant_scope
from tests.factories import ContactFactory, TenantFactory
from tickets.models import Ticket
from tickets.services import ticket_create

THREADS, PER_THREAD = 8, 50


@pytest.mark.django_db(transaction=True)
def test_concurrent_creation_gives_unique_increasing_numbers():
    tenant, other = TenantFactory(), TenantFactory()
    contact = ContactFactory(tenant=tenant)
    other_contact = ContactFactory(tenant=other)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(idx: int) -> None:
        try:
            barrier.wait()
            with tenant_scope(tenant):
                results[idx] = [
                    ticket_create(tenant=tenant, title=f"t{idx}-{i}", contact=contact).number
                    for i in range(PER_THREAD)
                ]
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    numbers = [n for nums in results.values() for n in nums]
    assert sorted(numbers) == list(range(1, THREADS * PER_THREAD + 1))
    for nums in results.values():
        assert nums == sorted(nums), "each creator sees increasing numbers"
    with tenant_scope(other):
        # The other tenant has its own sequence.
        assert ticket_create(tenant=other, title="x", contact=other_contact).number == 1
    with tenant_scope(tenant):
        assert Ticket.objects.count() == THREADS * PER_THREAD


@pytest.mark.django_db
def test_ticket_create_refuses_a_contact_of_another_tenant(tenant, other_tenant):
    foreign = ContactFactory(tenant=other_tenant)
    with tenant_scope(tenant), pytest.raises(ValueError):
        ticket_create(tenant=tenant, title="x", contact=foreign)
