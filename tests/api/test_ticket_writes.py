"""Ticket writes over the API with real keys: PATCH with ETag / If-Match (428 without,
412 on a lost update), ids of another workspace refused on their field, merge, a new
ticket to a contact, replies and notes (JSON and multipart, the composer's rules and
warnings), Idempotency-Key replay, retry, attachment downloads; and every list endpoint
at a constant query count whatever the page size."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels_email.models import SuppressedAddress
from contacts.models import Contact
from helpdesk.tenancy import tenant_scope
from tests.api.test_foundation import bearer, make_key, problem_of
from tests.factories import (
    AttachmentFactory,
    ContactFactory,
    EmailConnectionFactory,
    FlowFactory,
    InboundEmailFactory,
    MembershipFactory,
    MessageFactory,
    TeamFactory,
    TicketFactory,
    UserFactory,
)
from tickets.models import Ticket

pytestmark = pytest.mark.django_db


@pytest.fixture
def write_key(tenant, admin_user):
    return make_key(tenant, admin_user, scope="write")[1]


@pytest.fixture
def mailbox(tenant):
    """The workspace's default mailbox (replies to tickets that did not come by email)."""
    with tenant_scope(tenant):
        return EmailConnectionFactory(tenant=tenant, address="support@acme.test",
                                      is_default=True)


def api(client, method, url, key, data=None, **headers):
    return client.generic(method, url, "" if data is None else json.dumps(data),
                          content_type="application/json", **bearer(key), **headers)


def fields_of(answer) -> list[str]:
    return [e["field"] for e in problem_of(answer)["errors"]]


def reload(tenant, obj):
    with tenant_scope(tenant):
        return type(obj).objects.get(pk=obj.pk)


# ------------------------------------------------------------------ PATCH


def test_patch_needs_if_match_and_a_stale_one_is_a_412(client, tenant, admin_user, agent,
                                                      write_key):
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant, status="new", tags=["old"])
        team = TeamFactory(tenant=tenant)
    url = f"/api/v1/tickets/{ticket.number}/"
    read = client.get(url, **bearer(write_key))
    etag = read["ETag"]
    assert etag.startswith('"') and read.json()["status"] == "new"

    missing = api(client, "PATCH", url, write_key, {"status": "open"})
    assert missing.status_code == 428 and fields_of(missing) == ["If-Match"]
    assert reload(tenant, ticket).status == "new"

    changed = api(client, "PATCH", url, write_key,
                  {"status": "pending", "priority": "high", "team": team.pk,
                   "assignee": agent.pk, "tags": ["Billing", "billing", "vip"]},
                  HTTP_IF_MATCH=etag)
    assert changed.status_code == 200, changed.content
    body = changed.json()
    assert (body["status"], body["priority"], body["tags"]) == ("pending", "high",
                                                                ["billing", "vip"])
    assert body["team"]["id"] == team.pk and body["assignee"]["id"] == agent.pk
    assert changed["ETag"] != etag
    assert client.get(url, **bearer(write_key))["ETag"] == changed["ETag"]

    # Another client still holding the first copy loses nothing it has not seen.
    stale = api(client, "PATCH", url, write_key, {"status": "solved"}, HTTP_IF_MATCH=etag)
    assert stale.status_code == 412 and problem_of(stale)["type"].endswith("ticket_changed")
    assert reload(tenant, ticket).status == "pending"
    # A field left out stays; "*" says "whatever it is now" knowingly.
    forced = api(client, "PATCH", url, write_key, {"assignee": None}, HTTP_IF_MATCH="*")
    assert forced.status_code == 200
    after = reload(tenant, ticket)
    assert after.assignee_id is None and after.team_id == team.pk and after.status == "pending"
    # Any of several ETags may match (the header's list form).
    listed = api(client, "PATCH", url, write_key, {"priority": "low"},
                 HTTP_IF_MATCH=f'"nope", {forced["ETag"]}')
    assert listed.status_code == 200 and listed.json()["priority"] == "low"


