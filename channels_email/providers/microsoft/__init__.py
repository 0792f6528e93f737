"""Microsoft 365 behind ``EmailProvider``: sign-in through msal (``identity.py``), the
mailbox through Microsoft Graph (``graph.py``: subscriptions, delta, MIME fetch and send),
its change and lifecycle notifications (``webhooks.py``)."""

from __future__ import annotations

from django.conf import settings

from channels_email.providers.base import (
    Accepted,
    Capability,
    ConnectionLookup,
    Handshake,
    Rejected,
    WebhookRoute,
)
from channels_email.providers.microsoft import webhooks
from channels_email.providers.microsoft.graph import GraphMailbox


class MicrosoftProvider(GraphMailbox):
    name = "microsoft"
    label = "Microsoft 365"
    connect_button = "Outlook / Microsoft 365"
    not_configured_hint = ("Microsoft 365 is not configured on this server (MS_CLIENT_ID). "
                           "See the README.")
    capabilities = frozenset({Capability.PUSH, Capability.CURSOR_SYNC, Capability.FETCH,
                              Capability.SEND, Capability.FIND_SENT})
    webhook_routes = (
        WebhookRoute(path="microsoft/graph", hook="graph", log_key="microsoft"),
        WebhookRoute(path="microsoft/graph/lifecycle", hook="lifecycle",
                     log_key="microsoft"),
    )

    def is_configured(self) -> bool:
        return bool(getattr(settings, "MS_CLIENT_ID", ""))

    def form_action_origins(self) -> tuple[str, ...]:
        return ()

    def handle_webhook(self, hook: str, request, lookup: ConnectionLookup
                       ) -> Handshake | Accepted | Rejected:
        return webhooks.handle(self.name, hook, request, lookup)
