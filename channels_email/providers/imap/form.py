"""The IMAP/SMTP mailbox form (Admin > Channels > Email > IMAP/SMTP): servers, security,
user names, password or app password, the folders, what happens to imported mail, and
the sync start date. SMTP defaults to the IMAP host, user name and password.

``credentials()`` is the JSON the provider reads (``ImapAccount``); a password left empty
when editing keeps the stored one (it is never shown again)."""

from __future__ import annotations

from django import forms
from django.utils import timezone

from channels_email.connection_options import format_skip_times, parse_skip_times, zone
from channels_email.providers.imap.account import (
    AFTER_IMPORT_CHOICES,
    SECURITY_CHOICES,
    SSL_TLS,
    ImapAccount,
)


class ImapAccountForm(forms.Form):
    address = forms.EmailField(label="Email address", max_length=320,
                               help_text="The support address customers write to.")
    imap_host = forms.CharField(label="IMAP server", max_length=253,
                                help_text="For example imap.example.com")
    imap_security = forms.ChoiceField(label="IMAP security", choices=SECURITY_CHOICES,
                                      initial=SSL_TLS)
    imap_port = forms.IntegerField(label="IMAP port", min_value=1, max_value=65535,
                                   initial=993, help_text="993 for SSL/TLS, 143 for STARTTLS")
    username = forms.CharField(label="User name", max_length=320,
                               help_text="Often the email address itself.")
    # render_value: after Test connection the page keeps what the admin just typed, so Save
    # works next; the stored password is never an initial value, so it is never rendered.
    password = forms.CharField(label="Password or app password", required=False,
                               strip=False, widget=forms.PasswordInput(render_value=True),
                               help_text="Stored encrypted. With two-step sign-in, create an "
                                         "app password at your mail provider.")
    smtp_host = forms.CharField(label="SMTP server", max_length=253, required=False,
                                help_text="Empty: the IMAP server")
    smtp_security = forms.ChoiceField(label="SMTP security", choices=SECURITY_CHOICES,
                                      initial=SSL_TLS)
    smtp_port = forms.IntegerField(label="SMTP port", min_value=1, max_value=65535,
                                   initial=465, help_text="465 for SSL/TLS, 587 for STARTTLS")
    smtp_username = forms.CharField(label="SMTP user name", max_length=320, required=False,
                                    help_text="Empty: the IMAP user name")
    smtp_password = forms.CharField(label="SMTP password", required=False, strip=False,
                                    widget=forms.PasswordInput(render_value=True),
                                    help_text="Empty: the IMAP password")
    folder = forms.CharField(label="Folder to import", max_length=200, initial="INBOX",
                             help_text="The folder new customer mail arrives in.")
    sent_folder = forms.CharField(label="Sent folder", max_length=200, initial="Sent",
                                  required=False)
    append_sent = forms.BooleanField(
        label="Save a copy of each reply in the Sent folder", required=False, initial=True,
        help_text="Turn off when the mail server files sent mail by itself (Gmail, "
                  "Microsoft 365 do).")
    after_import = forms.ChoiceField(label="After import", choices=AFTER_IMPORT_CHOICES,
                                     initial="leave")
    move_to = forms.CharField(label="Move to folder", max_length=200, required=False)
    max_tries = forms.IntegerField(
        label="Failed tries in a row before a cool-off", min_value=0,
        max_value=100, initial=3, required=False,
        help_text="0: keep trying without a pause. Empty: 3.")
    cool_off_minutes = forms.IntegerField(
        label="Cool-off after that (minutes)", min_value=0, max_value=24 * 60, initial=5,
        required=False, help_text="Empty: 5.")
    skip_times = forms.CharField(
        label="Skip times", required=False, max_length=500,
        help_text="Daily windows with no fetching or sending, like 02:00-04:00 (several: "
                  "separate with commas).")
    time_zone = forms.CharField(label="Time zone of the skip times", max_length=64,
                                required=False, help_text="Like Europe/Berlin; empty: the "
                                                          "server's.")
    timeout_ms = forms.IntegerField(label="Connection timeout (milliseconds)",
                                    min_value=500, max_value=120000, initial=20000,
                                    required=False, help_text="Empty: 20000 (20 s).")
    sync_start_at = forms.DateField(label="Import mail from", widget=forms.DateInput(
        attrs={"type": "date"}), help_text="Mail that arrived before this day is left alone.")

    def __init__(self, *args, existing: dict | None = None, **kwargs):
        self.existing = existing or {}
        super().__init__(*args, **kwargs)
        self.fields["sync_start_at"].initial = timezone.localdate()
        if self.existing:
            self.fields["password"].help_text = "Empty: keep the stored password."
            self.fields["address"].disabled = True

    @classmethod
    def initial_from(cls, address: str, credentials: dict, sync_start_at) -> dict:
        account = ImapAccount.from_credentials(credentials)
        options = credentials.get("options") or {}
        return {
            "address": address, "imap_host": account.imap.host,
            "imap_security": account.imap.security, "imap_port": account.imap.port,
            "username": account.imap.username, "smtp_host": account.smtp.host,
            "smtp_security": account.smtp.security, "smtp_port": account.smtp.port,
            "smtp_username": account.smtp.username, "folder": account.folder,
            "sent_folder": account.sent_folder, "append_sent": account.append_sent,
            "after_import": account.after_import, "move_to": account.move_to,
            "sync_start_at": timezone.localtime(sync_start_at).date(),
            "timeout_ms": account.timeout_ms or 20000,
            **{key: options[key] for key in ("max_tries", "cool_off_minutes", "skip_times",
                                             "time_zone") if key in options},
        }

    def clean_skip_times(self):
        try:
            return format_skip_times(parse_skip_times(self.cleaned_data["skip_times"]))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_time_zone(self):
        name = self.cleaned_data["time_zone"].strip()
        if name:
            try:
                zone(name)
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from None
        return name

    def clean(self):
        data = super().clean()
        stored = self.existing
        if not data.get("password") and not (stored.get("imap") or {}).get("password"):
            self.add_error("password", "Enter the password.")
        if data.get("after_import") == "move" and not data.get("move_to"):
            self.add_error("move_to", "Name the folder to move imported mail to.")
        return data

    def credentials(self) -> dict:
        data = self.cleaned_data
        stored = self.existing
        imap_password = data["password"] or (stored.get("imap") or {}).get("password", "")
        smtp_password = data["smtp_password"] or (
            (stored.get("smtp") or {}).get("password", "") if not data["password"]
            else "") or imap_password
        username = data["username"].strip()
        return {
            "kind": "imap",
            "imap": {"host": data["imap_host"].strip(), "port": data["imap_port"],
                     "security": data["imap_security"], "username": username,
                     "password": imap_password},
            "smtp": {"host": (data["smtp_host"] or data["imap_host"]).strip(),
                     "port": data["smtp_port"], "security": data["smtp_security"],
                     "username": (data["smtp_username"] or username).strip(),
                     "password": smtp_password},
            "folder": data["folder"].strip() or "INBOX",
            "sent_folder": (data["sent_folder"] or "").strip(),
            "append_sent": bool(data["append_sent"]),
            "after_import": data["after_import"],
            "move_to": (data["move_to"] or "").strip(),
            "timeout_ms": data["timeout_ms"] or 20000,
            "options": {"max_tries": 3 if data["max_tries"] is None else data["max_tries"],
                        "cool_off_minutes": 5 if data["cool_off_minutes"] is None
                        else data["cool_off_minutes"],
                        "skip_times": data["skip_times"], "time_zone": data["time_zone"]},
        }
