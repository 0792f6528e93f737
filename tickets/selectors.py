"""Reads on tickets shared by the UI and the API. Each takes the tenant explicitly."""

from __future__ import annotations

from datetime import datetime

from django.db.models import BooleanField, Exists, OuterRef, Prefetch, Q, QuerySet
from django.db.models.expressions import RawSQL
from psycopg import sql

from helpdesk.models import Tenant
from tickets.models import Attachment, Message, MessageKind, Ticket, TicketStatus


def ticket_list(
    *,
    tenant: Tenant,
    status: str = "",
    team_id: int | None = None,
    assignee_id: int | None = None,
    unassigned: bool = False,
    search: str = "",
    open_only: bool = False,
    priority: str = "",
    contact_id: int | None = None,
    tag: str = "",
    updated_since: datetime | None = None,
) -> QuerySet[Ticket]:
    """Tickets of ``tenant``, most recently updated first, with their list columns joined
    in (one query for any page size). ``open_only`` leaves out Solved and Closed ones."""
    qs = Ticket.objects.filter(tenant=tenant).select_related("contact", "team", "assignee",
                                                             "merged_into")
    if status:
        qs = qs.filter(status=status)
    elif open_only:
        qs = qs.exclude(status__in=[TicketStatus.SOLVED, TicketStatus.CLOSED])
    if priority:
        qs = qs.filter(priority=priority)
    if contact_id:
        qs = qs.filter(contact_id=contact_id)
    if tag:
        qs = qs.filter(tags__contains=[tag])
    if updated_since is not None:
        qs = qs.filter(updated_at__gte=updated_since)
    if team_id:
        qs = qs.filter(team_id=team_id)
    if unassigned:
        qs = qs.filter(assignee__isnull=True)
    elif assignee_id:
        qs = qs.filter(assignee_id=assignee_id)
    search = search.strip()
    if search:
        qs = qs.filter(ticket_search(tenant=tenant, term=search))
    return qs.order_by("-updated_at", "-id")


SEARCH_MAX_LENGTH = 200
# A search with fewer matches than this in the workspace lists them by id; one with more
# is a condition for the planner (see ticket_search).
SEARCH_FEW = 1000


def ticket_search(*, tenant: Tenant, term: str) -> Q:
    """The tickets of ``tenant`` that ``term`` finds, as a condition on Ticket: every word
    of it starts a word of the ticket's search document (subject, messages, the contact's
    name and address, CC; accents ignored; see tickets/migrations/0012), or it is the
    ticket's number ("#123" or "123"). The one definition of search, for the list page and
    the API's ``q`` alike.

    Costs one query, whatever the page: PostgreSQL cannot tell how many tickets a word
    start matches (it guesses 0.5%), and a wrong guess either way is slow at 100,000
    tickets (walking the most recent first past every ticket for a rare word, or sorting
    every match of a common one). So the matches are counted first on the
    ``(tenant_id, search_document)`` GIN index, up to SEARCH_FEW: fewer come back as
    their ids (the page is then sorted from them), more mean a common word, for which the
    walk along the most recent first finds a page at once."""
    few = list(search_matches(tenant=tenant, term=term))
    if len(few) >= SEARCH_FEW:
        return search_condition(term)
    # One array parameter, not one placeholder per id: the statement's text is the same
    # for any number of matches, so psycopg prepares it and PostgreSQL plans it once.
    return Q(RawSQL(f'{Ticket._meta.db_table}."id" = ANY(%s::bigint[])', [few],
                    output_field=BooleanField()))


def search_matches(*, tenant: Tenant, term: str) -> QuerySet:
    """The ids of up to SEARCH_FEW tickets of ``tenant`` that ``term`` finds (the first
    query of ticket_search). In no order (any SEARCH_FEW of them tell "many"), so the
    planner may stop at the SEARCH_FEW-th match of the GIN index or of the table,
    whichever it reaches first."""
    return (Ticket.objects.filter(tenant=tenant).filter(search_condition(term)).order_by()
            .values_list("pk", flat=True)[:SEARCH_FEW])


