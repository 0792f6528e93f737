"""Agent pages for tickets (read side). Run inside the tenant scope (TenantMiddleware)."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from helpdesk.forms import clean_address
from helpdesk.models import User
from helpdesk.selectors import assignable_members, tenant_members
from routing.models import Team
from tickets.models import (
    RASTER_IMAGE_TYPES,
    Attachment,
    Message,
    MessageKind,
    Ticket,
    TicketPriority,
    TicketStatus,
)
from tickets.notifications import notifications_mark_read
from tickets.selectors import ticket_get, ticket_list, ticket_timeline, tickets_for_contact
from tickets.services import note_add, ticket_merge, ticket_update


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
    ticket = _ticket_or_404(request, number)
    # Whatever told this agent about the ticket is read now that they are looking at it.
    notifications_mark_read(tenant=request.tenant, user=request.user, ticket_id=ticket.pk)
    return render(request, "tickets/ticket_detail.html", _detail_context(request, ticket))


def _detail_context(request, ticket: Ticket, form=None) -> dict:
    from channels_email.selectors import reply_connection_for, reply_recipients, suppressed_among

    to, cc = reply_recipients(ticket=ticket)
    posted = getattr(form, "cleaned_data", {}) if form is not None else {}
    shown_to, shown_cc = posted.get("to") or to, posted.get("cc", cc)
    return {
        "ticket": ticket,
        "timeline": ticket_timeline(ticket=ticket),
        "other_tickets": tickets_for_contact(tenant=request.tenant,
                                             contact_id=ticket.contact_id).exclude(pk=ticket.pk)[:10],
        "reply_form": form or ReplyForm(initial={"to": ", ".join(to), "cc": ", ".join(cc)}),
        "reply_from": reply_connection_for(ticket=ticket),
        "suppressed": list(suppressed_among(tenant_id=ticket.tenant_id,
                                            addresses=[*shown_to, *shown_cc]).values()),
        "reply_limit_mb": settings.REPLY_ATTACHMENT_MAX_BYTES // (1024 * 1024),
        "reply_total_mb": settings.REPLY_ATTACHMENTS_TOTAL_MAX_BYTES // (1024 * 1024),
        "statuses": TicketStatus.choices,
        "priorities": TicketPriority.choices,
        "teams": Team.objects.filter(tenant=request.tenant),
        "members": assignable_members(tenant=request.tenant),
    }


# ------------------------------------------------------------------ replying


class ReplyForm(forms.Form):
    mode = forms.ChoiceField(choices=[("reply", "Reply to customer"),
                                      ("note", "Internal note (never emailed)")],
                             initial="reply", widget=forms.RadioSelect)
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), max_length=100_000)
    to = forms.CharField(required=False, max_length=2000, label="To",
                         help_text="Comma-separated addresses")
    cc = forms.CharField(required=False, max_length=2000, label="CC",
                         help_text="Comma-separated addresses")

    @staticmethod
    def _addresses(text: str) -> list[str]:
        return list(dict.fromkeys(clean_address(a) for a in text.split(",") if a.strip()))

    def clean_to(self) -> list[str] | None:
        # A post without the field (not from this page) takes the default recipients: None.
        return self._addresses(self.cleaned_data["to"]) if "to" in self.data else None

    def clean_cc(self):
        return self._addresses(self.cleaned_data["cc"])

    def clean(self):
        data = super().clean()
        if data.get("mode") == "reply" and data.get("to") == []:
            self.add_error("to", "Add the address the reply goes to.")
        files = self.files.getlist("attachments")
        too_big = [f.name for f in files if f.size > settings.REPLY_ATTACHMENT_MAX_BYTES]
        total = sum(f.size for f in files)
        mb = 1024 * 1024
        if too_big:
            raise ValidationError(
                f"{', '.join(too_big)}: attachments are limited to "
                f"{settings.REPLY_ATTACHMENT_MAX_BYTES // mb} MB each. Nothing was sent.")
        if total > settings.REPLY_ATTACHMENTS_TOTAL_MAX_BYTES:
            raise ValidationError(
                f"The attachments add up to {total / mb:.1f} MB; one reply can carry "
                f"{settings.REPLY_ATTACHMENTS_TOTAL_MAX_BYTES / mb:.1f} MB. Nothing was sent.")
        return data

    def attachments(self) -> list[tuple[str, bytes, str]]:
        return [(f.name, f.read(), f.content_type or "application/octet-stream")
                for f in self.files.getlist("attachments")]


def _ticket_or_404(request, number: int) -> Ticket:
    try:
        return ticket_get(tenant=request.tenant, number=number)
    except Ticket.DoesNotExist as exc:
        raise Http404("No such ticket") from exc


@require_POST
def ticket_reply_view(request, number: int):
    from channels_email.outbound import reply_create

    ticket = _ticket_or_404(request, number)
    form = ReplyForm(request.POST, request.FILES)
    if not form.is_valid():
        return render(request, "tickets/ticket_detail.html",
                      _detail_context(request, ticket, form), status=400)
    attachments = form.attachments()
    # Each service is one transaction of its own.
    if form.cleaned_data["mode"] == "note":
        note_add(ticket=ticket, author=request.user, body_text=form.cleaned_data["body"],
                 attachments=attachments)
        messages.success(request, "Note added.")
    else:
        try:
            reply_create(ticket=ticket, author=request.user,
                         body_text=form.cleaned_data["body"],
                         to=form.cleaned_data["to"],
                         cc=form.cleaned_data["cc"],
                         attachments=attachments)
        except ValueError as exc:
            form.add_error(None, f"Not sent: {str(exc)[:1].upper()}{str(exc)[1:]}.")
            return render(request, "tickets/ticket_detail.html",
                          _detail_context(request, ticket, form), status=400)
        messages.success(request, "Reply queued; its delivery status shows below.")
    return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=ticket.number)


def _outbound_or_404(request, number: int, message_id: int) -> tuple[Ticket, Message]:
    ticket = _ticket_or_404(request, number)
    return ticket, get_object_or_404(Message, pk=message_id, ticket=ticket,
                                     kind=MessageKind.OUTBOUND)


def message_delivery_view(request, number: int, message_id: int):
    """The delivery badge of one outbound message (polled by htmx while Pending)."""
    ticket, message = _outbound_or_404(request, number, message_id)
    return render(request, "tickets/_delivery.html", {"m": message, "ticket": ticket})


@require_POST
def message_retry_view(request, number: int, message_id: int):
    from channels_email.outbound import reply_retry

    ticket, message = _outbound_or_404(request, number, message_id)
    reply_retry(message=message)
    if request.htmx:
        message.refresh_from_db()
        return render(request, "tickets/_delivery.html", {"m": message, "ticket": ticket})
    return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=ticket.number)


def attachment_download_view(request, number: int, attachment_id: int):
    """A ticket's attachment, for members of its workspace only. Raster images may be shown
    inline (``?inline=1``); everything else is a download, never rendered by the browser."""
    ticket = _ticket_or_404(request, number)
    attachment = get_object_or_404(Attachment, pk=attachment_id, message__ticket=ticket)
    inline = request.GET.get("inline") == "1" and attachment.content_type in RASTER_IMAGE_TYPES
    response = FileResponse(
        attachment.file.open("rb"), as_attachment=not inline, filename=attachment.filename,
        content_type=attachment.content_type if inline else "application/octet-stream")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


class TicketControlsForm(forms.Form):
    status = forms.ChoiceField(choices=TicketStatus.choices)
    priority = forms.ChoiceField(choices=TicketPriority.choices)
    team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False)
    assignee = forms.ModelChoiceField(queryset=User.objects.none(), required=False)

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = Team.objects.filter(tenant=tenant)
        self.fields["assignee"].queryset = User.objects.filter(
            memberships__in=assignable_members(tenant=tenant))


@require_POST
def ticket_update_view(request, number: int):
    """Status, priority, team and assignee from the ticket's sidebar; "assign to me" posts
    ``assignee=me``. A team or assignee outside the workspace is a 400."""
    ticket = _ticket_or_404(request, number)
    data = request.POST.copy()
    if data.get("assignee") == "me":
        data["assignee"] = str(request.user.pk)
    for name in ("status", "priority"):
        data.setdefault(name, getattr(ticket, name))
    form = TicketControlsForm(data, tenant=request.tenant)
    if not form.is_valid():
        return render(request, "tickets/ticket_detail.html",
                      {**_detail_context(request, ticket), "controls_errors": form.errors},
                      status=400)
    ticket_update(ticket=ticket, actor=request.user,
                  **{name: form.cleaned_data[name]
                     for name in ("status", "priority", "team", "assignee")})
    messages.success(request, "Ticket updated.")
    return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=ticket.number)


@require_POST
def ticket_merge_view(request, number: int):
    """Merge this ticket into the one numbered ``into``: its messages, attachments and
    thread move there and this ticket closes with a link to it."""
    source = _ticket_or_404(request, number)
    into = _int_or_none(request.POST.get("into", "").strip().lstrip("#"))
    try:
        target = ticket_get(tenant=request.tenant, number=into) if into else None
    except Ticket.DoesNotExist:
        target = None
    if target is None:
        messages.error(request, "Merge: enter the number of an existing ticket.")
        return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=number)
    try:
        ticket_merge(source=source, target=target, actor=request.user)
    except ValueError as exc:
        messages.error(request, f"Merge refused: {exc}.")
        return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=number)
    messages.success(request, f"#{source.number} was merged into this ticket.")
    return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=target.number)


# ------------------------------------------------------------------ notifications
# The agent's own notifications (tickets.notifications). Someone else's notification, or
# another workspace's, is the same 404 as an unknown one.

NOTIFICATIONS_SHOWN = 50


@require_GET
def notification_list_view(request):
    from tickets.notifications import notification_list

    notifications = list(notification_list(tenant=request.tenant, user=request.user,
                                           limit=NOTIFICATIONS_SHOWN))
    return render(request, "tickets/notifications.html",
                  {"notifications": notifications, "limit": NOTIFICATIONS_SHOWN})


@require_GET
def notification_badge_view(request):
    """The header's unread badge alone, polled by htmx (its count comes from the tenancy
    context processor: one query)."""
    response = render(request, "tickets/notifications_badge.html")
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def notification_open_view(request):
    """Mark the posted notification (and the agent's other unread ones on its ticket) read
    and go to the ticket (whose page marks them read too, for links opened directly)."""
    from tickets.models import Notification
    from tickets.notifications import notification_open

    notification_id = _int_or_none(request.POST.get("id"))
    if notification_id is None:
        raise Http404("No such notification")
    try:
        number = notification_open(tenant=request.tenant, user=request.user,
                                   notification_id=notification_id)
    except Notification.DoesNotExist as exc:
        raise Http404("No such notification") from exc
    return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=number)


@require_POST
def notification_read_all_view(request):
    from tickets.notifications import notifications_mark_read

    notifications_mark_read(tenant=request.tenant, user=request.user)
    return redirect("notifications:list", tenant_slug=request.tenant.slug)
