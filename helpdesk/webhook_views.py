"""Settings > Webhooks: workspace admins' outgoing webhook endpoints (thin views over
``helpdesk.webhooks_out``)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from helpdesk.errors import ApplicationError
from helpdesk.forms import WebhookEndpointForm
from helpdesk.models import WebhookEndpoint
from helpdesk.tenancy import require_admin
from helpdesk.webhooks_out import (
    secret_entries,
    webhook_attempts_for,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_get,
    webhook_endpoint_test,
    webhook_endpoint_update,
    webhook_endpoints_for,
    webhook_secret_rotate,
)

DOING = "manage webhooks"
ACTIONS = ("test", "rotate", "enable", "disable", "delete")  # each its own URL, POST only
ATTEMPTS_SHOWN = 50


def _endpoint(request, endpoint_id: int) -> WebhookEndpoint:
    try:
        endpoint = webhook_endpoint_get(tenant=request.tenant, endpoint_id=endpoint_id)
    except WebhookEndpoint.DoesNotExist:
        raise Http404 from None
    require_admin(request, DOING)
    return endpoint


def webhook_list(request):
    """The endpoints (URL, events, state, last failure) and a form for a new one."""
    require_admin(request, DOING)
    form = WebhookEndpointForm()
    if request.method == "POST":
        form = WebhookEndpointForm(request.POST)
        if form.is_valid():
            try:
                endpoint = webhook_endpoint_create(
                    tenant=request.tenant, actor=request.user, url=form.cleaned_data["url"],
                    events=form.cleaned_data["events"],
                    description=form.cleaned_data["description"])
            except ApplicationError as exc:
                form.add_error(exc.field, exc.message)
            else:
                messages.success(request, "Endpoint added. Copy its signing secret below "
                                          "into the receiving application.")
                return redirect("tenant:webhook_detail", tenant_slug=request.tenant.slug,
                                endpoint_id=endpoint.pk)
    return render(request, "helpdesk/webhooks.html", {
        "endpoints": webhook_endpoints_for(tenant=request.tenant), "form": form,
    }, status=400 if form.errors else 200)


def webhook_detail(request, endpoint_id: int):
    """One endpoint: edit it, enable or disable it, its secret(s), and its attempts."""
    endpoint = _endpoint(request, endpoint_id)
    initial = {"url": endpoint.url, "description": endpoint.description,
               "events": endpoint.events}
    form = WebhookEndpointForm(initial=initial)
    if request.method == "POST":
        form = WebhookEndpointForm(request.POST, initial=initial)
        if form.is_valid():
            try:
                webhook_endpoint_update(endpoint=endpoint, actor=request.user,
                                        url=form.cleaned_data["url"],
                                        events=form.cleaned_data["events"],
                                        description=form.cleaned_data["description"])
            except ApplicationError as exc:
                form.add_error(exc.field, exc.message)
            else:
                messages.success(request, "Endpoint saved.")
                return redirect("tenant:webhook_detail", tenant_slug=request.tenant.slug,
                                endpoint_id=endpoint.pk)
    return render(request, "helpdesk/webhook_detail.html", {
        "endpoint": endpoint, "form": form, "secrets": secret_entries(endpoint),
        "attempts": webhook_attempts_for(endpoint=endpoint)[:ATTEMPTS_SHOWN],
        "overlap_hours": int(settings.WEBHOOK_SECRET_OVERLAP.total_seconds() // 3600),
    }, status=400 if form.errors else 200)


@require_POST
def webhook_action(request, endpoint_id: int, action: str):
    """The endpoint's buttons: test, rotate (the secret), enable, disable, delete."""
    endpoint = _endpoint(request, endpoint_id)
    back = redirect("tenant:webhook_detail", tenant_slug=request.tenant.slug,
                    endpoint_id=endpoint.pk)
    try:
        if action == "test":
            event = webhook_endpoint_test(endpoint=endpoint, actor=request.user)
            messages.success(request, f"Test event {event.webhook_id} queued; its attempt "
                                      "shows below in a moment.")
        elif action == "rotate":
            webhook_secret_rotate(endpoint=endpoint, actor=request.user)
            messages.success(request, "New secret made. The previous one keeps signing "
                                      "alongside it until the time shown.")
        elif action in ("enable", "disable"):
            webhook_endpoint_update(endpoint=endpoint, actor=request.user,
                                    is_active=action == "enable")
            messages.success(request, "Endpoint enabled: pending events go out now."
                             if action == "enable" else "Endpoint disabled: no events are "
                                                       "sent to it until it is enabled.")
        elif action == "delete":
            webhook_endpoint_delete(endpoint=endpoint, actor=request.user)
            messages.success(request, f"Endpoint {endpoint.url} deleted.")
            return redirect("tenant:webhooks", tenant_slug=request.tenant.slug)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return back
