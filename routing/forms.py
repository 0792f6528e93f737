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


# The picker each action takes its value from (the others in its row are ignored); add_tag
# takes the row's text field, stop takes nothing.
ACTION_PICKERS = {"assign_team": "team", "assign_agent": "agent",
                  "set_priority": "priority", "set_status": "status"}


class RuleForm(forms.ModelForm):
    """A rule as rows; empty rows are ignored. Condition values: text for text fields,
    yes/no for yes-no fields, high/normal/low for importance. An action's value is chosen
    from a picker (a team, an agent, a priority, a status) or, for a tag, typed."""

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
        teams = [("", "— choose a team —"), *((str(pk), name) for pk, name in Team.objects
                  .filter(tenant=tenant).order_by("name").values_list("pk", "name"))]
        agents = [("", "— choose an agent —"), *(
            (str(m.user_id), f"{m.user.display_name} ({m.user.email})")
            for m in assignable_members(tenant=tenant).order_by("user__email"))]
        picker_choices = {
            "team": (teams, "That team no longer exists; choose another."),
            "agent": (agents, "Not an active member of this workspace; choose another."),
            "priority": ([("", "— choose a priority —"), *TicketPriority.choices],
                         "Choose a priority from the list."),
            "status": ([("", "— choose a status —"), *TicketStatus.choices],
                       "Choose a status from the list."),
        }
        self.stale: dict[int, str] = {}
        for i in range(self.action_count):
            n = i + 1
            self.fields[f"act_{i}_type"] = forms.ChoiceField(
                choices=action_choices, required=False, label="Then",
                widget=forms.Select(attrs=named(f"Action {n}")))
            self.fields[f"act_{i}_value"] = forms.CharField(
                required=False, label="", max_length=200,
                widget=forms.TextInput(attrs={**named(f"Action {n}: tag"),
                                              "placeholder": "tag"}))
            for picker, (choices, invalid) in picker_choices.items():
                self.fields[f"act_{i}_{picker}"] = forms.ChoiceField(
                    choices=choices, required=False, label="",
                    error_messages={"invalid_choice": invalid},
                    widget=forms.Select(attrs=named(f"Action {n}: {picker}")))
        if self.instance.pk:
            self._prefill()

    # -- the rows <-> the engine's JSON ----------------------------------------------------

    def _prefill(self) -> None:
        teams = set(Team.objects.filter(tenant=self.tenant).values_list("pk", flat=True))
        members = set(assignable_members(tenant=self.tenant).values_list("user_id", flat=True))
        for i, c in enumerate(self.instance.conditions):
            value = c.get("value")
            self.initial.update({f"cond_{i}_field": c.get("field"), f"cond_{i}_op": c.get("op"),
                                 f"cond_{i}_value": ("yes" if value else "no")
                                 if isinstance(value, bool) else value})
        for i, a in enumerate(self.instance.actions):
            value, kind = a.get("value"), a.get("type")
            picker = ACTION_PICKERS.get(kind)
            self.initial[f"act_{i}_type"] = kind
            if picker is None:
                self.initial[f"act_{i}_value"] = "" if kind == "stop" else value
                continue
            known = {"team": teams, "agent": members}.get(picker)
            if known is not None and value not in known:
                gone = "team" if picker == "team" else "agent"
                self.stale[i] = f"The {gone} this action named (#{value}) is gone; choose another."
                continue
            self.initial[f"act_{i}_{picker}"] = str(value)

    def condition_rows(self):
        return [(self[f"cond_{i}_field"], self[f"cond_{i}_op"], self[f"cond_{i}_value"])
                for i in range(self.condition_count)]

    def action_rows(self) -> list[dict]:
        """Per row: its type select, the inputs that may hold its value as (action type,
        bound field) (the page shows the one the chosen type takes), and a note when a
        stored target is gone."""
        rows = []
        for i in range(self.action_count):
            inputs = [(kind, self[f"act_{i}_{picker}"]) for kind, picker
                      in ACTION_PICKERS.items()]
            inputs.insert(1, ("add_tag", self[f"act_{i}_value"]))
            rows.append({"type": self[f"act_{i}_type"], "inputs": inputs,
                         "stale": self.stale.get(i, "")})
        return rows

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
        if kind == "stop":
            return {"type": kind, "value": True}
        picker = ACTION_PICKERS.get(kind)
        if picker is None:
            return {"type": kind, "value": (self.cleaned_data.get(f"act_{i}_value") or "")
                    .strip()}
        field = f"act_{i}_{picker}"
        chosen = self.cleaned_data.get(field)
        if field in self.errors:
            return None
        if not chosen:
            self.add_error(field, f"{ACTION_LABELS[kind]}: choose one.")
            return None
        return {"type": kind, "value": int(chosen) if picker in ("team", "agent") else chosen}

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


def rules_in_words(*, tenant, rules) -> list[tuple[Rule, str, str]]:
    """(rule, when, then) for the flow page, like ("Subject contains “invoice”",
    "Assign to team Billing, add tag billing, then stop"). Costs two queries (the
    tenant's team names and member names) whatever the number of rules."""
    teams = dict(Team.objects.filter(tenant=tenant).values_list("pk", "name"))
    agents = {m.user_id: m.user.display_name for m in assignable_members(tenant=tenant)}
    priorities, statuses = dict(TicketPriority.choices), dict(TicketStatus.choices)

    def condition(c: dict) -> str:
        label, op, value = FIELD_LABELS.get(c.get("field"), c.get("field")), c.get("op"), \
            c.get("value")
        if isinstance(value, bool):
            value = "yes" if value else "no"
        return f"{label} {engine._OP_WORDS.get(op, op)} “{value}”"

    def action(a: dict) -> str:
        kind, value = a.get("type"), a.get("value")
        label = ACTION_LABELS.get(kind, kind).lower()
        if kind == "stop":
            return "stop"
        if kind == "assign_team":
            value = teams.get(value, f"(deleted team #{value})")
        elif kind == "assign_agent":
            value = agents.get(value, f"(former member #{value})")
        elif kind == "set_priority":
            value = priorities.get(value, value).lower()
        elif kind == "set_status":
            value = statuses.get(value, value).lower()
        return f"{label} {value}"

    described = []
    for rule in rules:
        joiner = " or " if rule.match == "any" else " and "
        when = joiner.join(map(condition, rule.conditions)) or "Every ticket"
        steps = [action(a) for a in rule.actions]
        if rule.stop_processing and "stop" not in steps:
            steps.append("stop")
        if steps and steps[-1] == "stop" and len(steps) > 1:
            steps[-1] = "then stop"
        then = ", ".join(steps)
        described.append((rule, when[:1].upper() + when[1:], then[:1].upper() + then[1:]))
    return described
