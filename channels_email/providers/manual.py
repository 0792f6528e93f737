"""Manual connections: mail arrives as files (``manage.py ingest_eml``, tests), nothing is
ever asked of a provider. The provider with no capability."""

from __future__ import annotations

from channels_email.providers.base import Capability

NAME = "manual"


class ManualProvider:
    name = NAME
    label = "Manual (files and tests)"
    connect_button = ""
    not_configured_hint = ""
    disconnect_hint = ""
    capabilities: frozenset[Capability] = frozenset()

    def is_configured(self) -> bool:
        return True

    def form_action_origins(self) -> tuple[str, ...]:
        return ()
