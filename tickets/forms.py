"""Forms of the tickets' settings (the composer's form lives with its view)."""

from __future__ import annotations

from django import forms

from helpdesk.models import Tenant


class TicketSettingsForm(forms.ModelForm):
    """The workspace's ticket settings, edited by its admins on the Email channels page."""

    class Meta:
        model = Tenant
        fields = ["auto_assign_on_reply", "subject_ticket_token"]
        labels = {"auto_assign_on_reply": "Assign unassigned tickets to the agent who replies",
                  "subject_ticket_token": "Put the ticket number in email subjects ([#123])"}
        help_texts = {
            "auto_assign_on_reply": "Off: the composer offers “Assign this ticket to me” on "
                                    "an unassigned ticket instead.",
            "subject_ticket_token": "A customer reply that lost its threading headers still "
                                    "reaches its ticket by this number (only from the "
                                    "ticket's contact or CC addresses). Gmail files the "
                                    "first reply in a new thread of the support mailbox, "
                                    "since its subject changed.",
        }
