"""Forwarding mailboxes: the admin forwards a support address (support@acme.com), at
whatever mail service hosts it, to an address we generate on the deployment's inbound
domain (``INBOUND_EMAIL_DOMAIN``), and our own SMTP server (``manage.py inbound_smtp``,
``smtp.py`` here) receives it. Nothing is fetched and nothing is asked of the mail
service: the mailbox has no sign-in, no cursor and no sending of its own.

- The connection's ``address`` is the support address (what customers write to, what the
  loop filter knows as ours, what replies are From when the sending mailbox may send as
  it); ``inbound_address`` the generated one, unique over every workspace, which the SMTP
  server resolves each RCPT TO by.
- Health: Active as stored, but worded "Waiting for first email" until the first
  forwarded message arrived (``last_sync_at``, stamped by the SMTP server once a message
  is stored), because until then nothing shows the forwarding works.
- Replies go out through the mailbox mapped for them, else the workspace's default
  (``selectors.reply_connection_for``).
"""

from __future__ import annotations

import re
import secrets
import string

from django import forms
from django.conf import settings

from channels_email.models import ConnectionStatus
from channels_email.providers.base import Capability, SetupGuide

NAME = "forwarding"
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_LENGTH = 12  # 36^12: about 62 bits, far beyond guessing at SMTP speed
_NOT_LOCAL = re.compile(r"[^a-z0-9]+")


class ForwardingForm(forms.Form):
    address = forms.EmailField(
        label="Support address", max_length=320,
        help_text="The address customers write to and that you will forward to us, like "
                  "support@yourcompany.com.")
    display_name = forms.CharField(label="Sender name on replies", max_length=200,
                                   required=False)


def inbound_domain() -> str:
    return settings.INBOUND_EMAIL_DOMAIN.strip().lower().rstrip(".")


class ForwardingProvider:
    """Mail forwarded to a generated address, received by ``manage.py inbound_smtp``."""

    name = NAME
    label = "Forwarding"
    connect_button = "Forwarding: any mail service"
    not_configured_hint = ("Forwarding is off: set INBOUND_EMAIL_DOMAIN to a domain whose MX "
                           "record points at this server's inbound SMTP server.")
    disconnect_hint = ("Turn the forwarding off at your mail service too; mail forwarded "
                       "from now on is refused.")
    capabilities = frozenset({Capability.FORWARDED})
    last_sync_label = "Last email received"
    add_form = ForwardingForm

    def is_configured(self) -> bool:
        domain = inbound_domain()
        # A .localhost domain is reachable from this machine only: dev and the demo.
        return bool(domain) and not (settings.IS_PROD and domain.endswith("localhost"))

    def form_action_origins(self) -> tuple[str, ...]:
        return ()

    def generate_address(self, support_address: str) -> str:
        local, _, domain = support_address.strip().lower().partition("@")
        label = domain.split(".", 1)[0]
        readable = _NOT_LOCAL.sub("-", f"{label}-{local}").strip("-")[:40].strip("-")
        token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))
        return f"{readable}-{token}@{inbound_domain()}" if readable else \
            f"{token}@{inbound_domain()}"

    def health_status(self, connection) -> tuple[str, str] | None:
        if connection.status == ConnectionStatus.ACTIVE and connection.last_sync_at is None:
            return "Waiting for first email", "warn"
        return None

    def setup_guides(self, connection) -> tuple[SetupGuide, ...]:
        support, target = connection.address, connection.inbound_address
        return (
            SetupGuide("Gmail or Google Workspace", (
                f"Sign in to Gmail as {support} and open Settings (the gear), See all "
                "settings, then the Forwarding and POP/IMAP tab.",
                f"Choose Add a forwarding address, paste {target} and confirm with Next "
                "and Proceed.",
                "Gmail then mails a confirmation to that address. It does not become a "
                "ticket: its code and link show up on this page once it arrives. Open the "
                "link, or type the code into Gmail.",
                f"Back in the same tab, pick Forward a copy of incoming mail to {target} "
                "and save the changes.",
            )),
            SetupGuide("Microsoft 365 or Outlook.com", (
                f"Microsoft 365: in the Exchange admin center open Recipients, Mailboxes, "
                f"select {support}, then Mail flow settings and Email forwarding. Turn "
                f"forwarding on to {target}, and keep a copy in the mailbox if people "
                "still read it.",
                "Microsoft 365 blocks automatic forwarding to outside addresses unless the "
                "outbound anti-spam policy that applies to this mailbox allows it "
                "(Microsoft Defender portal, Policies, Anti-spam, the outbound policy, "
                "Automatic forwarding rules).",
                f"Outlook.com: Settings, Mail, Forwarding; turn it on and enter {target}.",
            )),
            SetupGuide("Any other mail service", (
                f"Find forwarding for {support} in your mail service's settings (it may be "
                "called redirect, auto-forward or a forwarding rule).",
                f"Send every message to {target} as it is: a redirect that keeps the "
                "original sender, not a forward as an attachment.",
            )),
        )
