"""URL map. Every UI page of a tenant lives under ``/<tenant_slug>/`` (TenantMiddleware);
top-level words in front of it are reserved slugs (settings.TENANT_RESERVED_SLUGS)."""

from django.contrib import admin
from django.urls import include, path, re_path

from channels_email import views as channel_views
from channels_email import webhooks
from helpdesk import api, views, webhook_views
from tickets import views as ticket_views

tenant_patterns = [
    path("", views.tenant_home, name="home"),
    path("settings/members/", views.members, name="members"),
    path("settings/members/invitations/<int:invitation_id>/revoke/",
         views.invitation_revoke_view, name="invitation_revoke"),
    path("settings/api-keys/", views.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", views.api_key_revoke_view,
         name="api_key_revoke"),
    path("settings/webhooks/", webhook_views.webhook_list, name="webhooks"),
    path("settings/webhooks/<int:endpoint_id>/", webhook_views.webhook_detail,
         name="webhook_detail"),
    *[path(f"settings/webhooks/<int:endpoint_id>/{action}/", webhook_views.webhook_action,
           {"action": action}, name=f"webhook_{action}")
      for action in webhook_views.ACTIONS],
]

# The agent's own notifications; the one to open is posted, never named in the URL.
notification_patterns = [
    path("", ticket_views.notification_list_view, name="list"),
    path("badge/", ticket_views.notification_badge_view, name="badge"),
    path("open/", ticket_views.notification_open_view, name="open"),
    path("read/", ticket_views.notification_read_all_view, name="read_all"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/invite/<str:token>/", views.invitation_accept_view, name="invitation_accept"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("healthz", views.healthz, name="healthz"),
    # Browsers ask for /favicon.ico whatever the page's <link rel="icon"> says.
    path("favicon.ico", views.favicon, name="favicon"),
    path("api/v1/", include("helpdesk.api_urls")),
    # Any other /api/ URL is an API 404 (a problem document), never a workspace slug.
    re_path(r"^api(?:/|$)", api.api_not_found, name="api_not_found"),
    # Each enabled provider's webhooks (/webhooks/google/pubsub/, ...), from the registry.
    *webhooks.urlpatterns(),
    path("oauth/<str:provider>/callback/", channel_views.oauth_callback, name="oauth_callback"),
    path("", views.home, name="home"),
    path("<slug:tenant_slug>/", include((tenant_patterns, "tenant"))),
    path("<slug:tenant_slug>/tickets/", include("tickets.urls")),
    path("<slug:tenant_slug>/notifications/",
         include((notification_patterns, "notifications"))),
    path("<slug:tenant_slug>/contacts/", include("contacts.urls")),
    path("<slug:tenant_slug>/settings/email/", include("channels_email.urls")),
    path("<slug:tenant_slug>/settings/routing/", include("routing.urls")),
]
