"""Admin pages for mailboxes that sign in with a password (IMAP/SMTP): add one, or enter
its password again (Reconnect after "Sign-in failed"). "Test connection" signs in to the
servers and lists their folders without saving; Save checks again, then saves. The form
is the provider's own (``account_form``). Tenant admins only; runs in the tenant scope."""

from __future__ import annotations

from datetime import datetime, time

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone

from channels_email import providers
from channels_email.connect import ConnectError
from channels_email.models import EmailConnection
from channels_email.password_connect import account_check, account_save
from channels_email.providers.base import Capability
from channels_email.views import CHANNEL_ADMIN
from helpdesk.tenancy import require_admin


def _start_of(day) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def _page(request, provider_name: str, connection: EmailConnection | None):
    provider = providers.get(provider_name)
    existing = connection.credentials or {} if connection is not None else {}
    initial = provider.account_form.initial_from(
        connection.address, existing, connection.sync_start_at) if connection and existing \
        else ({"address": connection.address} if connection else None)
    form = provider.account_form(request.POST or None, existing=existing, initial=initial)
    check, problem, status = None, "", 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            address = connection.address if connection else form.cleaned_data["address"]
            try:
                if request.POST.get("action") == "test":
                    check = account_check(provider=provider_name,
                                          credentials=form.credentials())
                    status = 200
                else:
                    result = account_save(
                        tenant=request.tenant, actor=request.user, provider=provider_name,
                        address=address, credentials=form.credentials(),
                        sync_start_at=connection.sync_start_at if connection else
                        _start_of(form.cleaned_data["sync_start_at"]),
                        connection=connection)
                    if result.created:
                        messages.success(request, f"{result.connection.address} is connected. "
                                                  "Choose where its mail goes.")
                        return redirect("channels_email:connection",
                                        tenant_slug=request.tenant.slug,
                                        connection_id=result.connection.pk)
                    messages.success(request, f"{address} signs in again; mail that arrived "
                                              "meanwhile is being fetched.")
                    return redirect("channels_email:channels", tenant_slug=request.tenant.slug)
            except ConnectError as exc:
                problem = str(exc)
    return render(request, "channels_email/password_account.html", {
        "form": form, "provider": provider, "connection": connection, "check": check,
        "problem": problem}, status=status)


def account_add(request, provider: str):
    require_admin(request, CHANNEL_ADMIN)
    if not providers.can(provider, Capability.PASSWORD_SIGN_IN):
        raise Http404("No such provider")
    return _page(request, provider, None)


def account_edit(request, connection_id: int):
    require_admin(request, CHANNEL_ADMIN)
    conn = EmailConnection.objects.filter(pk=connection_id).first()
    if conn is None or not providers.can(conn.provider, Capability.PASSWORD_SIGN_IN):
        raise Http404("No such connection")
    return _page(request, conn.provider, conn)
