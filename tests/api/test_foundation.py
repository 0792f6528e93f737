"""The REST API's shared behaviour through HTTP with real keys: authentication by API key
(hashed, shown once, revocable, scoped), the workspace taken from the key, problem
documents for every error, keyset pagination, the schema and the docs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from helpdesk.models import ApiKey, AuditEvent
from helpdesk.services import api_key_create, api_key_revoke
from helpdesk.tenancy import tenant_scope, unscoped
from tests.factories import TicketFactory

pytestmark = pytest.mark.django_db


def make_key(tenant, user, scope="read", name="CRM sync"):
    with tenant_scope(tenant):
        return api_key_create(tenant=tenant, actor=user, name=name, scope=scope)


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def problem_of(response) -> dict:
    assert response["Content-Type"] == "application/problem+json", response.content
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == response.status_code
    return body


def test_a_key_is_stored_hashed_shown_once_and_audited(tenant, admin_user):
    key, presented = make_key(tenant, admin_user)
    assert presented.startswith(f"hd_{key.prefix}_") and len(presented) > 40
    with unscoped():
        row = ApiKey.objects.get(pk=key.pk)
        assert presented not in (row.secret_hash, row.prefix, row.name)
        event = AuditEvent.objects.get(action="api_key.created")
        assert presented not in str(event.details)


def test_requests_without_or_with_a_bad_key_are_401_problems(client, tenant, admin_user):
    key, presented = make_key(tenant, admin_user)
    for headers in ({}, bearer("hd_nope_nope"), bearer(presented + "x"), bearer("garbage"),
                    {"HTTP_AUTHORIZATION": "Basic Zm9vOmJhcg=="}):
        answer = client.get("/api/v1/tickets/", **headers)
        assert answer.status_code == 401, headers
        problem_of(answer)
        assert answer["WWW-Authenticate"].startswith("Bearer")
    with tenant_scope(tenant):
        api_key_revoke(key=key, actor=admin_user)
    answer = client.get("/api/v1/tickets/", **bearer(presented))
    assert answer.status_code == 401 and "revoked" in problem_of(answer)["detail"]


def test_the_workspace_comes_from_the_key_and_other_workspaces_are_404(
        client, tenant, other_tenant, admin_user):
    _, ours = make_key(tenant, admin_user)
    with tenant_scope(tenant):
        mine = TicketFactory(tenant=tenant, title="Ours")
    with tenant_scope(other_tenant):
        theirs = TicketFactory(tenant=other_tenant, title="Theirs")
    listed = client.get("/api/v1/tickets/", **bearer(ours)).json()["results"]
    assert [t["title"] for t in listed] == ["Ours"]
    assert client.get(f"/api/v1/tickets/{mine.number}/", **bearer(ours)).status_code == 200
    if theirs.number != mine.number:
        foreign = client.get(f"/api/v1/tickets/{theirs.number}/", **bearer(ours))
        assert foreign.status_code == 404 and problem_of(foreign)
    unknown = client.get("/api/v1/tickets/999999/", **bearer(ours))
    assert unknown.status_code == 404 and problem_of(unknown)["title"] == "Not Found"


def test_last_used_is_stamped(client, tenant, admin_user):
    key, presented = make_key(tenant, admin_user)
    assert key.last_used_at is None
    client.get("/api/v1/tickets/", **bearer(presented))
    with tenant_scope(tenant):
        key.refresh_from_db()
    assert key.last_used_at is not None


def test_a_read_only_key_cannot_write(client, tenant, admin_user):
    _, presented = make_key(tenant, admin_user, scope="read")
    answer = client.post("/api/v1/tickets/", data={}, content_type="application/json",
                         **bearer(presented))
    assert answer.status_code == 403 and "read-only" in problem_of(answer)["detail"]


def test_bad_filters_are_problems_naming_each_field(client, tenant, admin_user):
    _, presented = make_key(tenant, admin_user)
    answer = client.get("/api/v1/tickets/?status=bogus&team=abc&updated_since=yesterday",
                        **bearer(presented))
    body = problem_of(answer)
    assert answer.status_code == 400
    assert {e["field"] for e in body["errors"]} == {"status", "team", "updated_since"}
    assert all(e["detail"] and e["code"] for e in body["errors"])
    for cursor in ("bm90LWEtY3Vyc29y", "!!!"):
        answer = client.get(f"/api/v1/tickets/?cursor={cursor}", **bearer(presented))
        assert answer.status_code == 400
        assert [e["field"] for e in problem_of(answer)["errors"]] == ["cursor"]


def test_cursor_pages_are_stable_complete_and_cost_the_same(client, tenant, admin_user):
    _, presented = make_key(tenant, admin_user)
    with tenant_scope(tenant):
        tickets = [TicketFactory(tenant=tenant) for _ in range(25)]
        # Ties on updated_at: the id decides, so no row shows twice or goes missing.
        from tickets.models import Ticket

        same = timezone.now() - timedelta(hours=1)
        Ticket.objects.filter(pk__in=[t.pk for t in tickets[:10]]).update(updated_at=same)
    client.get("/api/v1/tickets/", **bearer(presented))  # stamps last_used (once a minute)
    seen, url, costs = [], "/api/v1/tickets/?page_size=7", []
    while url:
        with CaptureQueriesContext(connection) as queries:
            page = client.get(url, **bearer(presented))
        assert page.status_code == 200
        costs.append(len(queries))
        body = page.json()
        seen += [t["number"] for t in body["results"]]
        url = body["next"]
        if url:
            with tenant_scope(tenant):  # a new ticket in front does not shift the pages
                TicketFactory(tenant=tenant, title="Arrived while paging")
    assert sorted(seen) == sorted(t.number for t in tickets)
    assert len(seen) == len(set(seen)) == 25
    assert len(set(costs)) == 1  # every page, first or fourth, the same queries
    assert client.get("/api/v1/tickets/?page_size=500", **bearer(presented)).status_code == 400


def test_filters_select_what_they_name(client, tenant, admin_user):
    _, presented = make_key(tenant, admin_user)
    with tenant_scope(tenant):
        urgent = TicketFactory(tenant=tenant, priority="urgent", tags=["billing"],
                               status="open")
        TicketFactory(tenant=tenant, priority="low", status="solved")

    def numbers(query):
        answer = client.get(f"/api/v1/tickets/?{query}", **bearer(presented))
        assert answer.status_code == 200, answer.content
        return [t["number"] for t in answer.json()["results"]]

    assert numbers("priority=urgent") == [urgent.number]
    assert numbers("tag=billing") == [urgent.number]
    assert numbers("status=open") == [urgent.number]
    assert numbers(f"contact={urgent.contact_id}") == [urgent.number]
    assert numbers("assignee=none") and numbers(f"assignee={admin_user.pk}") == []
    future = (timezone.now() + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert numbers(f"updated_since={future}") == []


def test_unknown_api_urls_are_404_problems_not_workspaces(client, admin_user):
    client.force_login(admin_user)
    for url in ("/api/", "/api", "/api/v2/tickets/", "/api/v1/nothing-here/"):
        answer = client.get(url)
        assert answer.status_code == 404, url
        problem_of(answer)


def test_schema_and_docs_for_signed_in_users_under_our_csp(client, admin_user):
    assert client.get("/api/v1/schema/").status_code == 401
    client.force_login(admin_user)
    schema = client.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.1")
    assert "/api/v1/tickets/" in document["paths"]
    docs = client.get("/api/v1/docs/")
    assert docs.status_code == 200
    page = docs.content.decode()
    assert "<style>" not in page and "<script>" not in page  # nothing inline for the CSP
    assert "script-src 'self'" in docs["Content-Security-Policy"]
    script = client.get("/api/v1/docs/?script=")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content


def test_admins_create_and_revoke_keys_on_the_api_keys_page(client, tenant, admin_user,
                                                            agent):
    client.force_login(agent)
    assert client.get(f"/{tenant.slug}/settings/api-keys/").status_code == 403
    client.force_login(admin_user)
    posted = client.post(f"/{tenant.slug}/settings/api-keys/",
                         {"name": "Reporting", "scope": "read"})
    assert posted.status_code == 302  # a reload of the next page posts nothing again
    page = client.get(posted["Location"])
    text = page.content.decode()
    with tenant_scope(tenant):
        key = ApiKey.objects.get(name="Reporting")
    secret = text.split('<code class="secret">')[1].split("</code>")[0]
    assert secret.startswith(f"hd_{key.prefix}_")
    assert client.get("/api/v1/tickets/", **bearer(secret)).status_code == 200
    listing = client.get(f"/{tenant.slug}/settings/api-keys/").content.decode()
    assert secret not in listing and f"hd_{key.prefix}_" in listing  # shown once only
    assert client.post(f"/{tenant.slug}/settings/api-keys/",
                       {"name": "", "scope": "read"}).status_code == 400
    revoke = client.post(f"/{tenant.slug}/settings/api-keys/{key.pk}/revoke/")
    assert revoke.status_code == 302
    assert client.get("/api/v1/tickets/", **bearer(secret)).status_code == 401


def test_another_workspaces_key_cannot_be_revoked_here(client, tenant, other_tenant,
                                                       admin_user):
    from tests.factories import MembershipFactory, UserFactory

    stranger = UserFactory()
    MembershipFactory(tenant=other_tenant, user=stranger, role="admin")
    key, secret = make_key(other_tenant, stranger)
    client.force_login(admin_user)
    assert client.post(f"/{tenant.slug}/settings/api-keys/{key.pk}/revoke/").status_code == 404
    assert client.get("/api/v1/tickets/", **bearer(secret)).status_code == 200


def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_body(
        client, tenant, admin_user):
    from contacts.models import Contact

    _, write = make_key(tenant, admin_user, scope="write")
    once = {"HTTP_IDEMPOTENCY_KEY": "create-maria-1", **bearer(write)}
    first = client.post("/api/v1/contacts/", {"email": "maria@customer.example"},
                        content_type="application/json", **once)
    again = client.post("/api/v1/contacts/", {"email": "maria@customer.example"},
                        content_type="application/json", **once)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    with tenant_scope(tenant):
        assert Contact.objects.filter(email="maria@customer.example").count() == 1
    other = client.post("/api/v1/contacts/", {"email": "bob@customer.example"},
                        content_type="application/json", **once)
    assert other.status_code == 422 and problem_of(other)["type"].endswith("reused")
    # Without the header the same body is a second request (here: the address is taken).
    plain = client.post("/api/v1/contacts/", {"email": "maria@customer.example"},
                        content_type="application/json", **bearer(write))
    assert plain.status_code == 409
    # A refused request leaves no record: the corrected body under the same key runs.
    retry = {"HTTP_IDEMPOTENCY_KEY": "bad-then-good", **bearer(write)}
    bad = client.post("/api/v1/contacts/", {"email": "broken"},
                      content_type="application/json", **retry)
    assert bad.status_code == 400 and "Idempotent-Replayed" not in bad
    fixed = client.post("/api/v1/contacts/", {"email": "fixed@customer.example"},
                        content_type="application/json", **retry)
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed


def test_each_key_has_a_rate_limit_with_headers(client, tenant, admin_user, settings):
    import time

    settings.API_RATE_LIMIT_PER_MINUTE = 3
    while time.time() % 60 > 55:  # keep the four requests inside one minute's window
        time.sleep(0.5)
    _, key = make_key(tenant, admin_user)
    _, other = make_key(tenant, admin_user, name="Other")
    answers = [client.get("/api/v1/tickets/", **bearer(key)) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert [a["RateLimit-Remaining"] for a in answers[:3]] == ["2", "1", "0"]
    assert answers[0]["RateLimit-Limit"] == "3"
    assert 1 <= int(answers[0]["RateLimit-Reset"]) <= 60
    limited = answers[3]
    assert limited.status_code == 429 and problem_of(limited)
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert client.get("/api/v1/tickets/", **bearer(other)).status_code == 200  # per key


@pytest.mark.django_db(transaction=True)
def test_two_identical_posts_at_once_create_one_contact(tenant, admin_user):
    import threading

    from django.test import Client

    from contacts.models import Contact

    _, write = make_key(tenant, admin_user, scope="write")
    answers, start = [], threading.Barrier(2)

    def post():
        start.wait()
        from django.db import connection as thread_connection

        answers.append(Client().post(
            "/api/v1/contacts/", {"email": "same@customer.example"},
            content_type="application/json", HTTP_IDEMPOTENCY_KEY="once", **bearer(write)))
        thread_connection.close()

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [201, 201]
    assert answers[0].json() == answers[1].json()
    with tenant_scope(tenant):
        assert Contact.objects.filter(email="same@customer.example").count() == 1


def test_unknown_api_urls_are_404_problems_for_every_method(client, tenant, admin_user):
    _, key = make_key(tenant, admin_user, scope="admin")
    strict = type(client)(enforce_csrf_checks=True)
    for method in ("POST", "PATCH", "DELETE"):
        answer = strict.generic(method, "/api/v1/contacts/-1/", "{}",
                                content_type="application/json", **bearer(key))
        assert answer.status_code == 404, method  # not the CSRF failure page
        problem_of(answer)
