"""Core pages: home / workspace chooser, members and invitations, health check."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from helpdesk.errors import ApplicationError
from helpdesk.forms import AcceptInvitationForm, ApiKeyForm, InvitationForm
from helpdesk.models import ApiKey, Invitation
from helpdesk.selectors import (
    api_keys_for,
    invitation_by_token,
    memberships_for_user,
    tenant_members,
    tenant_pending_invitations,
)
from helpdesk.services import (
    InvitationError,
    api_key_create,
    api_key_revoke,
    invitation_accept,
    invitation_create,
    invitation_revoke,
)
from helpdesk.tenancy import require_admin


@login_required
def home(request):
    memberships = memberships_for_user(user=request.user)
    if len(memberships) == 1:
        return redirect("tickets:list", tenant_slug=memberships[0].tenant.slug)
    return render(request, "helpdesk/home.html", {"memberships": memberships})


def tenant_home(request):
    return redirect("tickets:list", tenant_slug=request.tenant.slug)


# Mail backends that do not send: where the invitation goes instead (the demo and dev use
# the console one, helpdesk/settings.py).
_MAIL_KEPT = {
    "django.core.mail.backends.console.EmailBackend":
        "this server prints email instead of sending it: the invitation, with its link, is "
        "in the output of the terminal where the server runs",
    "django.core.mail.backends.filebased.EmailBackend":
        "this server writes email to files instead of sending it: the invitation, with its "
        "link, is in {EMAIL_FILE_PATH}",
    "django.core.mail.backends.locmem.EmailBackend":
        "this server keeps email in memory instead of sending it (test mail)",
    "django.core.mail.backends.dummy.EmailBackend":
        "this server discards email: nothing was sent",
}


def _invitation_sent(email: str) -> str:
    """The flash after an invitation: true to the configured mail backend."""
    kept = _MAIL_KEPT.get(settings.EMAIL_BACKEND)
    if kept is None:
        return f"Invitation sent to {email}."
    where = kept.format(EMAIL_FILE_PATH=getattr(settings, "EMAIL_FILE_PATH", ""))
    return f"Invitation for {email} created; {where}."


def members(request):
    form = InvitationForm()
    if request.method == "POST":
        require_admin(request)
        form = InvitationForm(request.POST)
        if form.is_valid():
            try:
                invitation_create(tenant=request.tenant, email=form.cleaned_data["email"],
                                  role=form.cleaned_data["role"], invited_by=request.user)
            except ValidationError as exc:
                form.add_error("email", exc)
            else:
                messages.success(request, _invitation_sent(form.cleaned_data["email"]))
                return redirect("tenant:members", tenant_slug=request.tenant.slug)
    return render(request, "helpdesk/members.html", {
        "members": tenant_members(tenant=request.tenant),
        "invitations": tenant_pending_invitations(tenant=request.tenant),
        "form": form,
    })


@require_POST
def invitation_revoke_view(request, invitation_id: int):
    invitation = get_object_or_404(Invitation, tenant=request.tenant, pk=invitation_id)
    require_admin(request)
    invitation_revoke(invitation=invitation, actor=request.user)
    messages.success(request, f"Invitation for {invitation.email} revoked.")
    return redirect("tenant:members", tenant_slug=request.tenant.slug)


def invitation_accept_view(request, token: str):
    invitation = invitation_by_token(token=token)
    if invitation is None or not invitation.is_usable:
        return render(request, "helpdesk/invitation_invalid.html", status=404)
    signed_in = request.user.is_authenticated
    form = None if signed_in else AcceptInvitationForm(email=invitation.email)
    if request.method == "POST":
        if not signed_in:
            form = AcceptInvitationForm(request.POST, email=invitation.email)
        if signed_in or form.is_valid():
            try:
                membership = invitation_accept(
                    token=token,
                    user=request.user if signed_in else None,
                    password=None if signed_in else form.cleaned_data["password1"],
                    first_name="" if signed_in else form.cleaned_data["first_name"],
                    last_name="" if signed_in else form.cleaned_data["last_name"],
                )
            except InvitationError as exc:
                messages.error(request, str(exc))
            else:
                if not signed_in:
                    login(request, membership.user,
                          backend="django.contrib.auth.backends.ModelBackend")
                messages.success(request, f"Welcome to {membership.tenant.name}.")
                return redirect("tickets:list", tenant_slug=membership.tenant.slug)
    return render(request, "helpdesk/invitation_accept.html", {
        "invitation": invitation, "form": form, "signed_in": signed_in,
    })


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


NEW_API_KEY_SESSION = "new_api_key"


def api_keys(request):
    """Workspace admins' API keys page: the keys (prefix, scope, creator, last use), a new
    key (its secret shown on this one answer only) and Revoke."""
    require_admin(request, "manage API keys")
    form = ApiKeyForm()
    if request.method == "POST":
        form = ApiKeyForm(request.POST)
        if form.is_valid():
            try:
                key, secret = api_key_create(tenant=request.tenant, actor=request.user,
                                             name=form.cleaned_data["name"],
                                             scope=form.cleaned_data["scope"])
            except ApplicationError as exc:
                form.add_error(exc.field, exc.message)
            else:
                # Shown on the next page only (then dropped), so that reloading it cannot
                # post the form again and make a second key.
                request.session[NEW_API_KEY_SESSION] = {"name": key.name, "secret": secret}
                return redirect("tenant:api_keys", tenant_slug=request.tenant.slug)
    return render(request, "helpdesk/api_keys.html", {
        "keys": api_keys_for(tenant=request.tenant), "form": form,
        "created": request.session.pop(NEW_API_KEY_SESSION, None),
    }, status=400 if form.errors else 200)


@require_POST
def api_key_revoke_view(request, key_id: int):
    key = get_object_or_404(ApiKey, tenant=request.tenant, pk=key_id)
    require_admin(request, "manage API keys")
    if api_key_revoke(key=key, actor=request.user):
        messages.success(request, f"API key “{key.name}” is revoked; requests with it now "
                                  "get 401.")
    return redirect("tenant:api_keys", tenant_slug=request.tenant.slug)


def favicon(request):
    """Browsers ask for /favicon.ico whatever a page's <link rel="icon"> says: send them to
    the icon the pages name (resolved per request, so a hashed static name works)."""
    from django.templatetags.static import static

    return HttpResponsePermanentRedirect(static("favicon.svg"))
