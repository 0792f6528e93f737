"""Microsoft 365 behind ``EmailProvider``: sign-in and tokens through msal
(``identity.py``); the mailbox through Microsoft Graph (``graph.py``: subscriptions, delta,
MIME fetch and send) and its change and lifecycle notifications (``webhooks.py``)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.conf import settings

from channels_email.providers.base import (
    OAUTH_MAILBOX,
    Accepted,
    ConnectionLookup,
    Handshake,
    Rejected,
    SandboxDemo,
    WebhookRoute,
)
from channels_email.providers.microsoft import webhooks
from channels_email.providers.microsoft.graph import GraphMailbox
from channels_email.providers.microsoft.identity import ENTRA_APPS, MicrosoftIdentity

_ADMIN_CONSENT_LINK = re.compile(r"https?://[^\s?#]+/v2\.0/adminconsent\?[^\s()]+")


class MicrosoftProvider(MicrosoftIdentity, GraphMailbox):
    name = "microsoft"
    label = "Microsoft 365"
    connect_button = "Outlook / Microsoft 365"
    not_configured_hint = ("Microsoft 365 is not configured on this server (MS_CLIENT_ID). "
                           "See the README.")
    disconnect_hint = ("Microsoft keeps the permissions it granted the helpdesk until an "
                       f"admin removes them: {ENTRA_APPS} (or the user, at "
                       "myapps.microsoft.com).")
    capabilities = OAUTH_MAILBOX
    webhook_routes = (
        WebhookRoute(path="microsoft/graph", hook="graph", log_key="microsoft"),
        WebhookRoute(path="microsoft/graph/lifecycle", hook="lifecycle",
                     log_key="microsoft"),
    )

    demo_seeded_mailbox = False

    @staticmethod
    def sandbox_demo(*, public_url: str, sandbox: dict, suggested: tuple[str, ...] = ()
                     ) -> SandboxDemo:
        """The demo's Microsoft side: an app registration with our callback (msal talks to
        the sandbox's TLS listener, trusting its CA) and a mailbox of the contoso tenant,
        whose users may consent (fabrikam's need an admin)."""
        client_id, secret = "8d0d5a1e-5d4f-4c1a-9a57-0d3c0de0d3e0", "demo~sandbox-secret"
        mailbox = "support@contoso.test"
        return SandboxDemo(
            env={"MS_CLIENT_ID": client_id, "MS_CLIENT_SECRET": secret},
            calls=(("/_sandbox/microsoft/apps", {
                "client_id": client_id, "client_secret": secret,
                "redirect_uris": [f"{public_url}/oauth/microsoft/callback/"]}),
                ("/_sandbox/mailboxes", {"email": mailbox, "provider": "microsoft",
                                         "tenant": "contoso"})),
            mailbox=mailbox, check_domain="contoso.test",
            new_mailbox={"provider": "microsoft", "tenant": "contoso"})

    @staticmethod
    def sandbox_consent(auth_query: dict, address: str) -> list[tuple[str, str]]:
        """The form the sandbox's Permissions requested page posts on Accept."""
        return [*auth_query.items(), ("step", "consent"), ("email", address),
                ("decision", "accept")]

    def is_configured(self) -> bool:
        return bool(settings.MS_CLIENT_ID and settings.MS_CLIENT_SECRET)

    def form_action_origins(self) -> tuple[str, ...]:
        """Where the connect redirect goes: the sign-in page's origin (in the sandbox its
        plain-http listener, not the authority's TLS one)."""
        origins = []
        for url in (settings.MS_SIGN_IN_ORIGIN, settings.MS_AUTHORITY):
            parts = urlsplit(url)
            if parts.scheme and parts.netloc:
                origin = f"{parts.scheme}://{parts.netloc}"
                if origin not in origins:
                    origins.append(origin)
        return tuple(origins)

    @classmethod
    def error_help(cls, status: str, last_error: str) -> tuple[str, str] | None:
        """The admin-consent link a withdrawn consent (AADSTS65001 at refresh) put in the
        connection's last error, if it goes to this server's Microsoft sign-in origin."""
        if status != "token_expired" or "AADSTS65001" not in last_error:
            return None
        found = _ADMIN_CONSENT_LINK.search(last_error)
        if not found:
            return None
        parts = urlsplit(found.group(0))
        if f"{parts.scheme}://{parts.netloc}" not in cls().form_action_origins():
            return None
        return found.group(0), "Grant admin consent for your organization"

    def handle_webhook(self, hook: str, request, lookup: ConnectionLookup
                       ) -> Handshake | Accepted | Rejected:
        return webhooks.handle(self.name, hook, request, lookup)
