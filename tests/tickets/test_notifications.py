"""In-app notifications: who is told (team, assignee, customer reply; tenant members only),
what each hook costs in SQL, and the badge and list pages (tenant-isolated)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels_email.ingest import inbound_email_ingest
from channels_email.models import RoutingMode
from channels_email.services import connection_create_manual, inbound_email_receive
from helpdesk.models import Membership
from helpdesk.tenancy import tenant_scope, unscoped
from tests.channels_email.mail_builder import build_email
from tests.factories import (
    ContactFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    TicketFactory,
    UserFactory,
)
from tickets.models import Notification, NotificationKind, Ticket
from tickets.notifications import (
    notification_for_assignment,
    notification_for_customer_reply,
    notification_list,
    notification_unread_count,
    notifications_for_team_ticket,
    notifications_mark_read,
)
from tickets.services import ticket_create, ticket_update

TABLE = Notification._meta.db_table


def member(tenant, **kwargs):
    user = UserFactory(**kwargs)
    MembershipFactory(tenant=tenant, user=user)
    return user


def notified(tenant, ticket=None) -> set[tuple[int, str]]:
    """(user id, kind) of every notification in ``tenant`` (about ``ticket``)."""
    with tenant_scope(tenant):
        rows = Notification.objects.filter(tenant=tenant)
        if ticket is not None:
            rows = rows.filter(ticket=ticket)
        return set(rows.values_list("user_id", "kind"))


def notify(user, ticket, kind=NotificationKind.TEAM_TICKET, **fields) -> Notification:
    return Notification.objects.create(tenant=ticket.tenant, user=user, ticket=ticket,
                                       kind=kind, **fields)


def notification_queries(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if TABLE in q["sql"]]


@pytest.fixture
def team_setup(tenant, other_tenant, agent):
    """A team with: ``agent`` and ``colleague`` (members of the tenant), ``leaver`` (still in
    the team but no longer a member of the tenant) and ``stranger`` (member of another
    tenant only). ``bystander`` is in the tenant but not in the team."""
    team = TeamFactory(tenant=tenant)
    colleague = member(tenant)
    leaver = UserFactory()
    stranger = member(other_tenant)
    for user in (agent, colleague, leaver, stranger):
        TeamMemberFactory(team=team, user=user)
    return {"team": team, "colleague": colleague, "leaver": leaver, "stranger": stranger,
            "bystander": member(tenant)}


@pytest.fixture
def conn(tenant):
    with tenant_scope(tenant):
        return connection_create_manual(tenant=tenant, address="support@company.example",
                                        display_name="Support")


_ids = iter(range(1, 10**9))


def ingest(conn, raw: bytes):
    with tenant_scope(conn.tenant):
        row, _ = inbound_email_receive(connection=conn, raw=raw,
                                       provider_message_id=f"notif-{next(_ids)}")
    return inbound_email_ingest(inbound_email_id=row.pk)


# ------------------------------------------------------------------ who is told


@pytest.mark.django_db
def test_new_team_ticket_notifies_the_teams_tenant_members_except_the_actor(
        tenant, agent, team_setup, django_assert_num_queries):
    colleague = team_setup["colleague"]
    contact = ContactFactory(tenant=tenant)
    with tenant_scope(tenant), django_assert_num_queries(1):  # still one INSERT
        ticket = ticket_create(tenant=tenant, title="Help", contact=contact,
                               team=team_setup["team"], actor=agent)
    assert ticket.pk and ticket.number == 1
    # Not the actor, not the ex-member, not the other tenant's user, not the bystander.
    assert notified(tenant) == {(colleague.pk, NotificationKind.TEAM_TICKET)}
    with unscoped():
        assert Notification.objects.count() == 1

    with tenant_scope(tenant), django_assert_num_queries(1):
        system = ticket_create(tenant=tenant, title="From ingest", contact=contact,
                               team=team_setup["team"])
    assert notified(tenant, system) == {(agent.pk, "team_ticket"), (colleague.pk, "team_ticket")}


@pytest.mark.django_db
def test_ticket_without_team_or_assignee_notifies_nobody(tenant, agent,
                                                         django_assert_num_queries):
    contact = ContactFactory(tenant=tenant)
    with tenant_scope(tenant), django_assert_num_queries(1):
        ticket_create(tenant=tenant, title="Loose", contact=contact)
    assert notified(tenant) == set()


@pytest.mark.django_db
def test_assignee_set_at_creation_is_told_once_as_assigned(tenant, agent, team_setup):
    colleague = team_setup["colleague"]
    outsider_assignee = member(tenant)
    contact = ContactFactory(tenant=tenant)
    with tenant_scope(tenant):
        in_team = ticket_create(tenant=tenant, title="A", contact=contact,
                                team=team_setup["team"], assignee=colleague)
        no_team = ticket_create(tenant=tenant, title="B", contact=contact,
                                assignee=outsider_assignee)
        self_assigned = ticket_create(tenant=tenant, title="C", contact=contact,
                                      assignee=agent, actor=agent)
    assert notified(tenant, in_team) == {(agent.pk, "team_ticket"), (colleague.pk, "assigned")}
    assert notified(tenant, no_team) == {(outsider_assignee.pk, "assigned")}
    assert notified(tenant, self_assigned) == set()


@pytest.mark.django_db
def test_standalone_team_ticket_service_is_one_statement(tenant, agent, team_setup,
                                                         django_assert_num_queries):
    ticket = TicketFactory(tenant=tenant, team=team_setup["team"])
    with tenant_scope(tenant), django_assert_num_queries(1):
        assert notifications_for_team_ticket(ticket=ticket, actor=agent) == 1
    assert notified(tenant) == {(team_setup["colleague"].pk, "team_ticket")}
    with django_assert_num_queries(0):
        assert notifications_for_team_ticket(ticket=TicketFactory.build(tenant=tenant)) == 0


@pytest.mark.django_db
def test_assignment_notifies_the_assignee_but_not_a_self_assignment(
        tenant, agent, django_assert_num_queries):
    colleague = member(tenant)
    ticket = TicketFactory(tenant=tenant)
    fields = {"status": ticket.status, "priority": ticket.priority, "team": None}
    with tenant_scope(tenant):
        # The assignee's membership (tickets.services._assignment_check), the UPDATE and
        # one INSERT ... SELECT.
        with django_assert_num_queries(3):
            ticket_update(ticket=ticket, assignee=colleague, actor=agent, **fields)
        assert notified(tenant) == {(colleague.pk, NotificationKind.ASSIGNED)}
        # Saving again with the same assignee, or unassigning, tells nobody.
        ticket_update(ticket=ticket, assignee=colleague, actor=agent, **fields)
        ticket_update(ticket=ticket, assignee=None, actor=agent, **fields)
        # Agents taking a ticket themselves are not told about it.
        with django_assert_num_queries(2):  # the membership check and the UPDATE
            ticket_update(ticket=ticket, assignee=agent, actor=agent, **fields)
        assert Notification.objects.count() == 1
        assert Ticket.objects.get(pk=ticket.pk).assignee == agent


@pytest.mark.django_db
def test_moving_a_ticket_to_a_team_tells_its_members_and_the_new_assignee_once(
        tenant, agent, team_setup, django_assert_num_queries):
    colleague, bystander = team_setup["colleague"], team_setup["bystander"]
    ticket = TicketFactory(tenant=tenant)
    fields = {"status": ticket.status, "priority": ticket.priority}
    with tenant_scope(tenant):
        with django_assert_num_queries(2):  # the UPDATE and one INSERT ... SELECT
            ticket_update(ticket=ticket, team=team_setup["team"], assignee=None, actor=agent,
                          **fields)
        # Only the tenant's members of the team, never the agent who moved it.
        assert notified(tenant) == {(colleague.pk, NotificationKind.TEAM_TRANSFER)}
        # Saving again in the same team tells nobody.
        ticket_update(ticket=ticket, team=team_setup["team"], assignee=None, actor=agent,
                      **fields)
        assert Notification.objects.count() == 1

        # Moved elsewhere and assigned at once: the assignee hears "assigned", once.
        other = TeamFactory(tenant=tenant)
        TeamMemberFactory(team=other, user=bystander)
        TeamMemberFactory(team=other, user=colleague)
        Notification.objects.all().delete()
        ticket_update(ticket=ticket, team=other, assignee=bystander, actor=agent, **fields)
    assert notified(tenant) == {(bystander.pk, NotificationKind.ASSIGNED),
                                (colleague.pk, NotificationKind.TEAM_TRANSFER)}


@pytest.mark.django_db
def test_assignment_of_someone_outside_the_tenant_writes_nothing(tenant, other_tenant, agent):
    ticket = TicketFactory(tenant=tenant, assignee=member(other_tenant))
    with tenant_scope(tenant):
        assert notification_for_assignment(ticket=ticket, actor=agent) == 0
        assert notification_for_customer_reply(ticket=ticket) == 0
    with unscoped():
        assert Notification.objects.count() == 0


@pytest.mark.django_db
def test_assigning_someone_else_from_the_ticket_page_notifies_them(agent_client, tenant,
                                                                   agent):
    colleague = member(tenant)
    ticket = TicketFactory(tenant=tenant)
    answer = agent_client.post(f"/{tenant.slug}/tickets/{ticket.number}/update/",
                               {"status": "open", "priority": "normal",
                                "assignee": colleague.pk})
    assert answer.status_code == 302
    assert notified(tenant) == {(colleague.pk, NotificationKind.ASSIGNED)}
    # "Assign to me" from the page tells nobody: the agent did it themselves.
    agent_client.post(f"/{tenant.slug}/tickets/{ticket.number}/update/",
                      {"status": "open", "priority": "normal", "assignee": "me"})
    assert notified(tenant) == {(colleague.pk, NotificationKind.ASSIGNED)}


@pytest.mark.django_db
def test_opening_the_ticket_reads_its_notifications_and_no_others(client, tenant):
    colleague = member(tenant)
    seen, other = TicketFactory(tenant=tenant), TicketFactory(tenant=tenant)
    with tenant_scope(tenant):
        for ticket in (seen, other):
            Notification.objects.create(tenant=tenant, user=colleague, ticket=ticket,
                                        kind=NotificationKind.ASSIGNED)
    client.force_login(colleague)
    assert client.get(f"/{tenant.slug}/tickets/{seen.number}/").status_code == 200
    with tenant_scope(tenant):
        unread = Notification.objects.filter(read_at__isnull=True)
        assert list(unread.values_list("ticket_id", flat=True)) == [other.pk]


@pytest.mark.django_db
def test_customer_reply_through_ingest_notifies_the_assignee_in_the_same_statements(
        conn, tenant, agent):
    ingest(conn, build_email(message_id="<a1@customer.example>", subject="Assigned one"))
    ingest(conn, build_email(message_id="<b1@customer.example>", subject="Unassigned one"))
    with tenant_scope(tenant):
        assigned, unassigned = Ticket.objects.order_by("number")
        Ticket.objects.filter(pk=assigned.pk).update(assignee=agent)

    counts = []
    for parent, mid in (("<a1@customer.example>", "<a2@customer.example>"),
                        ("<b1@customer.example>", "<b2@customer.example>")):
        with CaptureQueriesContext(connection) as queries:
            outcome = ingest(conn, build_email(message_id=mid, in_reply_to=parent,
                                               subject="Re: it"))
        assert outcome.state == "processed" and not outcome.created_ticket
        counts.append(len(queries.captured_queries))
        assert not any(sql.lstrip().upper().startswith("INSERT INTO")
                       for sql in notification_queries(queries)), "folded into the UPDATE"
    # Telling the assignee costs no statement of its own.
    assert counts[0] == counts[1], counts
    assert notified(tenant) == {(agent.pk, NotificationKind.CUSTOMER_REPLY)}
    assert notified(tenant, assigned) == {(agent.pk, NotificationKind.CUSTOMER_REPLY)}

    # An assignee who left the workspace hears nothing.
    with unscoped():
        Membership.objects.filter(tenant=tenant, user=agent).delete()
    ingest(conn, build_email(message_id="<a3@customer.example>",
                             in_reply_to="<a2@customer.example>"))
    with tenant_scope(tenant):
        assert Notification.objects.count() == 1
        assert assigned.messages.count() == 3


@pytest.mark.django_db
def test_new_email_routed_to_a_team_notifies_its_members_at_no_extra_statement(
        conn, tenant, agent):
    empty, staffed = TeamFactory(tenant=tenant), TeamFactory(tenant=tenant)
    colleague = member(tenant)
    for user in (agent, colleague):
        TeamMemberFactory(team=staffed, user=user)
    counts = []
    for team in (empty, staffed):
        with tenant_scope(tenant):
            conn.routing_mode, conn.routing_team = RoutingMode.TEAM, team
            conn.save()
        with CaptureQueriesContext(connection) as queries:
            outcome = ingest(conn, build_email(subject=f"For {team.name}"))
        assert outcome.created_ticket
        counts.append(len(queries.captured_queries))
    assert counts[0] == counts[1], counts
    with tenant_scope(tenant):
        ticket = Ticket.objects.get(team=staffed)
    assert notified(tenant) == {(agent.pk, "team_ticket"), (colleague.pk, "team_ticket")}
    assert notified(tenant, ticket) == notified(tenant)


# ------------------------------------------------------------------ reads and marks


@pytest.mark.django_db
def test_selectors_count_and_list_only_the_users_own_in_the_tenant(tenant, other_tenant,
                                                                   agent):
    colleague = member(tenant)
    MembershipFactory(tenant=other_tenant, user=agent)
    mine = TicketFactory(tenant=tenant)
    first = notify(agent, mine)
    second = notify(agent, mine, NotificationKind.CUSTOMER_REPLY)
    notify(colleague, mine)
    elsewhere = notify(agent, TicketFactory(tenant=other_tenant))
    with tenant_scope(tenant):
        assert notification_unread_count(tenant=tenant, user=agent) == 2
        assert list(notification_list(tenant=tenant, user=agent)) == [second, first]
        # Ids of another tenant or user are ignored.
        assert notifications_mark_read(tenant=tenant, user=agent,
                                       ids=[first.pk, elsewhere.pk]) == 1
        assert notification_unread_count(tenant=tenant, user=agent) == 1
        assert notifications_mark_read(tenant=tenant, user=agent) == 1
        assert notification_unread_count(tenant=tenant, user=agent) == 0
        assert notification_unread_count(tenant=tenant, user=colleague) == 1
    with tenant_scope(other_tenant):
        assert notification_unread_count(tenant=other_tenant, user=agent) == 1


@pytest.mark.django_db
def test_unread_count_stops_counting_at_the_cap(agent_client, tenant, agent):
    ticket = TicketFactory(tenant=tenant)
    Notification.objects.bulk_create([
        Notification(tenant=tenant, user=agent, ticket=ticket, kind="team_ticket")
        for _ in range(120)])
    with tenant_scope(tenant):
        assert notification_unread_count(tenant=tenant, user=agent) == 100
    badge = agent_client.get(f"/{tenant.slug}/notifications/badge/").content.decode()
    assert ">99+</span>" in badge


@pytest.mark.django_db
def test_pages_show_the_unread_count_and_the_list(agent_client, tenant, agent):
    ticket = TicketFactory(tenant=tenant, title="Printer on fire")
    notify(agent, ticket, NotificationKind.ASSIGNED)
    notify(agent, ticket, NotificationKind.CUSTOMER_REPLY)
    notify(agent, TicketFactory(tenant=tenant), read_at="2026-11-20T10:00:00Z")

    page = agent_client.get(f"/{tenant.slug}/tickets/").content.decode()
    assert 'id="notification-badge"' in page and 'data-unread="2"' in page
    assert f'hx-get="/{tenant.slug}/notifications/badge/"' in page
    assert 'hx-trigger="every 30s"' in page

    badge = agent_client.get(f"/{tenant.slug}/notifications/badge/",
                             HTTP_HX_REQUEST="true")
    assert badge.status_code == 200 and "<header" not in badge.content.decode()
    assert 'data-unread="2"' in badge.content.decode()

    listing = agent_client.get(f"/{tenant.slug}/notifications/")
    html = listing.content.decode()
    assert listing.status_code == 200
    assert "2 unread" in html and "Mark all read" in html
    assert "Assigned to you" in html and "Customer replied" in html
    assert f"#{ticket.number} Printer on fire" in html
    assert html.count('class="unread"') == 2 and html.count('class="read"') == 1
    assert " onclick=" not in html and "<script>" not in html


@pytest.mark.django_db
def test_mark_all_read_and_opening_a_notification(agent_client, tenant, agent):
    ticket, other = TicketFactory(tenant=tenant), TicketFactory(tenant=tenant)
    opened = notify(agent, ticket, NotificationKind.ASSIGNED)
    same_ticket = notify(agent, ticket, NotificationKind.CUSTOMER_REPLY)
    unrelated = notify(agent, other)
    base = f"/{tenant.slug}/notifications/"

    # GET changes nothing: opening is a POST.
    assert agent_client.get(base + "open/").status_code == 405
    answer = agent_client.post(base + "open/", {"id": opened.pk})
    assert answer.status_code == 302
    assert answer["Location"] == f"/{tenant.slug}/tickets/{ticket.number}/"
    with tenant_scope(tenant):
        unread = set(Notification.objects.filter(read_at__isnull=True).values_list("pk",
                                                                                   flat=True))
    assert unread == {unrelated.pk}  # the ticket's other notice went read with it
    assert same_ticket.pk not in unread
    # Opening an already read one still leads to its ticket.
    assert agent_client.post(base + "open/", {"id": opened.pk}).status_code == 302

    answer = agent_client.post(base + "read/")
    assert answer.status_code == 302 and answer["Location"] == base
    with tenant_scope(tenant):
        assert not Notification.objects.filter(read_at__isnull=True).exists()
    html = agent_client.get(base).content.decode()
    assert "All read" in html and "Mark all read" not in html
    assert 'data-unread=' not in html


@pytest.mark.django_db
def test_another_tenants_or_users_notification_is_never_listed_or_markable(
        client, tenant, other_tenant, agent):
    # The agent belongs to both tenants; a colleague shares the first.
    MembershipFactory(tenant=other_tenant, user=agent)
    colleague = member(tenant)
    theirs = notify(agent, TicketFactory(tenant=other_tenant, title="Secret of B"))
    colleagues = notify(colleague, TicketFactory(tenant=tenant, title="Colleague's"))
    client.force_login(agent)
    base = f"/{tenant.slug}/notifications/"

    html = client.get(base).content.decode()
    assert "Secret of B" not in html and "Colleague" not in html
    assert "No notifications yet" in html
    for foreign in (theirs, colleagues):
        assert client.post(base + "open/", {"id": foreign.pk}).status_code == 404
    for junk in ("", "abc", "999999999"):
        assert client.post(base + "open/", {"id": junk}).status_code == 404
    assert client.post(base + "read/").status_code == 302
    with unscoped():
        assert Notification.objects.filter(read_at__isnull=True).count() == 2

    # The same page of a workspace the user is not in is the same 404.
    outsider = UserFactory()
    client.force_login(outsider)
    for path in ("", "badge/"):
        assert client.get(f"/{other_tenant.slug}/notifications/{path}").status_code == 404
    assert client.post(f"/{other_tenant.slug}/notifications/open/",
                       {"id": theirs.pk}).status_code == 404
    assert client.post(f"/{other_tenant.slug}/notifications/read/").status_code == 404
    with unscoped():
        assert Notification.objects.get(pk=theirs.pk).read_at is None


# ------------------------------------------------------------------ query counts


def _queries(client, url, **headers):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, **headers)
    assert response.status_code == 200
    return queries


@pytest.mark.django_db
def test_list_query_count_does_not_grow_with_rows(agent_client, tenant, agent):
    url = f"/{tenant.slug}/notifications/"
    for _ in range(3):
        notify(agent, TicketFactory(tenant=tenant))
    small = len(_queries(agent_client, url).captured_queries)
    tickets = [TicketFactory(tenant=tenant) for _ in range(60)]
    Notification.objects.bulk_create([
        Notification(tenant=tenant, user=agent, ticket=t, kind="customer_reply")
        for t in tickets])
    big = _queries(agent_client, url)
    assert len(big.captured_queries) == small
    # One query for the list (tickets joined in) and one for the count.
    assert len(notification_queries(big)) == 2
    assert agent_client.get(url).content.decode().count('data-notification=') == 50


@pytest.mark.django_db
def test_every_page_counts_once_and_partials_not_at_all(agent_client, tenant, agent):
    notify(agent, TicketFactory(tenant=tenant))
    page = _queries(agent_client, f"/{tenant.slug}/tickets/")
    [count] = notification_queries(page)
    assert "LIMIT 100" in count and "ORDER BY" not in count
    badge = _queries(agent_client, f"/{tenant.slug}/notifications/badge/",
                     HTTP_HX_REQUEST="true")
    assert len(notification_queries(badge)) == 1
    partial = _queries(agent_client, f"/{tenant.slug}/tickets/", HTTP_HX_REQUEST="true")
    assert notification_queries(partial) == []