def test_get_with_if_none_match_of_the_current_etag_is_a_304(client, tenant, write_key):
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant, title="Cached")
    url = f"/api/v1/tickets/{ticket.number}/"
    read = client.get(url, **bearer(write_key))
    etag = read["ETag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = client.get(url, **bearer(write_key), HTTP_IF_NONE_MATCH=header)
        assert again.status_code == 304, header
        assert again.content == b"" and again["ETag"] == etag
    other = client.get(url, **bearer(write_key), HTTP_IF_NONE_MATCH='"other", W/"x"')
    assert other.status_code == 200 and other.json()["title"] == "Cached"
    # "*" names an existing ticket only: an unknown one is still a 404.
    missing = client.get("/api/v1/tickets/999999/", **bearer(write_key), HTTP_IF_NONE_MATCH="*")
    assert missing.status_code == 404
    # After a write the old copy is stale: the whole ticket again, with the new ETag.
    changed = api(client, "PATCH", url, write_key, {"priority": "urgent"}, HTTP_IF_MATCH=etag)
    assert changed.status_code == 200, changed.content
    fresh = client.get(url, **bearer(write_key), HTTP_IF_NONE_MATCH=etag)
    assert fresh.status_code == 200 and fresh.json()["priority"] == "urgent"
    assert fresh["ETag"] == changed["ETag"] != etag


def _rename_contact(tenant, ticket):
    from contacts.services import contact_update

    contact_update(contact=ticket.contact, name="Renamed Contact")


def _rename_team(tenant, ticket):
    ticket.team.name = "Renamed team"
    ticket.team.save()


def _rename_assignee(tenant, ticket):
    ticket.assignee.first_name = "Renamed"
    ticket.assignee.save()


def _new_address_of_assignee(tenant, ticket):
    ticket.assignee.email = "renamed@example.com"
    ticket.assignee.save()


def _delete_team(tenant, ticket):
    ticket.team.delete()


def _merge_what_it_was_merged_into(tenant, ticket):
    """The ticket was merged into A; A is merged into B: it now shows B."""
    from tickets.services import ticket_merge

    ticket_merge(source=ticket.merged_into, target=TicketFactory(tenant=tenant))


@pytest.mark.parametrize("change", [
    _rename_contact, _rename_team, _rename_assignee, _new_address_of_assignee, _delete_team,
    _merge_what_it_was_merged_into], ids=lambda f: f.__name__.strip("_"))
def test_the_etag_covers_what_the_ticket_shows_of_other_rows(client, tenant, agent,
                                                             write_key, change):
    """Changes the ticket's own row does not see still change its ETag: a 304 to a copy
    that shows the old name (or team, or merge target) would be stale, and a PATCH from
    that copy is a 412."""
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant, team=TeamFactory(tenant=tenant), assignee=agent,
                               merged_into=TicketFactory(tenant=tenant))
    url = f"/api/v1/tickets/{ticket.number}/"
    before = client.get(url, **bearer(write_key))
    with tenant_scope(tenant):
        change(tenant, Ticket.objects.select_related(
            "contact", "team", "assignee", "merged_into").get(pk=ticket.pk))
    after = client.get(url, **bearer(write_key), HTTP_IF_NONE_MATCH=before["ETag"])
    assert after.status_code == 200 and after.json() != before.json()
    assert after["ETag"] != before["ETag"]
    stale = api(client, "PATCH", url, write_key, {"priority": "low"},
                HTTP_IF_MATCH=before["ETag"])
    assert stale.status_code == 412
    assert api(client, "PATCH", url, write_key, {"priority": "low"},
               HTTP_IF_MATCH=after["ETag"]).status_code == 200


