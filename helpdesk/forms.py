from django import forms
from django.contrib.auth import password_validation
from django.core.validators import validate_email

from helpdesk.models import ApiScope, Role, WebhookEventType


class InvitationForm(forms.Form):
    email = forms.EmailField(label="E-mail address")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.AGENT)


class AcceptInvitationForm(forms.Form):
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    password1 = forms.CharField(
        label="Password", widget=forms.PasswordInput, strip=False,
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(label="Password again", widget=forms.PasswordInput, strip=False)

    def __init__(self, *args, email: str, **kwargs):
        self.email = email
        super().__init__(*args, **kwargs)

    def clean(self):
        data = super().clean()
        p1, p2 = data.get("password1"), data.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", "The two passwords differ.")
        elif p1:
            from helpdesk.models import User

            candidate = User(email=self.email, first_name=data.get("first_name", ""),
                             last_name=data.get("last_name", ""))
            try:
                password_validation.validate_password(p1, candidate)
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return data


def clean_address(text: str) -> str:
    """One email address as typed in a form, lower-cased; a ValidationError naming it."""
    address = text.strip()
    try:
        validate_email(address)
    except forms.ValidationError as exc:
        raise forms.ValidationError(f"{address} is not an email address.") from exc
    return address.lower()


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “CRM sync”.")
    scope = forms.ChoiceField(choices=ApiScope.choices, initial=ApiScope.READ,
                              help_text="Read only is enough for reporting; replies and "
                                        "updates need read and write.")


class WebhookEndpointForm(forms.Form):
    """An outgoing webhook endpoint; the rules on the URL are the service's."""

    url = forms.CharField(label="URL", max_length=2000,
                          help_text="Where events are POSTed, e.g. https://crm.example.com/hooks/helpdesk")
    description = forms.CharField(max_length=200, required=False)
    events = forms.MultipleChoiceField(choices=WebhookEventType.choices,
                                       widget=forms.CheckboxSelectMultiple)
