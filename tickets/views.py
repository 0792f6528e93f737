"""Agent pages for tickets. Run inside the tenant scope (TenantMiddleware).

Thin: each parses its form, calls one selector or service (``tickets.selectors`` /
``tickets.services``, the same the REST API calls) and renders; a rule the service
refuses (``helpdesk.errors.ApplicationError``) shows on the form, under its field."""

from __future__ import annotations

import uuid

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from helpdesk import keyset
from helpdesk.errors import ApplicationError
from helpdesk.forms import clean_address
from helpdesk.models import User
from helpdesk.selectors import assignable_members, tenant_members
from helpdesk.tenancy import require_admin
from routing.models import Team
from tickets.models import (
    RASTER_IMAGE_TYPES,
    Attachment,
    Message,
    Ticket,
    TicketPriority,
    TicketStatus,
)
from tickets.notifications import notifications_mark_read
from tickets.selectors import (
    attachment_get_for,
    outbound_message_get_for,
    teams_of_user,
    ticket_get_for,
    ticket_list,
    ticket_timeline,
    tickets_for_contact,
)
from tickets.services import (
    STATUSES_AFTER_SEND,
    DuplicateSubmission,
    ticket_merge,
    ticket_reply,
    ticket_settings_update,
    ticket_update,
)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


LIST_FILTERS = ("status", "team", "assignee", "q")


def _list_view(request, teams: list[Team]) -> tuple[str, dict]:
    """The list's view (``?view=``) and the filters it stands for: "mine" (my open
    tickets, the default), "unassigned" (open, nobody's), "team-<id>" (one of my teams'
    open tickets) or "all". A URL with filters but no view (an older link) means "all"."""
    params = request.GET
    view = params.get("view", "")
    if not view:
        view = "all" if any(params.get(name) for name in LIST_FILTERS) else "mine"
    if view == "mine":
        return view, {"assignee_id": request.user.pk, "open_only": True}
    if view == "unassigned":
        return view, {"unassigned": True, "open_only": True}
    team_id = _int_or_none(view.removeprefix("team-")) if view.startswith("team-") else None
    if team_id in {t.pk for t in teams}:
        return view, {"team_id": team_id, "open_only": True}
    return "all", {}


def _ticket_page(request, tickets) -> keyset.KeysetPage:
    """The page of the list the URL asks for (``?after=`` / ``?before=`` a cursor of the
    REST API's kind): one query however deep, no count of the rows. A cursor that is not
    ours reads as the first page."""
    order = ("-updated_at", "-id")
    try:
        return keyset.keyset_page(tickets, order, size=settings.TICKETS_PER_PAGE,
                                  after_cursor=request.GET.get("after"),
                                  before_cursor=request.GET.get("before"))
    except keyset.InvalidCursor:
        return keyset.keyset_page(tickets, order, size=settings.TICKETS_PER_PAGE)