def test_patch_refuses_another_workspaces_team_and_member_naming_the_field(
        client, tenant, other_tenant, write_key):
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)
    with tenant_scope(other_tenant):
        their_team = TeamFactory(tenant=other_tenant)
        their_agent = UserFactory()
        MembershipFactory(tenant=other_tenant, user=their_agent)
    gone = UserFactory(is_active=False)
    with tenant_scope(tenant):
        MembershipFactory(tenant=tenant, user=gone)
    url = f"/api/v1/tickets/{ticket.number}/"
    for body, field in (({"team": their_team.pk}, "team"),
                        ({"assignee": their_agent.pk}, "assignee"),
                        ({"assignee": gone.pk}, "assignee"),  # a deactivated member
                        ({"status": "bogus"}, "status"),
                        ({"tags": ["x" * 51]}, "tags")):
        answer = api(client, "PATCH", url, write_key, body, HTTP_IF_MATCH="*")
        assert answer.status_code == 400, (body, answer.content)
        assert fields_of(answer) == [field]
    after = reload(tenant, ticket)
    assert (after.team_id, after.assignee_id, after.status) == (None, None, ticket.status)


# ------------------------------------------------------------------ merge


def test_merge_and_its_refusals(client, tenant, other_tenant, write_key):
    with tenant_scope(tenant):
        survivor = TicketFactory(tenant=tenant)
        duplicate = TicketFactory(tenant=tenant)
        MessageFactory(ticket=duplicate, body_text="Me again.")
        third = TicketFactory(tenant=tenant)
    with tenant_scope(other_tenant):
        theirs = [TicketFactory(tenant=other_tenant) for _ in range(5)][-1]
    merge = f"/api/v1/tickets/{duplicate.number}/merge/"
    for into, status, code in ((duplicate.number, 400, "merge_same_ticket"),
                               (theirs.number, 400, "ticket_not_found"),
                               (999_999, 400, "ticket_not_found")):
        answer = api(client, "POST", merge, write_key, {"into": into})
        assert answer.status_code == status
        assert problem_of(answer)["type"].endswith(code) and fields_of(answer) == ["into"]
    assert fields_of(api(client, "POST", merge, write_key, {})) == ["into"]

    done = api(client, "POST", merge, write_key, {"into": survivor.number})
    assert done.status_code == 200 and done.json()["number"] == survivor.number
    gone = reload(tenant, duplicate)
    assert gone.status == "closed" and gone.merged_into_id == survivor.pk
    with tenant_scope(tenant):
        assert survivor.messages.filter(body_text="Me again.").exists()
    again = api(client, "POST", f"/api/v1/tickets/{third.number}/merge/", write_key,
                {"into": duplicate.number})
    assert again.status_code == 409 and fields_of(again) == ["into"]


# ------------------------------------------------------------------ a new ticket


def test_a_new_ticket_to_a_contact_by_address_or_id(client, tenant, other_tenant, write_key,
                                                    mailbox, admin_user):
    made = api(client, "POST", "/api/v1/tickets/", write_key, {
        "contact_email": "New.Customer@Example.NET", "contact_name": "Nina",
        "subject": "Your order 1234", "body": "It ships tomorrow.", "tags": ["orders"],
        "cc": ["boss@example.net"]})
    assert made.status_code == 201, made.content
    body = made.json()
    assert made["ETag"] and body["status"] == "open" and body["tags"] == ["orders"]
    assert body["contact"]["email"] == "new.customer@example.net"
    assert body["source_channel"] == "api"
    with tenant_scope(tenant):
        ticket = Ticket.objects.get(number=body["number"])
        contact = Contact.objects.get(email="new.customer@example.net")
        [first] = ticket.messages.all()
    assert contact.source == "api" and contact.name == "Nina"
    assert (first.kind, first.delivery_status, first.author_user) == ("outbound", "pending",
                                                                      admin_user)
    assert first.to_addresses == ["new.customer@example.net"]
    assert first.cc_addresses == ["boss@example.net"]
    assert first.email_connection == mailbox
    assert "Re:" not in first.subject and "Your order 1234" in first.subject

    with tenant_scope(tenant):
        known = ContactFactory(tenant=tenant)
    by_id = client.post("/api/v1/tickets/", {
        "contact": known.pk, "subject": "Hello", "body": "Hi.", "tags": ["a", "b"],
        "attachments": [SimpleUploadedFile("quote.txt", b"42 EUR", "text/plain")]},
        **bearer(write_key))
    assert by_id.status_code == 201, by_id.content
    assert by_id.json()["contact"]["id"] == known.pk and by_id.json()["tags"] == ["a", "b"]
    with tenant_scope(tenant):
        [quoted] = Ticket.objects.get(number=by_id.json()["number"]).messages.all()
        assert [a.filename for a in quoted.attachments.all()] == ["quote.txt"]

    with tenant_scope(other_tenant):
        stranger = ContactFactory(tenant=other_tenant)
    with tenant_scope(tenant):
        before = Ticket.objects.count()
    for given in ({"contact": stranger.pk}, {},
                  {"contact": known.pk, "contact_email": "x@example.net"}):
        answer = api(client, "POST", "/api/v1/tickets/", write_key,
                     {**given, "subject": "Hello", "body": "Hi."})
        assert answer.status_code == 400 and fields_of(answer) == ["contact"], given
    with tenant_scope(tenant):
        assert Ticket.objects.count() == before


