"""Forms of the email channel's admin pages."""

from __future__ import annotations

import re

from django import forms

from channels_email import providers
from channels_email.models import (
    ACKNOWLEDGEMENT_PLACEHOLDERS,
    ConnectionStatus,
    EmailConnection,
    RoutingMode,
)
from channels_email.selectors import connections_for_tenant
from channels_email.services import FILTER_FIELDS, SETTINGS_FIELDS
from helpdesk.forms import clean_address
from helpdesk.patterns import pattern_problem
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
                                          label="Team", empty_label="— choose a team —",
                                          help_text="Its queue gets every new ticket.")
    routing_flow = forms.ModelChoiceField(queryset=Flow.objects.none(), required=False,
                                          label="Flow", empty_label="— choose a flow —",
                                          help_text="Its rules sort every new ticket.")
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
        # A mailbox that only receives (forwarded to us) cannot send anybody's replies.
        self.fields["reply_connection"].queryset = connections_for_tenant(
            tenant=tenant).exclude(pk=self.instance.pk).exclude(
            status=ConnectionStatus.DISCONNECTED).exclude(
            provider__in=providers.names_with(providers.Capability.FORWARDED))
        if self.instance.pk and self.instance.receives_forwarded:
            self.fields["reply_connection"].empty_label = "The workspace's default mailbox"
            self.fields["reply_connection"].help_text = (
                "This mailbox only receives: its replies go out through the one chosen "
                "here, else the workspace's default mailbox.")
            self.fields["is_default"].disabled = True
            self.fields["is_default"].help_text = ("A mailbox that only receives cannot be "
                                                   "the default: it sends nothing.")
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


class LinesField(forms.CharField):
    """A list edited as text, one item a line; ``clean_item`` checks and normalises each
    item and raises ValidationError naming it."""

    widget = forms.Textarea(attrs={"rows": 3})

    def __init__(self, *, clean_item, max_items: int = 200, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)
        self.clean_item, self.max_items = clean_item, max_items

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value) -> list[str]:
        items = [line.strip() for line in (value or "").splitlines()]
        items = list(dict.fromkeys(self.clean_item(item) for item in items if item))
        if len(items) > self.max_items:
            raise forms.ValidationError(f"At most {self.max_items} lines.")
        return items


def _pattern(item: str) -> str:
    if len(item) > 300:
        raise forms.ValidationError(f"{item[:40]}...: a pattern is at most 300 characters.")
    if len(item) > 2 and item.startswith("/") and item.endswith("/"):
        problem = pattern_problem(item[1:-1])
        if problem:
            raise forms.ValidationError(f"{item}: {problem}.")
    return item


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9-]{1,63}\.)+[a-z0-9-]{2,63}")


def _domain(item: str) -> str:
    domain = item.lower().lstrip("@").rstrip(".")
    if not _DOMAIN.fullmatch(domain):
        raise forms.ValidationError(f"{item} is not a domain name (like example.com).")
    return domain


class ConnectionFiltersForm(forms.ModelForm):
    """What a connection lets through: aliases (mail from them is ours: a loop), automatic
    replies, a block list, allowed sender domains, new threads or replies, anyone or known
    contacts, CC import, HTML or text body, and the per-sender rate that counts as a loop.
    Each refused email is kept, skipped with the rule that refused it."""

    alias_addresses = LinesField(
        clean_item=clean_address, label="Aliases of this mailbox",
        help_text="Other addresses that deliver here, one a line. Mail from them counts as "
                  "ours (a loop); replies never copy them.")
    block_list = LinesField(
        clean_item=_pattern, label="Block list",
        help_text="One a line, matched against the sender and the subject: exact text, a "
                  "wildcard like *@spam.example, or a regular expression between slashes "
                  "like /^win a prize/.")
    allowed_sender_domains = LinesField(
        clean_item=_domain, label="Only these sender domains",
        help_text="One a line, like example.com (subdomains included). Empty: every domain.")

    field_order = list(FILTER_FIELDS)

    class Meta:
        model = EmailConnection
        fields = list(FILTER_FIELDS)
        labels = {"skip_auto_replies": "Skip automatic replies",
                  "allowed_emails": "Accept", "allowed_senders": "From",
                  "import_cc": "Keep the CC addresses of incoming mail on the ticket",
                  "body_preference": "Ticket body from",
                  "sender_rate_limit": "Loop guard: mails from one sender",
                  "sender_rate_window_minutes": "Loop guard: within minutes"}
        help_texts = {
            "skip_auto_replies": "Out-of-office answers, challenge-response requests and "
                                 "other automatic mail make no ticket.",
            "allowed_senders": "Known contacts: senders who already are contacts of this "
                               "workspace.",
            "sender_rate_limit": "More mail than this from one sender within the window "
                                 "counts as a mail loop and is skipped.",
        }
        widgets = {"sender_rate_limit": forms.NumberInput(attrs={"min": 1}),
                   "sender_rate_window_minutes": forms.NumberInput(attrs={"min": 1})}

    def clean_sender_rate_limit(self):
        value = self.cleaned_data["sender_rate_limit"]
        if value < 1:
            raise forms.ValidationError("At least 1.")
        return value

    def clean_sender_rate_window_minutes(self):
        value = self.cleaned_data["sender_rate_window_minutes"]
        if not 1 <= value <= 1440:
            raise forms.ValidationError("Between 1 and 1440 minutes.")
        return value
