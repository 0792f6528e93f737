"""Forms of the email channel's admin pages."""

from __future__ import annotations

from django import forms

from channels_email.models import EmailConnection, RoutingMode
from routing.models import Flow, Team


class RoutingForm(forms.ModelForm):
    """Where a connection's new mail goes: nowhere in particular, a Team, or a Flow.

    The team and flow choices are declared here (not generated from the model) so that
    their querysets are built per request, inside the tenant scope, from that tenant only.
    """

    routing_team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False,
                                          label="Team")
    routing_flow = forms.ModelChoiceField(queryset=Flow.objects.none(), required=False,
                                          label="Flow")

    class Meta:
        model = EmailConnection
        fields = ["display_name", "routing_mode"]
        labels = {"display_name": "Sender name on replies", "routing_mode": "Route new mail to"}

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["routing_team"].queryset = Team.objects.filter(tenant=tenant)
        self.fields["routing_flow"].queryset = Flow.objects.filter(tenant=tenant,
                                                                   is_active=True)
        self.initial.setdefault("routing_team", self.instance.routing_team_id)
        self.initial.setdefault("routing_flow", self.instance.routing_flow_id)

    def clean(self):
        data = super().clean()
        mode = data.get("routing_mode")
        if mode == RoutingMode.TEAM and not data.get("routing_team"):
            self.add_error("routing_team", "Choose the team that receives this mailbox's mail.")
        if mode == RoutingMode.FLOW and not data.get("routing_flow"):
            self.add_error("routing_flow", "Choose the flow that sorts this mailbox's mail.")
        return data

    def save(self, commit=True):
        mode = self.cleaned_data["routing_mode"]
        self.instance.routing_team = (self.cleaned_data["routing_team"]
                                      if mode == RoutingMode.TEAM else None)
        self.instance.routing_flow = (self.cleaned_data["routing_flow"]
                                      if mode == RoutingMode.FLOW else None)
        return super().save(commit=commit)