def ticket_list_view(request):
    """The ticket list: a view (My open tickets, Unassigned, each of my teams, All) and
    the filters on top of it. htmx gets the table alone (the filters' requests, and the
    table's own poll that shows new tickets without a reload)."""
    params = request.GET
    my_teams = list(teams_of_user(tenant=request.tenant, user_id=request.user.pk))
    view, filters = _list_view(request, my_teams)
    assignee = params.get("assignee", "")
    if params.get("status") in TicketStatus.values:
        filters["status"] = params["status"]
    if _int_or_none(params.get("team")):
        filters["team_id"] = _int_or_none(params.get("team"))
    if assignee:
        filters.update(unassigned=assignee == "none", assignee_id=(
            request.user.pk if assignee == "me" else _int_or_none(assignee)))
    filters["search"] = params.get("q", "")[:200]
    page = _ticket_page(request, ticket_list(tenant=request.tenant, **filters))
    query = params.copy()
    for name in ("after", "before", "page"):
        query.pop(name, None)
    query["view"] = view
    poll = params.copy()
    poll["view"] = view
    context = {
        "page": page,
        "view": view,
        "views": [("mine", "My open tickets"), ("unassigned", "Unassigned"),
                  *((f"team-{t.pk}", t.name) for t in my_teams), ("all", "All")],
        "filters": {"status": filters.get("status", ""), "team_id": filters.get("team_id"),
                    "search": filters["search"]},
        "assignee_param": assignee,
        "query_string": query.urlencode(),
        "poll_query": poll.urlencode(),
        "poll_seconds": settings.TICKET_LIST_POLL_SECONDS,
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
    """The ticket page's context. Its statements do not grow with the ticket: the
    timeline is read once (three queries) and also gives the latest inbound mail the
    reply answers; the workspace's mailboxes are read once and give the reply's mailbox,
    our own addresses and (for the header's warning) the mailboxes that lost their
    sign-in."""
    from channels_email.selectors import (
        addresses_needing_reconnect,
        latest_inbound_email_of,
        reply_connection_for,
        reply_from,
        reply_recipients,
        suppressed_among,
        tenant_addresses,
        tenant_mailboxes,
    )

    timeline = list(ticket_timeline(ticket=ticket))
    mailboxes = tenant_mailboxes(tenant_id=ticket.tenant_id)
    to, cc = reply_recipients(ticket=ticket, latest=latest_inbound_email_of(timeline),
                              own=tenant_addresses(tenant_id=ticket.tenant_id,
                                                   mailboxes=mailboxes))
    sending = reply_connection_for(ticket=ticket, mailboxes=mailboxes)
    # The mailbox the customer wrote to is among the workspace's (no query of its own).
    inbound = next((m for m in mailboxes if m.pk == ticket.email_connection_id), None)
    posted = getattr(form, "cleaned_data", {}) if form is not None else {}
    shown_to, shown_cc = posted.get("to") or to, posted.get("cc", cc)
    return {
        "ticket": ticket,
        "timeline": timeline,
        # Overrides the context processor's query (helpdesk.context_processors.tenancy).
        "mailboxes_needing_reconnect": lambda: addresses_needing_reconnect(
            tenant=request.tenant, mailboxes=mailboxes),
        "other_tickets": tickets_for_contact(tenant=request.tenant,
                                             contact_id=ticket.contact_id).exclude(pk=ticket.pk)[:10],
        # With no mailbox to send from, the composer starts on an internal note.
        "reply_form": form or ReplyForm(initial={"to": ", ".join(to), "cc": ", ".join(cc),
                                                 "form_token": uuid.uuid4(),
                                                 "mode": "reply" if sending else "note"}),
        "reopens": ticket.status in (TicketStatus.SOLVED, TicketStatus.CLOSED),
        "reply_from": sending,
        # The From a reply gets (name, address): the sending mailbox's, or the address the
        # customer wrote to when that mailbox may send as it.
        "reply_from_header": reply_from(inbound=inbound, sending=sending)
        if sending is not None else None,
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
    body = forms.CharField(label="Message", max_length=100_000,
                           widget=forms.Textarea(attrs={"rows": 12, "cols": 80}))
    # The pressed button: "Send" (empty) or "Send and set Pending / Solved".
    then = forms.ChoiceField(required=False, choices=[
        ("", "Send"), *((s, f"Send and set {TicketStatus(s).label}") for s in STATUSES_AFTER_SEND)])
    assign_to_me = forms.BooleanField(required=False, label="Assign this ticket to me")
    # One-time token of this rendering of the form (tickets.services.ticket_reply); a post
    # without it (not from this page) is not guarded against a second send.
    form_token = forms.UUIDField(required=False, widget=forms.HiddenInput)
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

    def attachments(self) -> list[tuple[str, bytes, str]]:
        return [(f.name, f.read(), f.content_type or "application/octet-stream")
                for f in self.files.getlist("attachments")]


def _ticket_or_404(request, number: int) -> Ticket:
    try:
        return ticket_get_for(tenant=request.tenant, actor=request.user, number=number)
    except Ticket.DoesNotExist as exc:
        raise Http404("No such ticket") from exc


# The composer's names for the service's fields (tickets.services.ticket_reply).
REPLY_FORM_FIELDS = {"set_status": "then"}


def _form_error(form: forms.Form, exc: ApplicationError) -> None:
    """A refusal of the service shown on the form: under its field when the form has
    one, above the form otherwise."""
    field = REPLY_FORM_FIELDS.get(exc.field, exc.field)
    form.add_error(field if field in form.fields else None, exc.message)


@require_POST
def ticket_reply_view(request, number: int):
    """The composer's post: a reply or a note, then the status and assignee
    (``tickets.services.ticket_reply``). A second post of the same form sends nothing and
    says so."""
    ticket = _ticket_or_404(request, number)
    form = ReplyForm(request.POST, request.FILES)
    if not form.is_valid():
        return render(request, "tickets/ticket_detail.html",
                      _detail_context(request, ticket, form), status=400)
    data = form.cleaned_data
    public = data["mode"] != "note"
    before = (ticket.status, ticket.assignee_id)
    try:
        ticket_reply(ticket=ticket, author=request.user, body_text=data["body"],
                     public=public, to=data["to"], cc=data["cc"],
                     attachments=form.attachments(), form_token=data["form_token"],
                     set_status=data["then"], assign_to_me=data["assign_to_me"])
    except DuplicateSubmission:
        messages.warning(request, "This form was already sent (a second click or a "
                                  "resubmitted page): it went out once, nothing more was "
                                  "sent.")
        return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=number)
    except ApplicationError as exc:
        _form_error(form, exc)
        return render(request, "tickets/ticket_detail.html",
                      _detail_context(request, ticket, form), status=400)
    done = "Reply queued; its delivery status shows below." if public else "Note added."
    if ticket.status != before[0]:
        done += f" The ticket is {ticket.get_status_display()} now."
    if ticket.assignee_id != before[1]:
        done += " It is assigned to you."
    messages.success(request, done)
    return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=ticket.number)


