from django.urls import path

from routing import views

app_name = "routing"
urlpatterns = [
    path("", views.routing_index, name="index"),
    path("teams/<int:team_id>/", views.team_detail, name="team"),
    path("teams/<int:team_id>/delete/", views.team_delete_view, name="team_delete"),
    path("flows/<int:flow_id>/", views.flow_detail, name="flow"),
    path("flows/<int:flow_id>/delete/", views.flow_delete_view, name="flow_delete"),
    path("flows/<int:flow_id>/rules/new/", views.rule_detail, name="rule_new"),
    path("flows/<int:flow_id>/rules/<int:rule_id>/", views.rule_detail, name="rule"),
    path("flows/<int:flow_id>/rules/<int:rule_id>/action/", views.rule_action_view,
         name="rule_action"),
]