def search_condition(term: str) -> Q:
    """``term``'s condition on Ticket itself (see ticket_search).

    The term is written into the statement as a quoted literal, not sent as a parameter:
    ``helpdesk_search_query('...')`` is then a constant the planner folds and estimates in
    every plan, including the generic plan PostgreSQL switches a prepared statement to
    after a few runs (psycopg prepares a statement run ``prepare_threshold`` times, see
    settings). A generic plan of ``helpdesk_search_query($1)`` guesses 0.5% of the
    tickets for any word and reads every match of a common word through the GIN index
    before sorting them (0.4 s for a word of all 100,000 tickets instead of 1 ms)."""
    # A NUL cannot be in PostgreSQL text, hence in no indexed word: it separates words.
    term = term.replace("\x00", " ").strip()[:SEARCH_MAX_LENGTH]
    # %% for the % a literal may hold: the statement's parameters are still %s-style.
    literal = sql.Literal(term).as_string(None).replace("%", "%%")
    matches = Q(RawSQL(f'{Ticket._meta.db_table}."search_document"'
                       f" @@ helpdesk_search_query({literal})", [],
                       output_field=BooleanField()))
    digits = term.lstrip("#")
    if digits.isdigit() and int(digits) < 2**63:
        matches |= Q(number=int(digits))
    return matches


def teams_of_user(*, tenant: Tenant, user_id: int) -> QuerySet:
    """The teams of ``tenant`` that the user is a member of, by name."""
    from routing.models import Team

    return Team.objects.filter(tenant=tenant, memberships__user_id=user_id).order_by("name")


def ticket_get_for(*, tenant: Tenant, actor, number: int) -> Ticket:
    """The ticket numbered ``number`` of ``tenant`` when ``actor`` may work on it; raises
    Ticket.DoesNotExist otherwise ("not found" and "not yours" are one answer).

    Agent access today: a member of the workspace (checked in the same query). ``actor``
    is a User, or an API client (``helpdesk.api.ApiClient``) whose key belongs to
    ``tenant`` (a key acts as a member of its workspace)."""
    rows = (Ticket.objects.filter(tenant=tenant)
            .select_related("tenant", "contact", "team", "assignee", "merged_into"))
    key = getattr(actor, "key", None)
    if key is not None:
        if key.tenant_id != tenant.pk:
            raise Ticket.DoesNotExist
    else:
        from helpdesk.models import Membership

        user_id = getattr(actor, "pk", None)
        if user_id is None:
            raise Ticket.DoesNotExist
        rows = rows.filter(Exists(Membership.objects.filter(tenant_id=OuterRef("tenant_id"),
                                                            user_id=user_id)))
    return rows.get(number=number)


def attachment_get_for(*, ticket: Ticket, attachment_id: int) -> Attachment:
    """An attachment of one of ``ticket``'s messages (a ticket from ``ticket_get_for``);
    raises Attachment.DoesNotExist for any other."""
    return Attachment.objects.filter(tenant_id=ticket.tenant_id,
                                     message__ticket=ticket).get(pk=attachment_id)


def outbound_message_get_for(*, ticket: Ticket, message_id: int) -> Message:
    """One of ``ticket``'s outbound messages; raises Message.DoesNotExist otherwise."""
    return (Message.objects.filter(tenant_id=ticket.tenant_id, ticket=ticket,
                                   kind=MessageKind.OUTBOUND)
            .select_related("author_user", "author_contact").get(pk=message_id))


def ticket_timeline(*, ticket: Ticket) -> QuerySet[Message]:
    """The ticket's messages, oldest first, with their attachments and, for inbound mail,
    the InboundEmail it came from (its ``details`` carry the DMARC verdict and the
    Reply-To, with its sender and arrival: enough for the reply's default recipients,
    ``channels_email.selectors.latest_inbound_email_of``): three queries however long
    the ticket is."""
    from channels_email.models import InboundEmail

    return (
        Message.objects.filter(tenant_id=ticket.tenant_id, ticket=ticket)
        .select_related("author_user", "author_contact")
        .prefetch_related(
            Prefetch("attachments",
                     queryset=Attachment.objects.filter(tenant_id=ticket.tenant_id)),
            Prefetch("inbound_emails",
                     queryset=InboundEmail.objects.filter(tenant_id=ticket.tenant_id)
                     .only("id", "message_id", "details", "from_address", "received_at")),
        )
        .order_by("created_at", "id")
    )


def tickets_for_contact(*, tenant: Tenant, contact_id: int) -> QuerySet[Ticket]:
    return (
        Ticket.objects.filter(tenant=tenant, contact_id=contact_id)
        .select_related("team", "assignee")
        .order_by("-created_at")
    )
