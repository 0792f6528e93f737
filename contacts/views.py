"""Agent pages for contacts (read side). Run inside the tenant scope (TenantMiddleware)."""

from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import render

from contacts.models import Contact
from contacts.selectors import contact_get, contact_list
from tickets.selectors import tickets_for_contact


def contact_list_view(request):
    search = request.GET.get("q", "")[:200]
    page = Paginator(contact_list(tenant=request.tenant, search=search), 50).get_page(
        request.GET.get("page")
    )
    template = "contacts/_contact_table.html" if request.htmx else "contacts/contact_list.html"
    return render(request, template, {"page": page, "search": search})


def contact_detail_view(request, contact_id: int):
    try:
        contact = contact_get(tenant=request.tenant, contact_id=contact_id)
    except Contact.DoesNotExist as exc:
        raise Http404("No such contact") from exc
    return render(request, "contacts/contact_detail.html", {
        "contact": contact,
        "tickets": tickets_for_contact(tenant=request.tenant, contact_id=contact.pk),
    })
