from django.urls import path

from channels_email import views

app_name = "channels_email"
urlpatterns = [
    path("inbound/", views.inbound_attention_list, name="attention"),
    path("inbound/<int:inbound_email_id>/raw/", views.inbound_raw_download, name="raw"),
    path("inbound/<int:inbound_email_id>/reprocess/", views.inbound_reprocess,
         name="reprocess"),
]
