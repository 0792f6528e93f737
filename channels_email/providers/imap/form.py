"""The IMAP/SMTP mailbox form (Admin > Channels > Email > IMAP/SMTP): servers, security,
user names, password or app password, the folders, what happens to imported mail, and
the sync start date. SMTP defaults to the IMAP host, user name and password.

``credentials()`` is the JSON the provider reads (``ImapAccount``); a password left empty
when editing keeps the stored one (it is never shown again)."""

from __future__ import annotations

from django import forms
from django.utils import timezone

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
    password = forms.CharField(label="Password or app password", required=False,
                               strip=False, widget=forms.PasswordInput(render_value=False),
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
                                    widget=forms.PasswordInput(render_value=False),
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
        return {
            "address": address, "imap_host": account.imap.host,
            "imap_security": account.imap.security, "imap_port": account.imap.port,
            "username": account.imap.username, "smtp_host": account.smtp.host,
            "smtp_security": account.smtp.security, "smtp_port": account.smtp.port,
            "smtp_username": account.smtp.username, "folder": account.folder,
            "sent_folder": account.sent_folder, "append_sent": account.append_sent,
            "after_import": account.after_import, "move_to": account.move_to,
            "sync_start_at": timezone.localtime(sync_start_at).date(),
        }

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
            **({"options": stored["options"]} if "options" in stored else {}),
        }
