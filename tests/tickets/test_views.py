"""Ticket list and ticket view as an agent sees them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from helpdesk import keyset
from helpdesk.tenancy import tenant_scope
from tests.factories import (
    AttachmentFactory,
    ContactFactory,
    MessageFactory,
    TeamFactory,
    TicketFactory,
    UserFactory,
)
from tickets.models import MessageKind, Ticket, TicketStatus


def _bulk_tickets(tenant, count: int, **fields) -> None:
    contacts = [ContactFactory(tenant=tenant) for _ in range(5)]
    team = TeamFactory(tenant=tenant)
    assignee = UserFactory()
    start = Ticket._base_manager.filter(tenant=tenant).count()
    Ticket.objects.bulk_create([
        Ticket(tenant=tenant, number=start + i + 1, title=f"Bulk {i}", contact=contacts[i % 5],
               team=team if i % 2 else None, assignee=assignee if i % 3 else None, **fields)
        for i in range(count)
    ])


def _list_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.django_db
def test_ticket_list_query_count_does_not_grow_with_rows(agent_client, tenant):
    _bulk_tickets(tenant, 10)
    url = f"/{tenant.slug}/tickets/"
    small = _list_queries(agent_client, url)
    small_filtered = _list_queries(agent_client, url + "?status=new&assignee=none&q=bulk")
    _bulk_tickets(tenant, 990)
    assert _list_queries(agent_client, url) == small
    assert _list_queries(agent_client, url + "?status=new&assignee=none&q=bulk") == small_filtered
    deep = Ticket._base_manager.filter(tenant=tenant).order_by("-updated_at", "-id")[900]
    cursor = keyset.encode([deep.updated_at, deep.id])
    assert _list_queries(agent_client, url + f"?view=all&after={cursor}") == small
    assert _list_queries(agent_client, url + f"?view=all&before={cursor}") == small


@pytest.mark.django_db
def test_ticket_list_pages_by_cursor_without_counting(agent_client, tenant):
    """Older -> ... -> the end visits every ticket once, newest first; Newer comes back to
    the same rows; no statement counts the tickets."""
    import re

    from django.test import override_settings

    _bulk_tickets(tenant, 12)
    expected = list(Ticket._base_manager.filter(tenant=tenant).order_by("-updated_at", "-id")
                    .values_list("number", flat=True))
    url = f"/{tenant.slug}/tickets/"
    seen, pages, link = [], [], "?view=all"
    with override_settings(TICKETS_PER_PAGE=5), CaptureQueriesContext(connection) as ctx:
        while link:
            response = agent_client.get(url + link)
            numbers = [t.number for t in response.context["page"]]
            pages.append((link, numbers))
            seen += numbers
            html = response.content.decode()
            older = re.search(r'href="(\?[^"]*after=[^"]*)">Older', html)
            link = older.group(1).replace("&amp;", "&") if older else None
        assert seen == expected and [len(n) for _, n in pages] == [5, 5, 2]
        assert "Newer" not in agent_client.get(url + pages[0][0]).content.decode()
        last = agent_client.get(url + pages[2][0]).content.decode()
        newer = re.search(r'href="(\?[^"]*before=[^"]*)">. Newer', last).group(1)
        back = agent_client.get(url + newer.replace("&amp;", "&"))
        assert [t.number for t in back.context["page"]] == pages[1][1]
    assert not [q for q in ctx.captured_queries
                if "COUNT(" in q["sql"].upper() and '"tickets_ticket"' in q["sql"]]
    assert agent_client.get(url + "?view=all&after=bogus").status_code == 200


@pytest.mark.django_db
def test_ticket_list_filters_and_search(agent_client, tenant, agent):
    billing = TeamFactory(tenant=tenant, name="Billing")
    alice = ContactFactory(tenant=tenant, email="alice@customer.example")
    t_open = TicketFactory(tenant=tenant, title="Refund please", status=TicketStatus.OPEN,
                           team=billing, assignee=agent, contact=alice)
    t_new = TicketFactory(tenant=tenant, title="Login broken", status=TicketStatus.NEW)
    url = f"/{tenant.slug}/tickets/"

    def titles(query: str) -> set[str]:
        page = agent_client.get(url + query)
        return {t.title for t in page.context["page"]}

    assert titles("") == {"Refund please"}  # the default view: my open tickets
    assert titles("?view=all") == {"Refund please", "Login broken"}
    assert titles("?status=open") == {"Refund please"}
    assert titles(f"?team={billing.pk}") == {"Refund please"}
    assert titles("?assignee=me") == {"Refund please"}
    assert titles(f"?assignee={agent.pk}") == {"Refund please"}
    assert titles("?assignee=none") == {"Login broken"}
    assert titles("?q=refund") == {"Refund please"}
    assert titles("?q=ALICE@customer") == {"Refund please"}
    assert titles(f"?q=%23{t_new.number}") == {"Login broken"}
    assert titles(f"?q={t_open.number}") >= {"Refund please"}
    assert titles("?status=bogus&team=x") == {"Refund please", "Login broken"}


@pytest.mark.django_db
def test_ticket_list_htmx_returns_the_table_only(agent_client, tenant):
    TicketFactory(tenant=tenant, title="Partial row")
    response = agent_client.get(f"/{tenant.slug}/tickets/?q=partial", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert "Partial row" in body and "<html" not in body


@pytest.mark.django_db
def test_ticket_view_shows_the_timeline(agent_client, tenant, agent):
    ticket = TicketFactory(tenant=tenant, title="Printer on fire")
    MessageFactory(ticket=ticket, body_text="It is smoking.")
    MessageFactory(ticket=ticket, kind=MessageKind.NOTE, author_contact=None, author_user=agent,
                   body_text="Calling facilities.")
    out = MessageFactory(ticket=ticket, kind=MessageKind.OUTBOUND, author_contact=None,
                         author_user=agent, body_text="Please step away.",
                         delivery_status="failed", delivery_error="mailbox full")
    AttachmentFactory(message=out, filename="evacuation.pdf")
    sibling = TicketFactory(tenant=tenant, contact=ticket.contact, title="Earlier question")
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    for text in ("Printer on fire", "It is smoking.", "Calling facilities.", "Please step away.",
                 "msg note", "msg outbound", "Failed", "mailbox full", "evacuation.pdf",
                 sibling.title):
        assert text in page


@pytest.mark.django_db
def test_unknown_ticket_is_404(agent_client, tenant):
    assert agent_client.get(f"/{tenant.slug}/tickets/999/").status_code == 404


@pytest.mark.django_db
def test_inbound_message_reopens_a_solved_ticket(tenant):
    from tickets.services import message_add

    ticket = TicketFactory(tenant=tenant, status=TicketStatus.SOLVED)
    with tenant_scope(tenant):
        message_add(ticket=ticket, kind=MessageKind.INBOUND, body_text="Still broken",
                    author_contact=ticket.contact)
        ticket.refresh_from_db()
        assert ticket.status == TicketStatus.OPEN
        message_add(ticket=ticket, kind=MessageKind.OUTBOUND, body_text="On it")
        assert ticket.messages.get(kind=MessageKind.OUTBOUND).delivery_status == "pending"


@pytest.mark.django_db
@pytest.mark.parametrize("status", [TicketStatus.PENDING, TicketStatus.CLOSED])
def test_a_customer_reply_reopens_a_pending_or_closed_ticket(tenant, status):
    """Pending waits for the customer: their answer puts the ticket back in the queue."""
    from tickets.services import message_add

    ticket = TicketFactory(tenant=tenant, status=status)
    with tenant_scope(tenant):
        message_add(ticket=ticket, kind=MessageKind.INBOUND, body_text="Here it is",
                    author_contact=ticket.contact)
        ticket.refresh_from_db()
    assert ticket.status == TicketStatus.OPEN


@pytest.mark.django_db
def test_attachments_download_safely_and_only_raster_images_show_inline(agent_client, tenant):
    from tests.factories import AttachmentFactory, MessageFactory, TicketFactory

    ticket = TicketFactory(tenant=tenant)
    message = MessageFactory(tenant=tenant, ticket=ticket)
    html = AttachmentFactory(message=message, content=b"<script>alert(1)</script>",
                             filename="evil.html", content_type="text/html")
    png = AttachmentFactory(message=message, content=b"\x89PNG\r\n\x1a\n", filename="a.png",
                            content_type="image/png")
    base = f"/{tenant.slug}/tickets/{ticket.number}/attachments/"
    answer = agent_client.get(f"{base}{html.pk}/?inline=1")
    assert answer["Content-Disposition"].startswith("attachment")
    assert answer["Content-Type"] == "application/octet-stream"
    assert answer["X-Content-Type-Options"] == "nosniff"
    assert b"".join(answer.streaming_content) == b"<script>alert(1)</script>"
    image = agent_client.get(f"{base}{png.pk}/?inline=1")
    assert image["Content-Type"] == "image/png"
    assert image["Content-Disposition"].startswith("inline")
    other = TicketFactory(tenant=tenant)
    assert agent_client.get(f"/{tenant.slug}/tickets/{other.number}/attachments/"
                            f"{png.pk}/").status_code == 404


@pytest.mark.django_db
def test_ticket_view_query_count_does_not_grow_with_messages(agent_client, tenant):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.factories import AttachmentFactory, MessageFactory, TicketFactory

    counts = []
    for size in (10, 200):
        ticket = TicketFactory(tenant=tenant)
        for i in range(size):
            message = MessageFactory(tenant=tenant, ticket=ticket,
                                     kind="outbound" if i % 3 == 0 else "inbound",
                                     delivery_status="delivered" if i % 3 == 0 else "")
            if i % 5 == 0:
                AttachmentFactory(message=message)
        with CaptureQueriesContext(connection) as queries:
            assert agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


@pytest.mark.django_db
def test_ticket_view_shows_sanitised_html_with_inline_images_and_folds_quotes(agent_client,
                                                                            tenant):
    from tests.factories import AttachmentFactory, MessageFactory, TicketFactory

    ticket = TicketFactory(tenant=tenant)
    html_message = MessageFactory(
        tenant=tenant, ticket=ticket,
        body_html='<p>See <img src="cid:shot@x"><img src="x" onerror="alert(1)"></p>'
                  '<script>alert(2)</script>')
    shot = AttachmentFactory(message=html_message, content=b"\x89PNG\r\n\x1a\n",
                             filename="shot.png", content_type="image/png",
                             content_id="shot@x", inline=True)
    MessageFactory(tenant=tenant, ticket=ticket, body_html="",
                   body_text="Still broken.\n\nOn Mon, Nov 23, 2026 at 10:00 AM Support "
                             "<support@x.example> wrote:\n> Try again\n> please\n")
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert f"/attachments/{shot.pk}/?inline=1" in page
    assert "onerror" not in page and "alert(2)" not in page
    assert "Show quoted text" in page and "Still broken." in page


@pytest.mark.django_db
def test_quoted_history_in_an_html_body_folds_behind_the_toggle(agent_client, tenant):
    from tests.factories import MessageFactory, TicketFactory

    ticket = TicketFactory(tenant=tenant)
    MessageFactory(tenant=tenant, ticket=ticket, body_html=(
        '<div dir="ltr"><p>It <b>still</b> fails.</p><div class="gmail_quote">'
        "<div>On Mon, Support wrote:</div><blockquote><p>Try again, please.</p>"
        "<blockquote>Older</blockquote></blockquote></div></div>"))
    MessageFactory(tenant=tenant, ticket=ticket,
                   body_html="<blockquote>Only a forwarded quote</blockquote>")
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    new, _, rest = page.partition('<details class="quoted">')
    assert "It <b>still</b> fails." in new and "Try again" not in new
    folded = rest.partition("</details>")[0]
    assert "<blockquote><p>Try again, please.</p><blockquote>Older</blockquote></blockquote>" \
        in folded
    # A body that is nothing but a quote, or that answers between quoted paragraphs,
    # shows as it is.
    MessageFactory(tenant=tenant, ticket=ticket, body_html=(
        "<p>Thanks.</p><blockquote>Which model?</blockquote><p>A Laser 3000.</p>"
        "<blockquote>And the error?</blockquote><p>E42.</p>"))
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert page.count('<details class="quoted">') == 1 and "Only a forwarded quote" in page
    assert "E42." in page.partition('<details class="quoted">')[2].partition("</details>")[2]


@pytest.mark.django_db
def test_agents_change_status_priority_team_assignee_and_assign_to_me(agent_client, tenant,
                                                                      agent):
    from tests.factories import TeamFactory, TenantFactory, TicketFactory

    ticket = TicketFactory(tenant=tenant)
    team = TeamFactory(tenant=tenant)
    url = f"/{tenant.slug}/tickets/{ticket.number}/update/"
    answer = agent_client.post(url, {"status": "pending", "priority": "high",
                                     "team": team.pk, "assignee": ""})
    assert answer.status_code == 302
    agent_client.post(url, {"status": "pending", "priority": "high", "team": team.pk,
                            "assignee": "me"})
    with tenant_scope(tenant):
        ticket.refresh_from_db()
    assert (ticket.status, ticket.priority, ticket.team, ticket.assignee) == (
        "pending", "high", team, agent)
    foreign = TeamFactory(tenant=TenantFactory())
    refused = agent_client.post(url, {"status": "open", "priority": "low", "team": foreign.pk})
    assert refused.status_code == 400
    with tenant_scope(tenant):
        ticket.refresh_from_db()
    assert ticket.team == team and ticket.status == "pending"


@pytest.mark.django_db
def test_agents_merge_a_ticket_into_another_from_the_sidebar(agent_client, tenant,
                                                             other_tenant):
    survivor, duplicate = TicketFactory(tenant=tenant), TicketFactory(tenant=tenant)
    for ticket in (survivor, duplicate):
        MessageFactory(tenant=tenant, ticket=ticket, kind=MessageKind.INBOUND)
    foreign = TicketFactory(tenant=other_tenant)
    url = f"/{tenant.slug}/tickets/{duplicate.number}/merge/"
    page = agent_client.get(f"/{tenant.slug}/tickets/{duplicate.number}/").content.decode()
    assert 'name="into"' in page

    # Unknown numbers (another workspace's ticket among them) and itself are refused.
    unknown = max(survivor.number, duplicate.number, foreign.number) + 100
    for into in ("", "abc", str(unknown), str(duplicate.number)):
        answer = agent_client.post(url, {"into": into}, follow=True)
        assert b"Merge" in answer.content and answer.redirect_chain[-1][0].endswith(
            f"/tickets/{duplicate.number}/")
    with tenant_scope(tenant):
        duplicate.refresh_from_db()
        assert duplicate.merged_into is None and duplicate.messages.count() == 1

    answer = agent_client.post(url, {"into": f"#{survivor.number}"})
    assert answer.status_code == 302 and answer["Location"].endswith(
        f"/tickets/{survivor.number}/")
    with tenant_scope(tenant):
        duplicate.refresh_from_db()
        assert duplicate.merged_into == survivor and duplicate.status == TicketStatus.CLOSED
        assert survivor.messages.count() == 2
    page = agent_client.get(f"/{tenant.slug}/tickets/{duplicate.number}/").content.decode()
    assert "Merged into" in page and 'name="into"' not in page


@pytest.mark.django_db
def test_ticket_list_views_mine_unassigned_my_teams_and_all(agent_client, tenant, agent):
    from tests.factories import TeamMemberFactory

    billing, sales = TeamFactory(tenant=tenant, name="Billing"), TeamFactory(tenant=tenant,
                                                                             name="Sales")
    TeamMemberFactory(tenant=tenant, team=billing, user=agent)
    colleague = UserFactory()
    TicketFactory(tenant=tenant, title="Mine open", assignee=agent, status=TicketStatus.OPEN)
    TicketFactory(tenant=tenant, title="Mine solved", assignee=agent, status=TicketStatus.SOLVED)
    TicketFactory(tenant=tenant, title="Nobody's", team=billing)
    TicketFactory(tenant=tenant, title="Nobody's closed", status=TicketStatus.CLOSED)
    TicketFactory(tenant=tenant, title="Colleague's billing", team=billing, assignee=colleague)
    TicketFactory(tenant=tenant, title="Sales", team=sales, assignee=colleague)
    url = f"/{tenant.slug}/tickets/"

    def titles(query: str) -> set[str]:
        return {t.title for t in agent_client.get(url + query).context["page"]}

    assert titles("") == titles("?view=mine") == {"Mine open"}
    assert titles("?view=unassigned") == {"Nobody's"}
    assert titles(f"?view=team-{billing.pk}") == {"Nobody's", "Colleague's billing"}
    assert titles(f"?view=team-{sales.pk}") == titles("?view=all") == titles("?view=x") == {
        "Mine open", "Mine solved", "Nobody's", "Nobody's closed", "Colleague's billing",
        "Sales"}  # not one of my teams: All
    assert titles("?view=mine&status=solved") == {"Mine solved"}
    page = agent_client.get(url).content.decode()
    tabs = page.partition('aria-label="Ticket views">')[2].partition("</nav>")[0]
    assert [label in tabs for label in ("My open tickets", "Unassigned", "Billing", "All")] == [
        True] * 4 and "Sales" not in tabs
    assert 'href="?view=mine" aria-current="page"' in tabs.replace(url, "")
    assert '<input type="hidden" name="view" value="mine">' in page


@pytest.mark.django_db
def test_ticket_list_table_polls_itself_with_its_view(agent_client, tenant, agent, settings):
    settings.TICKET_LIST_POLL_SECONDS = 7
    url = f"/{tenant.slug}/tickets/"
    table = agent_client.get(url + "?view=unassigned", HTTP_HX_REQUEST="true").content.decode()
    assert f'hx-get="{url}?view=unassigned" hx-trigger="every 7s"' in table
    assert "<html" not in table
    TicketFactory(tenant=tenant, title="Arrived meanwhile")
    again = agent_client.get(url + "?view=unassigned", HTTP_HX_REQUEST="true")
    assert "Arrived meanwhile" in again.content.decode()


@pytest.mark.django_db
def test_ticket_list_views_query_count_is_constant(agent_client, tenant, agent):
    from tests.factories import TeamMemberFactory

    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(tenant=tenant, team=team, user=agent)
    url = f"/{tenant.slug}/tickets/"
    views = ("", "?view=unassigned", f"?view=team-{team.pk}", "?view=all")
    TicketFactory.create_batch(3, tenant=tenant, assignee=agent, team=team)
    _bulk_tickets(tenant, 5)
    before = [_list_queries(agent_client, url + v) for v in views]
    _bulk_tickets(tenant, 300)
    assert [_list_queries(agent_client, url + v) for v in views] == before


def _mail_setup(tenant, *, own: bool, mapped: str, default: str) -> Ticket:
    """A ticket with two inbound mails (the later one has a Reply-To) and a workspace
    whose mailboxes are: ``own`` the ticket's mailbox or none, ``mapped`` its reply
    mailbox ("active", "disconnected" or "" for none), ``default`` the workspace's default
    mailbox (same choices), and one that lost its sign-in."""
    from datetime import timedelta

    from django.utils import timezone

    from channels_email.models import ConnectionStatus
    from tests.factories import EmailConnectionFactory, InboundEmailFactory

    def mailbox(state: str, **fields):
        if not state:
            return None
        return EmailConnectionFactory(tenant=tenant, status=(
            ConnectionStatus.DISCONNECTED if state == "disconnected" else ConnectionStatus.ACTIVE),
            **fields)

    EmailConnectionFactory(tenant=tenant, address="lost@company.example",
                           status=ConnectionStatus.TOKEN_EXPIRED)
    mailbox(default, address="help@company.example", is_default=True,
            alias_addresses=["Hilfe@company.example"])
    reply = mailbox(mapped, address="replies@company.example", display_name="Replies")
    inbound = mailbox("active" if own else "", address="inbox@company.example",
                      reply_connection=reply)
    ticket = TicketFactory(tenant=tenant, email_connection=inbound,
                           cc_addresses=["colleague@customer.example", "help@company.example"])
    now = timezone.now()
    for n, (received, details) in enumerate([
            (now - timedelta(hours=1), {"reply_to": ["billing@customer.example"]}),
            (now - timedelta(hours=2), {"reply_to": ["old@customer.example"]})]):
        message = MessageFactory(tenant=tenant, ticket=ticket, kind=MessageKind.INBOUND,
                                 body_text=f"Mail {n}")
        InboundEmailFactory(connection=inbound or EmailConnectionFactory(tenant=tenant),
                            ticket=ticket, message=message, received_at=received,
                            details=details, from_address="boss@customer.example")
    MessageFactory(tenant=tenant, ticket=ticket, kind=MessageKind.OUTBOUND,
                   author_contact=None, body_text="Our answer", delivery_status="delivered")
    return ticket


MAIL_SETUPS = [
    {"own": False, "mapped": "", "default": ""},
    {"own": False, "mapped": "", "default": "active"},
    {"own": False, "mapped": "", "default": "disconnected"},
    {"own": True, "mapped": "", "default": "active"},
    {"own": True, "mapped": "active", "default": "active"},
    {"own": True, "mapped": "disconnected", "default": ""},
]


@pytest.mark.django_db
@pytest.mark.parametrize("setup", MAIL_SETUPS, ids=lambda s: "-".join(map(str, s.values())))
def test_the_page_takes_mailboxes_and_latest_mail_from_what_it_read(tenant, setup):
    """The ticket page reads the workspace's mailboxes once and the latest inbound mail
    from its timeline: the same reply mailbox, own addresses, lost sign-ins and latest
    mail as the queries the reply service makes."""
    from channels_email.selectors import (
        addresses_needing_reconnect,
        latest_inbound_email,
        latest_inbound_email_of,
        reply_connection_for,
        tenant_addresses,
        tenant_mailboxes,
    )
    from tickets.selectors import ticket_timeline

    ticket = _mail_setup(tenant, **setup)
    with tenant_scope(tenant):
        ticket = Ticket.objects.get(pk=ticket.pk)
        mailboxes = tenant_mailboxes(tenant_id=tenant.pk)
        assert (reply_connection_for(ticket=ticket, mailboxes=mailboxes)
                == reply_connection_for(ticket=ticket))
        assert (tenant_addresses(tenant_id=tenant.pk, mailboxes=mailboxes)
                == tenant_addresses(tenant_id=tenant.pk))
        assert (addresses_needing_reconnect(tenant=tenant, mailboxes=mailboxes)
                == addresses_needing_reconnect(tenant=tenant) == ["lost@company.example"])
        latest = latest_inbound_email_of(list(ticket_timeline(ticket=ticket)))
        assert latest.pk == latest_inbound_email(ticket_id=ticket.pk).pk
        assert latest.details == {"reply_to": ["billing@customer.example"]}
    expected = {"replies@company.example" if setup["mapped"] == "active" else
                "inbox@company.example" if setup["own"] else
                "help@company.example" if setup["default"] == "active" else None}
    assert {getattr(reply_connection_for(ticket=ticket, mailboxes=mailboxes), "address",
                    None)} == expected


@pytest.mark.django_db
def test_the_ticket_page_statements_are_few_and_do_not_grow(client, tenant, admin_user):
    """An admin's ticket page with mailboxes, a mapped reply mailbox, a lost sign-in and
    inbound mail: what it shows comes from one read of the mailboxes, one of the timeline
    (messages, attachments, inbound mails), and no more than 14 statements in all,
    however long the ticket."""
    import re

    client.force_login(admin_user)
    ticket = _mail_setup(tenant, own=True, mapped="active", default="active")
    url = f"/{tenant.slug}/tickets/{ticket.number}/"
    counts = []
    for more in (0, 40):
        for i in range(more):
            message = MessageFactory(tenant=tenant, ticket=ticket, kind=MessageKind.NOTE,
                                     author_contact=None, body_text=f"Note {i}")
            if i % 10 == 0:
                AttachmentFactory(message=message)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200
        page = response.content.decode()
        # What the page shows of them: the reply mailbox, the To and CC the reply gets
        # (To: the latest mail's Reply-To; CC: never our own address), the lost sign-in.
        assert "From: Replies &lt;replies@company.example&gt;" in page
        assert re.search(r'name="to"[^>]*value="billing@customer.example"', page), page
        # (the contact stays in copy: a colleague wrote the latest mail)
        assert re.search(rf'name="cc"[^>]*value="{re.escape(ticket.contact.email)}, '
                         r'colleague@customer.example"', page)
        assert "lost@company.example</strong> lost its sign-in" in page
        statements = [q["sql"] for q in queries.captured_queries]
        assert sum('FROM "channels_email_emailconnection"' in s for s in statements) == 1
        assert sum('FROM "channels_email_inboundemail"' in s for s in statements) == 1
        reading = [s.split(".", 1)[0] for s in statements if s.startswith("SELECT ")]
        assert reading.count('SELECT "channels_email_emailconnection"') == 1
        assert reading.count('SELECT "channels_email_inboundemail"') == 1
        assert reading.count('SELECT "helpdesk_membership"') == 2  # mine, the assignable
        counts.append(len(statements))
    assert counts[0] == counts[1] <= 14, counts
