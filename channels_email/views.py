"""Admin pages of the email channel: emails that need attention (skipped, quarantined or
failed), their raw download and reprocessing; the connections, their health and settings.
Tenant admins only; runs in the tenant scope."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from channels_email import connect, providers
from channels_email.forms import ConnectionFiltersForm, ConnectionSettingsForm
from channels_email.ingest import inbound_email_reprocess
from channels_email.models import EmailConnection, InboundEmail, InboundState
from channels_email.selectors import (
    ATTENTION_STATES,
    connection_health,
    connections_with_health,
    forwarding_overview,
    inbound_email_get,
    inbound_emails_needing_attention,
    reason_in_words,
    suppressions_for_tenant,
)
from channels_email.services import (
    FILTER_FIELDS,
    SETTINGS_FIELDS,
    connection_settings_save,
    inbound_email_raw_read,
    suppression_add,
    suppression_remove,
)
from helpdesk.errors import ApplicationError
from helpdesk.selectors import membership_for, memberships_for_user
from helpdesk.tenancy import require_admin, tenant_scope

CHANNEL_ADMIN = "manage email channels"  # what the 403 says a non-admin cannot do


def _admin_row(request, inbound_email_id: int) -> InboundEmail:
    try:
        row = inbound_email_get(tenant=request.tenant, inbound_email_id=inbound_email_id)
    except InboundEmail.DoesNotExist as exc:
        raise Http404("No such email") from exc
    require_admin(request)
    return row


def inbound_attention_list(request):
    require_admin(request, "see this page")
    state = request.GET.get("state", "")
    page = Paginator(inbound_emails_needing_attention(tenant=request.tenant, state=state),
                     50).get_page(request.GET.get("page"))
    rows = [(row, *reason_in_words(row.reason)) for row in page]
    return render(request, "channels_email/inbound_attention.html", {
        "page": page, "rows": rows, "state": state,
        "states": [(v, label) for v, label in InboundState.choices if v in ATTENTION_STATES]})


def inbound_raw_download(request, inbound_email_id: int):
    row = _admin_row(request, inbound_email_id)
    data = inbound_email_raw_read(inbound_email=row, actor=request.user)
    response = HttpResponse(data, content_type="message/rfc822")
    response["Content-Disposition"] = f'attachment; filename="inbound-{row.pk}.eml"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_POST
def inbound_reprocess(request, inbound_email_id: int):
    row = _admin_row(request, inbound_email_id)
    outcome = inbound_email_reprocess(inbound_email=row, actor=request.user)
    if outcome is not None:
        level = messages.SUCCESS if outcome.state == InboundState.PROCESSED else messages.WARNING
        messages.add_message(request, level, f"Email {row.pk} reprocessed: {outcome.state}"
                             + (f" ({outcome.reason})" if outcome.reason else ""))
    else:
        messages.info(request, f"Email {row.pk} is already processed.")
    back = reverse("channels_email:attention", kwargs={"tenant_slug": request.tenant.slug})
    # Back to the list as it was filtered (a state among the listed ones, a page number).
    kept = {key: request.POST[key] for key in ("state", "page")
            if request.POST.get(key, "").isalnum()}
    return redirect(f"{back}?{urlencode(kept)}" if kept else back)


# --------------------------------------------------------------- Channels > Email


def _connection(request, connection_id: int) -> EmailConnection:
    require_admin(request, CHANNEL_ADMIN)
    conn = EmailConnection.objects.filter(pk=connection_id).select_related(
        "routing_team", "routing_flow").first()
    if conn is None:
        raise Http404("No such connection")
    return conn


def email_channels(request):
    """Every connection of the workspace with its health, and Add Email Account."""
    require_admin(request, CHANNEL_ADMIN)
    return render(request, "channels_email/channels.html", {
        "connections": connections_with_health(tenant=request.tenant),
        "connect_options": [p for p in providers.enabled()
                            if providers.Capability.OAUTH_SIGN_IN in p.capabilities],
        "account_options": [p for p in providers.enabled()
                            if providers.Capability.PASSWORD_SIGN_IN in p.capabilities],
        "forwarding_options": [p for p in providers.enabled()
                               if providers.Capability.FORWARDED in p.capabilities],
        "suppressions": suppressions_for_tenant(tenant=request.tenant)[:200],
    })


@require_POST
def suppression_add_view(request):
    require_admin(request, CHANNEL_ADMIN)
    address = request.POST.get("email", "").strip()
    try:
        _, created = suppression_add(tenant=request.tenant, email=address, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, f"Not added: {exc.message}")
        return redirect("channels_email:channels", tenant_slug=request.tenant.slug)
    if created:
        messages.success(request, f"{address} is on the suppression list.")
    else:
        messages.info(request, f"{address} was on the suppression list already.")
    return redirect("channels_email:channels", tenant_slug=request.tenant.slug)


@require_POST
def suppression_remove_view(request, suppression_id: int):
    require_admin(request, CHANNEL_ADMIN)
    if not suppression_remove(tenant=request.tenant, suppression_id=suppression_id,
                              actor=request.user):
        raise Http404("No such address on the suppression list")
    messages.success(request, "Removed from the suppression list.")
    return redirect("channels_email:channels", tenant_slug=request.tenant.slug)


@require_POST
def connect_start(request, provider: str):
    require_admin(request, CHANNEL_ADMIN)
    if not providers.can(provider, providers.Capability.OAUTH_SIGN_IN):
        raise Http404("No such provider")
    if not providers.get(provider).is_configured():
        messages.error(request, "That provider is not configured on this server.")
        return redirect("channels_email:channels", tenant_slug=request.tenant.slug)
    return _to_sign_in(request, provider)


def _to_sign_in(request, provider: str, reconnect: EmailConnection | None = None):
    try:
        return redirect(connect.oauth_start(request=request, tenant=request.tenant,
                                            provider=provider, reconnect=reconnect))
    except connect.ConnectError as exc:
        messages.error(request, str(exc))
        return redirect("channels_email:channels", tenant_slug=request.tenant.slug)


@require_POST
def connection_reconnect(request, connection_id: int):
    conn = _connection(request, connection_id)
    if providers.can(conn.provider, providers.Capability.PASSWORD_SIGN_IN):
        # A password mailbox reconnects by entering its password again.
        return redirect("channels_email:account_edit", tenant_slug=request.tenant.slug,
                        connection_id=conn.pk)
    return _to_sign_in(request, conn.provider, conn)


@require_POST
def connection_disconnect_view(request, connection_id: int):
    conn = _connection(request, connection_id)
    connect.connection_disconnect(connection=conn, actor=request.user)
    hint = getattr(providers.get(conn.provider), "disconnect_hint", "") \
        if providers.is_enabled(conn.provider) else ""
    messages.success(request, f"{conn.address} is disconnected. Its tickets stay."
                     + (f" {hint}" if hint else ""))
    return redirect("channels_email:channels", tenant_slug=request.tenant.slug)


def connection_detail(request, connection_id: int):
    """A connection's settings (routing: Team or Flow and its target, applying to new mail
    only; the reply mailbox, default mailbox and acknowledgement) and, in a form of their
    own (``section=filters``), its inbound filters."""
    conn = _connection(request, connection_id)
    filters_posted = request.method == "POST" and request.POST.get("section") == "filters"
    settings_posted = request.method == "POST" and not filters_posted
    form = ConnectionSettingsForm(request.POST if settings_posted else None, instance=conn,
                                  tenant=request.tenant)
    filters_form = ConnectionFiltersForm(request.POST if filters_posted else None,
                                         instance=conn, prefix="filters")
    posted, fields = (form, SETTINGS_FIELDS) if settings_posted else \
        (filters_form, FILTER_FIELDS)
    if request.method == "POST":
        if posted.is_valid():
            connection_settings_save(connection=posted.save(commit=False),
                                     actor=request.user, changed=posted.changed_data,
                                     fields=fields)
            messages.success(request, "Filters saved; they apply to mail that arrives from "
                                      "now on." if filters_posted else
                                      "Settings saved. Routing applies to mail that arrives "
                                      "from now on.")
            return redirect("channels_email:channels", tenant_slug=request.tenant.slug)
    context = {"connection": conn, "health": connection_health(conn), "form": form,
               "filters_form": filters_form, "forwarding": forwarding_overview(conn)}
    return render(request, "channels_email/connection.html", context,
                  status=400 if request.method == "POST" else 200)


def oauth_callback(request, provider: str):
    """The provider sends the admin back here (one fixed URL, not tenant-scoped). A return
    that is no sign-in (an organization's admin consent, which a tenant admin without a
    helpdesk account may give) is answered without a login; it changes nothing."""
    notice = connect.callback_notice(provider=provider, params=request.GET.dict())
    if notice:
        admin_of = [m.tenant for m in memberships_for_user(user=request.user) if m.is_admin]
        return render(request, "channels_email/connect_notice.html",
                      {"notice": notice, "admin_of": admin_of})
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    try:
        state = connect.read_state(request=request, provider=provider,
                                   state=request.GET.get("state", ""))
    except connect.ConnectError as exc:
        return render(request, "channels_email/connect_error.html", {"error": str(exc)},
                      status=400)
    membership = membership_for(user=request.user, tenant_slug=state["t"])
    if membership is None or not membership.is_admin:
        return render(request, "channels_email/connect_error.html",
                      {"error": "You are not an admin of that workspace."}, status=403)
    tenant = membership.tenant
    with tenant_scope(tenant):
        try:
            result = connect.oauth_complete(request=request, provider=provider, tenant=tenant,
                                            state=state, params=request.GET.dict())
        except connect.ConnectError as exc:
            if exc.help_url:  # a link the admin needs (an organization's admin consent)
                return render(request, "channels_email/connect_error.html", {
                    "error": str(exc), "help_url": exc.help_url,
                    "help_label": exc.help_label, "tenant": tenant}, status=403)
            (messages.info if exc.declined else messages.error)(request, str(exc))
            return redirect("channels_email:channels", tenant_slug=tenant.slug)
    conn = result.connection
    if result.created:
        messages.success(request, f"{conn.address} is connected. Choose where its mail goes.")
        return redirect("channels_email:connection", tenant_slug=tenant.slug,
                        connection_id=conn.pk)
    messages.success(request, f"{conn.address} is reconnected; mail that arrived meanwhile "
                              "is being fetched.")
    return redirect("channels_email:channels", tenant_slug=tenant.slug)
