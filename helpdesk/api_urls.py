"""``/api/v1/``: the REST API (DESIGN.md section 11). The workspace comes from the API
key, so no URL here names one."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from contacts import api as contacts_api
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
]
