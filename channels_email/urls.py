from django.urls import path

from channels_email import account_views, forwarding_views, views

app_name = "channels_email"
urlpatterns = [
    path("", views.email_channels, name="channels"),
    path("connect/<str:provider>/", views.connect_start, name="connect"),
    path("add/<str:provider>/", account_views.account_add, name="account_add"),
    path("forward/<str:provider>/", forwarding_views.forwarding_add, name="forwarding_add"),
    path("<int:connection_id>/", views.connection_detail, name="connection"),
    path("<int:connection_id>/account/", account_views.account_edit, name="account_edit"),
    path("<int:connection_id>/reconnect/", views.connection_reconnect, name="reconnect"),
    path("<int:connection_id>/disconnect/", views.connection_disconnect_view,
         name="disconnect"),
    path("suppressions/add/", views.suppression_add_view, name="suppression_add"),
    path("suppressions/<int:suppression_id>/remove/", views.suppression_remove_view,
         name="suppression_remove"),
    path("inbound/", views.inbound_attention_list, name="attention"),
    path("inbound/<int:inbound_email_id>/raw/", views.inbound_raw_download, name="raw"),
    path("inbound/<int:inbound_email_id>/reprocess/", views.inbound_reprocess,
         name="reprocess"),
]