def test_a_new_ticket_without_a_default_mailbox_is_a_409_and_nothing_is_made(
        client, tenant, write_key):
    answer = api(client, "POST", "/api/v1/tickets/", write_key,
                 {"contact_email": "a@example.net", "subject": "Hello", "body": "Hi."})
    assert answer.status_code == 409
    assert problem_of(answer)["type"].endswith("no_mailbox")
    with tenant_scope(tenant):
        assert not Ticket.objects.exists() and not Contact.objects.exists()


# ------------------------------------------------------------------ replies and notes


def test_a_reply_and_a_note_with_the_composers_rules(client, tenant, admin_user, write_key,
                                                     mailbox):
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant, status="new",
                               contact=ContactFactory(tenant=tenant, email="maria@example.net"),
                               cc_addresses=["bob@example.net"])
        SuppressedAddress.objects.create(tenant=tenant, email="bob@example.net",
                                         reason="hard_bounce", details="550 5.1.1")
    url = f"/api/v1/tickets/{ticket.number}/"
    reply = api(client, "POST", url + "replies/", write_key, {"body": "We are on it."})
    assert reply.status_code == 201, reply.content
    sent = reply.json()
    assert (sent["kind"], sent["delivery_status"]) == ("outbound", "pending")
    assert sent["to_addresses"] == ["maria@example.net"]
    assert sent["cc_addresses"] == ["bob@example.net"]  # the ticket's CC by default
    assert sent["author"]["id"] == admin_user.pk
    assert [(w["code"], w["address"]) for w in sent["warnings"]] == [
        ("suppressed_hard_bounce", "bob@example.net")]
    assert reload(tenant, ticket).status == "open"  # the first answer opens a New ticket

    solved = api(client, "POST", url + "replies/", write_key,
                 {"body": "Done.", "to": ["other@example.net"], "cc": [],
                  "set_status": "solved", "assign_to_me": True})
    assert solved.status_code == 201 and solved.json()["warnings"] == []
    after = reload(tenant, ticket)
    assert (after.status, after.assignee_id) == ("solved", admin_user.pk)

    note = api(client, "POST", url + "notes/", write_key, {"body": "Internal: VIP."})
    assert note.status_code == 201 and note.json()["kind"] == "note"
    with tenant_scope(tenant):
        kinds = list(ticket.messages.order_by("id").values_list("kind", flat=True))
    assert kinds == ["outbound", "outbound", "note"]

    # The composer's refusals, each a problem naming its field; nothing is written.
    for body, status, field in (({"body": "x", "to": []}, 400, "to"),
                                ({"body": "x", "to": ["support@acme.test"]}, 400, "to"),
                                ({"body": "x", "to": ["not an address"]}, 400, "to"),
                                ({"body": "x", "set_status": "closed"}, 400, "set_status"),
                                ({"to": ["a@example.net"]}, 400, "body")):
        answer = api(client, "POST", url + "replies/", write_key, body)
        assert answer.status_code == status and fields_of(answer) == [field], body
    with tenant_scope(tenant):
        assert ticket.messages.count() == 3


