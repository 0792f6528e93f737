"""Agent pages for tickets (read side). Run inside the tenant scope (TenantMiddleware)."""

from __future__ import annotations

from django.conf import settings
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import render

from helpdesk.selectors import tenant_members
from routing.models import Team
from tickets.models import Ticket, TicketStatus
from tickets.selectors import ticket_get, ticket_list, ticket_timeline, tickets_for_contact


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def ticket_list_view(request):
    params = request.GET
    assignee = params.get("assignee", "")
    filters = {
        "status": params.get("status", "") if params.get("status") in TicketStatus.values else "",
        "team_id": _int_or_none(params.get("team")),
        "unassigned": assignee == "none",
        "assignee_id": request.user.pk if assignee == "me" else _int_or_none(assignee),
        "search": params.get("q", "")[:200],
    }
    page = Paginator(ticket_list(tenant=request.tenant, **filters),
                     settings.TICKETS_PER_PAGE).get_page(params.get("page"))
    query = params.copy()
    query.pop("page", None)
    context = {
        "page": page,
        "filters": filters,
        "assignee_param": assignee,
        "query_string": query.urlencode(),
        "statuses": TicketStatus.choices,
        "teams": Team.objects.filter(tenant=request.tenant),
        "members": tenant_members(tenant=request.tenant),
    }
    template = "tickets/_ticket_table.html" if request.htmx else "tickets/ticket_list.html"
    return render(request, template, context)


def ticket_detail_view(request, number: int):
    try:
        ticket = ticket_get(tenant=request.tenant, number=number)
    except Ticket.DoesNotExist as exc:
        raise Http404("No such ticket") from exc
    return render(request, "tickets/ticket_detail.html", {
        "ticket": ticket,
        "timeline": ticket_timeline(ticket=ticket),
        "other_tickets": tickets_for_contact(tenant=request.tenant,
                                             contact_id=ticket.contact_id).exclude(pk=ticket.pk)[:10],
    })
