"""Adding a forwarding mailbox (Admin > Channels > Email > Add Email Account): the admin
names the support address they forward from; we generate the address to forward to and
land on the mailbox's page, which shows it with the set-up steps. Tenant admins only;
runs in the tenant scope. The form is the provider's own (``add_form``)."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render

from channels_email import providers
from channels_email.services import connection_create_forwarding
from channels_email.views import CHANNEL_ADMIN
from helpdesk.errors import ApplicationError
from helpdesk.tenancy import require_admin


def forwarding_add(request, provider: str):
    require_admin(request, CHANNEL_ADMIN)
    if not providers.can(provider, providers.Capability.FORWARDED):
        raise Http404("No such provider")
    client = providers.get(provider)
    form = client.add_form(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                conn = connection_create_forwarding(
                    tenant=request.tenant, actor=request.user, provider=provider,
                    address=form.cleaned_data["address"],
                    display_name=form.cleaned_data.get("display_name", ""))
            except ApplicationError as exc:
                form.add_error("address" if exc.field == "address" else None, exc.message)
            else:
                messages.success(request, f"{conn.address} is added. Forward it to "
                                          f"{conn.inbound_address} as shown below; it turns "
                                          "Active when the first forwarded email arrives.")
                return redirect("channels_email:connection", tenant_slug=request.tenant.slug,
                                connection_id=conn.pk)
    return render(request, "channels_email/forwarding_add.html", {
        "form": form, "provider": client}, status=status)