def test_multipart_replies_carry_files_within_the_limits(client, tenant, write_key, mailbox,
                                                        settings):
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)
    url = f"/api/v1/tickets/{ticket.number}/replies/"
    answer = client.post(url, {"body": "The steps.", "cc": ["a@example.net", "b@example.net"],
                               "attachments": [SimpleUploadedFile("steps.txt", b"1. unplug",
                                                                  "text/plain")]},
                         **bearer(write_key))
    assert answer.status_code == 201, answer.content
    sent = answer.json()
    assert sent["cc_addresses"] == ["a@example.net", "b@example.net"]
    assert [(a["filename"], a["size"]) for a in sent["attachments"]] == [("steps.txt", 9)]
    download = client.get(sent["attachments"][0]["url"], **bearer(write_key))
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == b"1. unplug"

    settings.REPLY_ATTACHMENT_MAX_BYTES = 1024
    big = client.post(url, {"body": "Log.",
                            "attachments": [SimpleUploadedFile("big.log", b"x" * 1025)]},
                      **bearer(write_key))
    assert big.status_code == 413 and fields_of(big) == ["attachments"]
    assert "big.log: attachments are limited to" in problem_of(big)["detail"]
    settings.REPLY_ATTACHMENTS_TOTAL_MAX_BYTES = 1500
    note = client.post(f"/api/v1/tickets/{ticket.number}/notes/", {
        "body": "Logs.", "attachments": [SimpleUploadedFile(f"{n}.log", b"x" * 1000)
                                         for n in (1, 2)]}, **bearer(write_key))
    assert note.status_code == 413 and fields_of(note) == ["attachments"]
    with tenant_scope(tenant):
        assert ticket.messages.count() == 1


def test_a_merged_ticket_takes_no_reply(client, tenant, write_key, mailbox):
    with tenant_scope(tenant):
        survivor = TicketFactory(tenant=tenant)
        merged = TicketFactory(tenant=tenant, merged_into=survivor, status="closed")
    answer = api(client, "POST", f"/api/v1/tickets/{merged.number}/replies/", write_key,
                 {"body": "Hello?"})
    assert answer.status_code == 409
    assert f"merged into #{survivor.number}" in problem_of(answer)["detail"]


def test_an_idempotency_key_sends_a_reply_once(client, tenant, write_key, mailbox):
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)
    url = f"/api/v1/tickets/{ticket.number}/replies/"
    once = {"HTTP_IDEMPOTENCY_KEY": "reply-42"}
    first = api(client, "POST", url, write_key, {"body": "Once."}, **once)
    again = api(client, "POST", url, write_key, {"body": "Once."}, **once)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    with tenant_scope(tenant):
        assert ticket.messages.count() == 1
    other = api(client, "POST", url, write_key, {"body": "Twice?"}, **once)
    assert other.status_code == 422
    with tenant_scope(tenant):
        assert ticket.messages.count() == 1


# ------------------------------------------------------------------ retry, downloads


def test_retry_a_failed_reply_but_not_a_delivered_one(client, tenant, admin_user, write_key,
                                                      mailbox):
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)
        failed = MessageFactory(ticket=ticket, kind="outbound", author_contact=None,
                                author_user=admin_user, delivery_status="failed",
                                delivery_error="550 no such user", attempts=8,
                                email_connection=mailbox, to_addresses=["a@example.net"])
        delivered = MessageFactory(ticket=ticket, kind="outbound", author_contact=None,
                                   delivery_status="delivered", email_connection=mailbox)
        inbound = MessageFactory(ticket=ticket)
    base = f"/api/v1/tickets/{ticket.number}/messages/"
    retried = api(client, "POST", f"{base}{failed.pk}/retry/", write_key)
    assert retried.status_code == 200
    assert (retried.json()["delivery_status"], retried.json()["attempts"]) == ("pending", 0)
    assert reload(tenant, failed).delivery_status == "pending"
    refused = api(client, "POST", f"{base}{delivered.pk}/retry/", write_key)
    assert refused.status_code == 409 and problem_of(refused)["type"].endswith("not_retryable")
    assert reload(tenant, delivered).delivery_status == "delivered"
    assert api(client, "POST", f"{base}{inbound.pk}/retry/", write_key).status_code == 404


