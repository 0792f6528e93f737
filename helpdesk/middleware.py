"""Resolve ``request.tenant`` from the URL and enter its scope for the whole request.

Contract:
- A URL whose pattern captures ``tenant_slug`` requires a signed-in member of that
  tenant. Anonymous users are sent to the login page; signed-in non-members get 404,
  exactly like an unknown slug ("not found" and "not yours" look the same).
- ``request.membership`` is the user's membership of it, read in the same query as all
  of theirs (``request.user_memberships``, by workspace name, for the header's switcher).
- The view runs inside ``tenant_scope(request.tenant)``, so every tenant-owned query is
  restricted to it; ``tenant_slug`` is removed from the view's kwargs.
- Django's admin site (superusers only) runs unscoped: operators see every tenant.
- Any other URL runs with no scope: a tenant-owned query there raises ScopeError.
"""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import Http404
from django.urls import Resolver404, resolve

from helpdesk.selectors import memberships_for_user
from helpdesk.tenancy import tenant_scope, unscoped

TENANT_KWARG = "tenant_slug"


class TenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.tenant = None
        request.membership = None
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return self.get_response(request)

        if match.app_name == "admin":
            if request.user.is_active and request.user.is_superuser:
                with unscoped():
                    return self.get_response(request)
            return self.get_response(request)

        slug = match.kwargs.get(TENANT_KWARG)
        if slug is None:
            return self.get_response(request)
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        # All of the user's memberships in one query: the one of this workspace, and the
        # others for the header's workspace switcher (helpdesk.context_processors).
        memberships = memberships_for_user(user=request.user)
        membership = next((m for m in memberships if m.tenant.slug == slug), None)
        if membership is None:
            raise Http404("No such workspace")
        request.tenant = membership.tenant
        request.membership = membership
        request.user_memberships = memberships
        with tenant_scope(membership.tenant):
            return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        # The view gets request.tenant; the slug it came from is the middleware's business.
        view_kwargs.pop(TENANT_KWARG, None)
        return None


class ContentSecurityPolicyMiddleware:
    """A strict Content-Security-Policy on every response: our own scripts, styles and
    images only (no inline script, no plugins, no framing). Forms may also go to the
    sign-in pages of the enabled providers (the connect flow redirects there)."""

    def __init__(self, get_response):
        self.get_response = get_response

    @staticmethod
    def policy() -> str:
        from channels_email import providers

        form_action = " ".join(["form-action 'self'", *providers.form_action_origins()])
        return "; ".join([
            "default-src 'self'", "script-src 'self'", "style-src 'self'",
            "img-src 'self' data:", "object-src 'none'", "base-uri 'none'",
            "frame-ancestors 'none'", form_action,
        ])

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.policy())
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
