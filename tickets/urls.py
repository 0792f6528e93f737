from django.urls import path

from tickets import views

app_name = "tickets"
urlpatterns = [
    path("", views.ticket_list_view, name="list"),
    path("settings/", views.ticket_settings_view, name="settings"),
    path("<int:number>/", views.ticket_detail_view, name="detail"),
    path("<int:number>/reply/", views.ticket_reply_view, name="reply"),
    path("<int:number>/update/", views.ticket_update_view, name="update"),
    path("<int:number>/merge/", views.ticket_merge_view, name="merge"),
    path("<int:number>/attachments/<int:attachment_id>/", views.attachment_download_view,
         name="attachment"),
    path("<int:number>/messages/<int:message_id>/delivery/", views.message_delivery_view,
         name="delivery"),
    path("<int:number>/messages/<int:message_id>/retry/", views.message_retry_view,
         name="retry"),
]
