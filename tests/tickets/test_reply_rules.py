"""The composer's rules (tickets.services.ticket_reply): status after a reply or note,
assign-to-me and the workspace's auto-assign, the one-time form token, the subject token,
merged and solved tickets, and the workspace's ticket settings page."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.messages import get_messages

from helpdesk.errors import ApplicationError
from helpdesk.tenancy import tenant_scope
from tests.factories import (
    EmailConnectionFactory,
    InboundEmailFactory,
    MessageFactory,
    TicketFactory,
    UserFactory,
)
from tickets.models import Message, MessageKind, ReplySubmission, TicketStatus
from tickets.services import (
    DuplicateSubmission,
    status_after_reply,
    ticket_merge,
    ticket_reply,
    ticket_subject,
)

pytestmark = pytest.mark.django_db

NEW, OPEN, PENDING, SOLVED, CLOSED = (TicketStatus.NEW, TicketStatus.OPEN,
                                      TicketStatus.PENDING, TicketStatus.SOLVED,
                                      TicketStatus.CLOSED)


@pytest.mark.parametrize(("current", "public", "set_status", "after"), [
    (NEW, True, "", OPEN),          # the first answer opens a New ticket
    (OPEN, True, "", OPEN),
    (PENDING, True, "", PENDING),   # plain Send keeps a Pending ticket waiting
    (SOLVED, True, "", OPEN),       # a reply reopens
    (CLOSED, True, "", OPEN),
    (NEW, False, "", NEW),          # a note changes nothing by itself
    (SOLVED, False, "", SOLVED),
    (NEW, True, PENDING, PENDING),  # Send and set ...
    (SOLVED, True, SOLVED, SOLVED),
    (OPEN, False, SOLVED, SOLVED),
])
def test_status_after_a_reply_or_note(current, public, set_status, after):
    assert status_after_reply(current=current, public=public, set_status=set_status) == after


def test_a_reply_sets_only_pending_or_solved():
    for refused in (NEW, CLOSED, "bogus"):
        with pytest.raises(ApplicationError, match="Pending or Solved") as error:
            status_after_reply(current=OPEN, public=True, set_status=refused)
        assert (error.value.code, error.value.field) == ("status_after_reply_invalid",
                                                         "set_status")


def _email_ticket(tenant, **fields):
    connection = EmailConnectionFactory(tenant=tenant, address="support@acme.test")
    return TicketFactory(tenant=tenant, email_connection=connection, title="Printer on fire",
                         **fields)


def _reload(tenant, ticket):
    with tenant_scope(tenant):
        ticket.refresh_from_db()
    return ticket


def test_send_and_set_pending_with_assign_to_me(tenant, agent):
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
        message = ticket_reply(ticket=ticket, author=agent, body_text="On it.", public=True,
                               set_status=PENDING, assign_to_me=True)
    assert message.kind == MessageKind.OUTBOUND and message.to_addresses == [
        ticket.contact.email]
    _reload(tenant, ticket)
    assert (ticket.status, ticket.assignee) == (PENDING, agent)


def test_first_reply_opens_a_new_ticket_and_leaves_it_unassigned_unless_asked(tenant, agent):
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
        ticket_reply(ticket=ticket, author=agent, body_text="Hello.", public=True)
    _reload(tenant, ticket)
    assert (ticket.status, ticket.assignee) == (OPEN, None)


def test_auto_assign_setting_assigns_the_replying_agent_but_not_on_notes(tenant, agent):
    tenant.auto_assign_on_reply = True
    tenant.save()
    colleague = UserFactory()
    with tenant_scope(tenant):
        noted = _email_ticket(tenant)
        ticket_reply(ticket=noted, author=agent, body_text="Internal.", public=False)
        replied = TicketFactory(tenant=tenant, email_connection=noted.email_connection)
        ticket_reply(ticket=replied, author=agent, body_text="Hello.", public=True)
        taken = TicketFactory(tenant=tenant, email_connection=noted.email_connection,
                              assignee=colleague)
        ticket_reply(ticket=taken, author=agent, body_text="Hello.", public=True,
                     assign_to_me=True)
    assert _reload(tenant, noted).assignee is None and noted.status == NEW
    assert _reload(tenant, replied).assignee == agent
    assert _reload(tenant, taken).assignee == colleague  # only an unassigned ticket is taken


def test_the_same_form_token_sends_once(tenant, agent):
    token = uuid.uuid4()
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
        first = ticket_reply(ticket=ticket, author=agent, body_text="Once.", public=True,
                             form_token=token)
        with pytest.raises(DuplicateSubmission) as refused:
            ticket_reply(ticket=ticket, author=agent, body_text="Once.", public=True,
                         form_token=token)
        assert refused.value.message_id == first.pk
        assert list(Message.objects.filter(ticket=ticket).values_list("pk", flat=True)) == [
            first.pk]


def test_a_reply_that_fails_leaves_its_form_token_unused(tenant, agent):
    token = uuid.uuid4()
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)  # no mailbox to reply from
        with pytest.raises(ApplicationError, match="no mailbox") as error:
            ticket_reply(ticket=ticket, author=agent, body_text="Hi.", public=True,
                         form_token=token)
        assert (error.value.code, error.value.status) == ("no_mailbox", 409)
        assert not ReplySubmission.objects.exists()
        note = ticket_reply(ticket=ticket, author=agent, body_text="Hi.", public=False,
                            form_token=token)
        assert ReplySubmission.objects.get().message == note
    assert _reload(tenant, ticket).status == NEW


def test_a_double_posted_composer_sends_one_email_and_says_so(agent_client, tenant):
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
    url = f"/{tenant.slug}/tickets/{ticket.number}/"
    page = agent_client.get(url).content.decode()
    token = page.partition('name="form_token" value="')[2].partition('"')[0]
    assert uuid.UUID(token)
    post = {"mode": "reply", "body": "Only once, please.", "form_token": token, "then": ""}
    first = agent_client.post(url + "reply/", post)
    second = agent_client.post(url + "reply/", post)
    assert first.status_code == second.status_code == 302
    assert second["Location"].endswith(url)
    flash = [str(m) for m in get_messages(second.wsgi_request)][-1]
    assert flash.startswith("This form was already sent") and "nothing more was sent" in flash
    with tenant_scope(tenant):
        assert Message.objects.filter(ticket=ticket, kind=MessageKind.OUTBOUND).count() == 1
    # A fresh rendering of the page carries a new token.
    again = agent_client.get(url).content.decode()
    assert token not in again and 'name="form_token"' in again


def test_send_and_set_buttons_and_assign_to_me_through_the_view(agent_client, tenant, agent):
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
    url = f"/{tenant.slug}/tickets/{ticket.number}/"
    page = agent_client.get(url).content.decode()
    for button in ('value="">Send</button>', 'value="pending" class="secondary">Send and set '
                   'Pending</button>', 'value="solved" class="secondary">Send and set Solved'):
        assert button in page
    assert 'name="assign_to_me"' in page
    assert '<label for="id_body">Message</label>' in page and 'rows="12"' in page
    answer = agent_client.post(url + "reply/", {"mode": "reply", "body": "Done.",
                                                "then": "solved", "assign_to_me": "on"},
                               follow=True)
    assert "The ticket is Solved now. It is assigned to you." in answer.content.decode()
    assert (_reload(tenant, ticket).status, ticket.assignee) == (SOLVED, agent)
    # Assigned now: no offer any more; Solved: the composer says a reply reopens it.
    page = agent_client.get(url).content.decode()
    assert 'name="assign_to_me"' not in page
    assert "a reply to the customer reopens it" in page


def test_auto_assign_workspace_says_so_instead_of_offering(agent_client, tenant):
    tenant.auto_assign_on_reply = True
    tenant.save()
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    assert 'name="assign_to_me"' not in page
    assert "a reply to the customer assigns this ticket to you" in page


def test_a_merged_ticket_has_no_composer_and_refuses_replies(agent_client, tenant, agent):
    with tenant_scope(tenant):
        survivor = _email_ticket(tenant)
        duplicate = TicketFactory(tenant=tenant, email_connection=survivor.email_connection)
        ticket_merge(source=duplicate, target=survivor, actor=agent)
    url = f"/{tenant.slug}/tickets/{duplicate.number}/"
    page = agent_client.get(url).content.decode()
    assert 'aria-label="Reply"' not in page and 'name="body"' not in page
    assert 'aria-label="Ticket controls"' not in page  # nothing left to change here
    assert f'href="/{tenant.slug}/tickets/{survivor.number}/">#{survivor.number}' in page
    refused = agent_client.post(url + "reply/", {"mode": "reply", "body": "Lost?"})
    assert refused.status_code == 400
    assert f"merged into #{survivor.number}; reply there" in refused.content.decode()
    with tenant_scope(tenant):
        assert not Message.objects.filter(kind=MessageKind.OUTBOUND).exists()


def test_the_sidebar_shows_each_field_once(agent_client, tenant):
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
    page = agent_client.get(f"/{tenant.slug}/tickets/{ticket.number}/").content.decode()
    aside = page.partition("<aside>")[2].partition("</aside>")[0]
    for field in ("Status", "Priority", "Team", "Assignee", "Contact", "Channel"):
        labels = aside.count(f">{field}</label>") + aside.count(f"<dt>{field}</dt>")
        assert labels == 1, (field, labels)


# ------------------------------------------------------------------ subject token

def test_the_subject_token_goes_in_once_after_the_reply_prefix(tenant):
    with tenant_scope(tenant):
        ticket = TicketFactory(tenant=tenant)
    n = ticket.number
    assert ticket_subject(ticket=ticket, subject="Re: Printer") == f"Re: [#{n}] Printer"
    assert ticket_subject(ticket=ticket, subject="Printer") == f"[#{n}] Printer"
    assert ticket_subject(ticket=ticket, subject="RE: AW: Drucker") == f"RE: AW: [#{n}] Drucker"
    for kept in (f"Re: [#{n}] Printer", f"Re: Re: [#{n}] Printer", f"Printer [#{n}]"):
        assert ticket_subject(ticket=ticket, subject=kept) == kept
    # Another ticket's token (a merged one's) is not this ticket's: ours goes first.
    assert ticket_subject(ticket=ticket, subject=f"Re: [#{n + 100}] Old") == \
        f"Re: [#{n}] [#{n + 100}] Old"
    tenant.subject_ticket_token = False
    assert ticket_subject(ticket=ticket, subject="Re: Printer") == "Re: Printer"


def test_replies_carry_the_token_once_along_a_chain(tenant, agent):
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
        first = ticket_reply(ticket=ticket, author=agent, body_text="One.", public=True)
        # The customer answers "Re: [#n] ..."; our next reply keeps that subject as it is.
        inbound = MessageFactory(tenant=tenant, ticket=ticket)
        InboundEmailFactory(connection=ticket.email_connection, ticket=ticket, message=inbound,
                            subject=first.subject, state="processed")
        second = ticket_reply(ticket=ticket, author=agent, body_text="Two.", public=True)
    assert first.subject == f"Re: [#{ticket.number}] Printer on fire"
    assert second.subject == first.subject


def test_without_the_setting_replies_carry_no_token(tenant, agent):
    tenant.subject_ticket_token = False
    tenant.save()
    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
        message = ticket_reply(ticket=ticket, author=agent, body_text="One.", public=True)
    assert message.subject == "Re: Printer on fire"


# ------------------------------------------------------------------ workspace settings

def test_admins_edit_the_ticket_settings_on_the_email_channels_page(client, tenant,
                                                                    admin_user, agent):
    from helpdesk.models import AuditEvent

    client.force_login(admin_user)
    page = client.get(f"/{tenant.slug}/settings/email/").content.decode()
    assert 'aria-label="Ticket settings"' in page
    assert 'id="id_subject_ticket_token" checked' in page  # the defaults
    assert 'id="id_auto_assign_on_reply">' in page
    url = f"/{tenant.slug}/tickets/settings/"
    answer = client.post(url, {"auto_assign_on_reply": "on"}, follow=True)
    assert "Ticket settings saved." in answer.content.decode()
    tenant.refresh_from_db()
    assert (tenant.auto_assign_on_reply, tenant.subject_ticket_token) == (True, False)
    with tenant_scope(tenant):
        assert AuditEvent.objects.get(action="tenant.ticket_settings").details == {
            "auto_assign_on_reply": True, "subject_ticket_token": False}

    client.force_login(agent)
    assert client.post(url, {"subject_ticket_token": "on"}).status_code == 403
    tenant.refresh_from_db()
    assert tenant.subject_ticket_token is False


def test_the_composer_shows_the_services_refusals_under_their_field(agent_client, tenant,
                                                                    settings):
    """The rules live in ``tickets.services`` (the API answers them as problems); the
    composer shows each on its field, or above the form when no field of it is meant."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    with tenant_scope(tenant):
        ticket = _email_ticket(tenant)
    url = f"/{tenant.slug}/tickets/{ticket.number}/reply/"
    own = agent_client.post(url, {"mode": "reply", "body": "Hi.", "to": "support@acme.test"})
    assert own.status_code == 400
    form = own.context["reply_form"]
    assert form.errors["to"] == ["The reply has no recipient outside our own mailboxes."]
    assert 'name="to"' in own.content.decode()
    settings.REPLY_ATTACHMENT_MAX_BYTES = 1024 * 1024
    big = agent_client.post(url, {"mode": "note", "body": "Log.", "attachments": [
        SimpleUploadedFile("a.log", b"x" * (1024 * 1024 + 1))]})
    assert big.status_code == 400
    assert big.context["reply_form"].non_field_errors() == [
        "a.log: attachments are limited to 1 MB each. Nothing was sent."]
    with tenant_scope(tenant):
        assert not ticket.messages.exists()


def test_merge_refusals_of_the_service_show_in_the_flash(agent_client, tenant):
    with tenant_scope(tenant):
        survivor, first, second = (TicketFactory(tenant=tenant) for _ in range(3))
    agent_client.post(f"/{tenant.slug}/tickets/{first.number}/merge/",
                      {"into": survivor.number}, follow=True)  # its flash shown
    answer = agent_client.post(f"/{tenant.slug}/tickets/{second.number}/merge/",
                               {"into": first.number}, follow=True)
    flashes = [str(m) for m in answer.context["messages"]]
    assert flashes == [f"Merge refused: #{first.number} is merged already; choose two "
                       "tickets that are not merged."]
    with tenant_scope(tenant):
        second.refresh_from_db()
    assert second.merged_into_id is None