def _outbound_or_404(request, number: int, message_id: int) -> tuple[Ticket, Message]:
    ticket = _ticket_or_404(request, number)
    try:
        return ticket, outbound_message_get_for(ticket=ticket, message_id=message_id)
    except Message.DoesNotExist as exc:
        raise Http404("No such message") from exc


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
    try:
        attachment = attachment_get_for(ticket=ticket, attachment_id=attachment_id)
    except Attachment.DoesNotExist as exc:
        raise Http404("No such attachment") from exc
    return attachment_response(attachment=attachment, inline=request.GET.get("inline") == "1")


def attachment_response(*, attachment: Attachment, inline: bool = False) -> FileResponse:
    """The file of ``attachment`` as the UI and the API serve it: a download
    (``application/octet-stream``), or for a raster image asked ``inline`` the image
    itself; always ``nosniff`` and a sandboxing CSP, so nothing in it runs as our page."""
    inline = inline and attachment.content_type in RASTER_IMAGE_TYPES
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
    try:
        ticket_update(ticket=ticket, actor=request.user,
                      **{name: form.cleaned_data[name]
                         for name in ("status", "priority", "team", "assignee")})
    except ApplicationError as exc:
        return render(request, "tickets/ticket_detail.html",
                      {**_detail_context(request, ticket),
                       "controls_errors": {exc.field or "ticket": [exc.message]}},
                      status=400)
    messages.success(request, "Ticket updated.")
    return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=ticket.number)


@require_POST
def ticket_merge_view(request, number: int):
    """Merge this ticket into the one numbered ``into``: its messages, attachments and
    thread move there and this ticket closes with a link to it."""
    source = _ticket_or_404(request, number)
    into = _int_or_none(request.POST.get("into", "").strip().lstrip("#"))
    try:
        target = ticket_get_for(tenant=request.tenant, actor=request.user,
                                number=into) if into else None
    except Ticket.DoesNotExist:
        target = None
    if target is None:
        messages.error(request, "Merge: enter the number of an existing ticket.")
        return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=number)
    try:
        ticket_merge(source=source, target=target, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, f"Merge refused: {exc.message}")
        return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=number)
    messages.success(request, f"#{source.number} was merged into this ticket.")
    return redirect("tickets:detail", tenant_slug=request.tenant.slug, number=target.number)


@require_POST
def ticket_settings_view(request):
    """The workspace's ticket settings (admins only), shown on the Email channels page."""
    from tickets.forms import TicketSettingsForm

    require_admin(request, "change the ticket settings")
    form = TicketSettingsForm(request.POST, instance=request.tenant)
    if not form.is_valid():  # two checkboxes: only a forged post gets here
        messages.error(request, "Ticket settings not saved.")
    else:
        ticket_settings_update(tenant=request.tenant, actor=request.user, **form.cleaned_data)
        messages.success(request, "Ticket settings saved.")
    return redirect("channels_email:channels", tenant_slug=request.tenant.slug)


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
