from django.urls import path

from tickets import views

app_name = "tickets"
urlpatterns = [
    path("", views.ticket_list_view, name="list"),
    path("<int:number>/", views.ticket_detail_view, name="detail"),
]
