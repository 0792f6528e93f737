"""Forms of the routing admin pages: teams, flows and a flow's rules.

Team, member and flow choices are built per request from the tenant's own rows (inside
its scope). A rule is edited as a few condition rows (field, test, value) and action rows
(action, value); the form turns them into the engine's JSON and checks it with
``routing.services.rule_validate``, so the page accepts exactly what the engine runs.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from helpdesk.selectors import assignable_members
from routing import engine
from routing.models import Flow, Rule, Team
from routing.services import rule_validate
from tickets.models import TicketPriority, TicketStatus

# Rows shown: at least these, and always one more than a stored rule has (a rule made
# elsewhere, e.g. in Django's admin, keeps every condition and action when edited here).
CONDITION_ROWS = 4
ACTION_ROWS = 3

FIELD_LABELS = {
    "subject": "Subject", "body": "Body", "sender": "Sender address",
    "sender_domain": "Sender domain", "recipient": "Recipient (our address or alias)",
    "has_attachments": "Has attachments", "contact_is_new": "Sender is a new contact",
    "importance": "Importance",
}
ACTION_LABELS = {
    "set_priority": "Set priority", "add_tag": "Add tag", "assign_team": "Assign to team",
    "assign_agent": "Assign to agent", "set_status": "Set status", "stop": "Stop the flow",
}
TRUE_WORDS, FALSE_WORDS = {"yes", "true", "1"}, {"no", "false", "0"}


class TeamForm(forms.ModelForm):
    members = forms.ModelMultipleChoiceField(queryset=None, required=False,
                                             widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Team
        fields = ["name"]

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["members"].queryset = assignable_members(tenant=tenant)
        self.fields["members"].label_from_instance = lambda m: m.user.display_name
        if self.instance.pk:
            self.initial["members"] = list(assignable_members(tenant=tenant).filter(
                user__team_memberships__team=self.instance))

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if Team.objects.filter(tenant=self.tenant, name__iexact=name).exclude(
                pk=self.instance.pk).exists():
            raise ValidationError(f"A team named {name} exists already.")
        return name

    def member_ids(self) -> list[int]:
        return [m.user_id for m in self.cleaned_data["members"]]


class FlowForm(forms.ModelForm):
    fallback_team = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="None (unassigned queue)",
        help_text="Gets the ticket when no rule assigned a team.")

    class Meta:
        model = Flow
        fields = ["name", "description", "fallback_team", "is_active"]
        labels = {"is_active": "Active"}
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["fallback_team"].queryset = Team.objects.filter(tenant=tenant)

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if Flow.objects.filter(tenant=self.tenant, name__iexact=name).exclude(
                pk=self.instance.pk).exists():
            raise ValidationError(f"A flow named {name} exists already.")
        return name


class RuleForm(forms.ModelForm):
    """A rule as rows; empty rows are ignored. Values: text for text fields, yes/no for
    yes-no fields, high/normal/low for importance; a team's name, an agent's email, a
    priority or a status for the actions that need one."""

    class Meta:
        model = Rule
        fields = ["name", "match", "stop_processing", "is_active"]
        labels = {"match": "A ticket matches when it meets",
                  "stop_processing": "Stop after this rule when it matches",
                  "is_active": "Active"}

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.condition_count = max(CONDITION_ROWS, len(self.instance.conditions or []) + 1)
        self.action_count = max(ACTION_ROWS, len(self.instance.actions or []) + 1)
        field_choices = [("", "—"), *((f, FIELD_LABELS[f]) for f in engine.FIELDS)]
        op_choices = [(op, engine._OP_WORDS[op]) for op in (*engine.TEXT_OPS, "is", "is_not")]
        action_choices = [("", "—"), *((a, ACTION_LABELS[a]) for a in engine.ACTION_TYPES)]
        def named(text):
            return {"aria-label": text}

        for i in range(self.condition_count):
            n = i + 1
            self.fields[f"cond_{i}_field"] = forms.ChoiceField(
                choices=field_choices, required=False, label="If",
                widget=forms.Select(attrs=named(f"Condition {n}: field")))
            self.fields[f"cond_{i}_op"] = forms.ChoiceField(
                choices=op_choices, required=False, label="",
                widget=forms.Select(attrs=named(f"Condition {n}: test")))
            self.fields[f"cond_{i}_value"] = forms.CharField(
                required=False, label="", max_length=500,
                widget=forms.TextInput(attrs=named(f"Condition {n}: value")))
        for i in range(self.action_count):
            n = i + 1
            self.fields[f"act_{i}_type"] = forms.ChoiceField(
                choices=action_choices, required=False, label="Then",
                widget=forms.Select(attrs=named(f"Action {n}")))
            self.fields[f"act_{i}_value"] = forms.CharField(
                required=False, label="", max_length=200,
                widget=forms.TextInput(attrs=named(f"Action {n}: value")))
        if self.instance.pk:
            self._prefill()

    # -- the rows <-> the engine's JSON ----------------------------------------------------

    def _prefill(self) -> None:
        teams = dict(Team.objects.filter(tenant=self.tenant).values_list("pk", "name"))
        emails = {m.user_id: m.user.email for m in assignable_members(tenant=self.tenant)}
        for i, c in enumerate(self.instance.conditions):
            value = c.get("value")
            self.initial.update({f"cond_{i}_field": c.get("field"), f"cond_{i}_op": c.get("op"),
                                 f"cond_{i}_value": ("yes" if value else "no")
                                 if isinstance(value, bool) else value})
        for i, a in enumerate(self.instance.actions):
            value = a.get("value")
            kind = a.get("type")
            if kind in ("assign_team", "assign_agent"):
                known = teams if kind == "assign_team" else emails
                gone = "deleted team" if kind == "assign_team" else "former member"
                value = known.get(value, f"({gone} #{value}; choose another)")
            self.initial.update({f"act_{i}_type": kind, f"act_{i}_value": value})

    def condition_rows(self):
        return [(self[f"cond_{i}_field"], self[f"cond_{i}_op"], self[f"cond_{i}_value"])
                for i in range(self.condition_count)]

    def action_rows(self):
        return [(self[f"act_{i}_type"], self[f"act_{i}_value"])
                for i in range(self.action_count)]

    def _condition(self, i: int) -> dict | None:
        name = self.cleaned_data.get(f"cond_{i}_field")
        if not name:
            return None
        op = self.cleaned_data.get(f"cond_{i}_op") or ""
        value: object = (self.cleaned_data.get(f"cond_{i}_value") or "").strip()
        if name in engine.BOOL_FIELDS:
            if value.lower() not in TRUE_WORDS | FALSE_WORDS:
                self.add_error(f"cond_{i}_value", f"{FIELD_LABELS[name]}: answer yes or no.")
                return None
            value = value.lower() in TRUE_WORDS
        elif name in engine.CHOICE_FIELDS:
            value = value.lower()
        return {"field": name, "op": op, "value": value}

    def _action(self, i: int) -> dict | None:
        kind = self.cleaned_data.get(f"act_{i}_type")
        if not kind:
            return None
        text = (self.cleaned_data.get(f"act_{i}_value") or "").strip()
        value: object = text
        if kind == "stop":
            value = True
        elif kind in ("set_priority", "set_status"):
            value = text.lower()
        elif kind == "assign_team":
            team = Team.objects.filter(tenant=self.tenant, name__iexact=text).first()
            if team is None:
                self.add_error(f"act_{i}_value", f"No team named {text or '(empty)'}.")
                return None
            value = team.pk
        elif kind == "assign_agent":
            member = assignable_members(tenant=self.tenant).filter(
                user__email__iexact=text).first()
            if member is None:
                self.add_error(f"act_{i}_value",
                               f"{text or '(empty)'} is not an active member's email.")
                return None
            value = member.user_id
        return {"type": kind, "value": value}

    def clean(self):
        data = super().clean()
        # (row number on the page, item) for the filled rows only.
        conditions = [(i + 1, c) for i, c in enumerate(
            map(self._condition, range(self.condition_count))) if c]
        actions = [(i + 1, a) for i, a in enumerate(
            map(self._action, range(self.action_count))) if a]
        if self.errors:
            return data
        if not actions:
            raise ValidationError("Give the rule at least one action.")
        try:
            rule_validate([c for _, c in conditions], [a for _, a in actions])
        except ValidationError as exc:
            # "conditions[1]: ..." counts filled rows; the page numbers every row.
            rows = {"conditions": ("Condition", [n for n, _ in conditions]),
                    "actions": ("Action", [n for n, _ in actions])}

            def on_page(key: str, message: str) -> str:
                label, numbers = rows[key]
                index, _, problem = message.partition("]: ")
                if problem and index.startswith(f"{key}["):
                    return f"{label} {numbers[int(index[len(key) + 1:])]}: {problem}"
                return message

            raise ValidationError([on_page(key, m) for key, messages
                                   in exc.message_dict.items() for m in messages]) from exc
        self.instance.conditions = [c for _, c in conditions]
        self.instance.actions = [a for _, a in actions]
        return data


PRIORITY_WORDS = ", ".join(TicketPriority.values)
STATUS_WORDS = ", ".join(TicketStatus.values)
