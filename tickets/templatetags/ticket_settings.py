"""The workspace's ticket settings form, for the settings page that shows it."""

from __future__ import annotations

from django import template

from tickets.forms import TicketSettingsForm

register = template.Library()


@register.inclusion_tag("tickets/_settings_form.html", takes_context=True)
def ticket_settings_form(context) -> dict:
    tenant = context["current_tenant"]
    return {"form": TicketSettingsForm(instance=tenant), "current_tenant": tenant,
            "csrf_token": context.get("csrf_token")}
