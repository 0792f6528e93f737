"""Forms of the email channel's admin pages."""

from __future__ import annotations

import re

from django import forms

from channels_email.models import (
    ACKNOWLEDGEMENT_PLACEHOLDERS,
    ConnectionStatus,
    EmailConnection,
    RoutingMode,
)
from channels_email.selectors import connections_for_tenant
from channels_email.services import SETTINGS_FIELDS
from routing.models import Flow, Team

PLACEHOLDER = re.compile(r"\{(\w*)\}")


class ConnectionSettingsForm(forms.ModelForm):
    """A connection's settings: where its new mail goes (nowhere in particular, a Team, or
    a Flow), the mailbox replies go out through, whether it is the workspace's default
    mailbox, and the optional acknowledgement of new tickets.

    The team, flow and mailbox choices are declared here (not generated from the model) so
    that their querysets are built per request, inside the tenant scope, from that tenant
    only.
    """

    routing_team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False,
                                          label="Team")
    routing_flow = forms.ModelChoiceField(queryset=Flow.objects.none(), required=False,
                                          label="Flow")
    reply_connection = forms.ModelChoiceField(
        queryset=EmailConnection.objects.none(), required=False,
        label="Send replies through", empty_label="This mailbox",
        help_text="Replies to tickets that came in here go out from this mailbox.")

    # The columns connection_settings_save writes, in reading order.
    field_order = list(SETTINGS_FIELDS)

    class Meta:
        model = EmailConnection
        fields = ["display_name", "routing_mode", "is_default", "send_acknowledgement",
                  "acknowledgement_text"]
        labels = {"display_name": "Sender name on replies", "routing_mode": "Route new mail to",
                  "is_default": "Default mailbox of the workspace",
                  "send_acknowledgement": "Acknowledge new tickets",
                  "acknowledgement_text": "Acknowledgement"}
        help_texts = {
            "is_default": "Sends system emails, and replies on tickets that did not come by "
                          "email.",
            "send_acknowledgement": "Emails the customer a confirmation with the ticket "
                                    "number. Never sent to automatic senders, mailing lists, "
                                    "suspected loops, suppressed addresses or senders that "
                                    "fail DMARC.",
            "acknowledgement_text": "Placeholders: {name}, {number}, {subject}.",
        }

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["routing_team"].queryset = Team.objects.filter(tenant=tenant)
        self.fields["routing_flow"].queryset = Flow.objects.filter(tenant=tenant,
                                                                   is_active=True)
        self.fields["reply_connection"].queryset = connections_for_tenant(
            tenant=tenant).exclude(pk=self.instance.pk).exclude(
            status=ConnectionStatus.DISCONNECTED)
        self.initial.setdefault("routing_team", self.instance.routing_team_id)
        self.initial.setdefault("routing_flow", self.instance.routing_flow_id)
        self.initial.setdefault("reply_connection", self.instance.reply_connection_id)

    def clean_acknowledgement_text(self):
        text = self.cleaned_data["acknowledgement_text"]
        unknown = sorted(set(PLACEHOLDER.findall(text)) - set(ACKNOWLEDGEMENT_PLACEHOLDERS))
        if unknown:
            raise forms.ValidationError(
                "Unknown placeholder: " + ", ".join(f"{{{u}}}" for u in unknown)
                + ". Use {name}, {number} or {subject}.")
        if self.cleaned_data.get("send_acknowledgement") and "{number}" not in text:
            raise forms.ValidationError("Include {number}: the customer needs the ticket "
                                        "number.")
        return text

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
        self.instance.reply_connection = self.cleaned_data["reply_connection"]
        return super().save(commit=commit)