def test_attachments_download_with_the_uis_headers(client, tenant, admin_user):
    _, key = make_key(tenant, admin_user, scope="read")
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)
        other = TicketFactory(tenant=tenant)
        page = AttachmentFactory(message=MessageFactory(ticket=ticket), tenant=tenant,
                                 filename="page.html", content_type="text/html",
                                 content=b"<script>alert(1)</script>")
        elsewhere = AttachmentFactory(message=MessageFactory(ticket=other), tenant=tenant)
    answer = client.get(f"/api/v1/tickets/{ticket.number}/attachments/{page.pk}/",
                        **bearer(key))
    assert answer.status_code == 200
    assert b"".join(answer.streaming_content) == b"<script>alert(1)</script>"
    assert answer["Content-Type"] == "application/octet-stream"
    assert answer["Content-Disposition"].startswith("attachment;")
    assert "page.html" in answer["Content-Disposition"]
    assert answer["X-Content-Type-Options"] == "nosniff"
    assert answer["Content-Security-Policy"] == "default-src 'none'; sandbox"
    # Another ticket's attachment through this ticket's URL is unknown here.
    wrong = client.get(f"/api/v1/tickets/{ticket.number}/attachments/{elsewhere.pk}/",
                       **bearer(key))
    assert wrong.status_code == 404 and problem_of(wrong)


# ------------------------------------------------------------------ list costs


def _fill(tenant, admin_user, n: int) -> dict:
    """``n`` rows behind each list endpoint."""
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)
        for i in range(n):
            contact = ContactFactory(tenant=tenant)
            t = TicketFactory(tenant=tenant, contact=contact, team=TeamFactory(tenant=tenant),
                              assignee=admin_user)
            m = MessageFactory(ticket=ticket)
            AttachmentFactory(message=m, tenant=tenant)
            FlowFactory(tenant=tenant)
            MembershipFactory(tenant=tenant)
            conn = EmailConnectionFactory(tenant=tenant)
            InboundEmailFactory(tenant=tenant, connection=conn, message=m, ticket=t,
                                state="quarantined")
            SuppressedAddress.objects.create(tenant=tenant, email=f"s{i}@example.net",
                                             reason="manual")
    return {"ticket": ticket}


LISTS = ("/api/v1/tickets/", "/api/v1/tickets/{number}/timeline/", "/api/v1/contacts/",
         "/api/v1/teams/", "/api/v1/flows/", "/api/v1/members/",
         "/api/v1/email-connections/", "/api/v1/suppressions/", "/api/v1/inbound-emails/")


def test_every_list_endpoint_costs_the_same_queries_for_2_or_20_rows(client, tenant,
                                                                     admin_user):
    _, key = make_key(tenant, admin_user, scope="admin")
    client.get("/api/v1/tickets/", **bearer(key))  # stamps last_used (once a minute)
    made = _fill(tenant, admin_user, 20)
    number = made["ticket"].number
    for path in LISTS:
        url = path.format(number=number)
        costs = []
        for size in (2, 20):
            with CaptureQueriesContext(connection) as queries:
                answer = client.get(f"{url}?page_size={size}", **bearer(key))
            assert answer.status_code == 200, (url, answer.content[:300])
            assert len(answer.json()["results"]) == size, url
            costs.append(len(queries))
        assert costs[0] == costs[1], (url, costs)
