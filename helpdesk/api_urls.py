"""``/api/v1/``: the REST API (DESIGN.md section 11). The workspace comes from the API
key, so no URL here names one."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from channels_email import api as email_api
from contacts import api as contacts_api
from helpdesk import api_views
from routing import api as routing_api
from tickets import api as tickets_api

app_name = "api"

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
    path("tickets/", tickets_api.TicketListView.as_view(), name="ticket-list"),
    path("tickets/<int:number>/", tickets_api.TicketDetailView.as_view(),
         name="ticket-detail"),
    path("tickets/<int:number>/timeline/", tickets_api.TicketTimelineView.as_view(),
         name="ticket-timeline"),
    path("contacts/", contacts_api.ContactListView.as_view(), name="contact-list"),
    path("contacts/<int:contact_id>/", contacts_api.ContactDetailView.as_view(),
         name="contact-detail"),
    path("teams/", routing_api.TeamListView.as_view(), name="team-list"),
    path("flows/", routing_api.FlowListView.as_view(), name="flow-list"),
    path("members/", api_views.MemberListView.as_view(), name="member-list"),
    path("email-connections/", email_api.ConnectionListView.as_view(),
         name="connection-list"),
    path("email-connections/<int:connection_id>/", email_api.ConnectionDetailView.as_view(),
         name="connection-detail"),
    path("suppressions/", email_api.SuppressionListView.as_view(), name="suppression-list"),
    path("suppressions/<int:suppression_id>/", email_api.SuppressionDetailView.as_view(),
         name="suppression-detail"),
    path("inbound-emails/", email_api.InboundEmailListView.as_view(),
         name="inbound-email-list"),
    path("inbound-emails/<int:inbound_email_id>/reprocess/",
         email_api.InboundEmailReprocessView.as_view(), name="inbound-email-reprocess"),
    path("tickets/<int:number>/merge/", tickets_api.TicketMergeView.as_view(),
         name="ticket-merge"),
    path("tickets/<int:number>/replies/", tickets_api.TicketReplyView.as_view(),
         name="ticket-replies"),
    path("tickets/<int:number>/notes/", tickets_api.TicketNoteView.as_view(),
         name="ticket-notes"),
    path("tickets/<int:number>/messages/<int:message_id>/retry/",
         tickets_api.MessageRetryView.as_view(), name="ticket-message-retry"),
    path("tickets/<int:number>/attachments/<int:attachment_id>/",
         tickets_api.AttachmentDownloadView.as_view(), name="ticket-attachment"),
    path("webhook-endpoints/", api_views.WebhookEndpointListView.as_view(),
         name="webhook-endpoint-list"),
    path("webhook-endpoints/<int:webhook_endpoint_id>/",
         api_views.WebhookEndpointDetailView.as_view(), name="webhook-endpoint-detail"),
    path("webhook-endpoints/<int:webhook_endpoint_id>/rotate-secret/",
         api_views.WebhookSecretRotateView.as_view(), name="webhook-endpoint-rotate-secret"),
    path("webhook-endpoints/<int:webhook_endpoint_id>/test/",
         api_views.WebhookTestView.as_view(), name="webhook-endpoint-test"),
    path("webhook-endpoints/<int:webhook_endpoint_id>/attempts/",
         api_views.WebhookAttemptListView.as_view(), name="webhook-endpoint-attempts"),
]
