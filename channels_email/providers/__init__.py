"""Mail providers behind one seam (``base``): the registry, built from
``settings.EMAIL_PROVIDERS`` (dotted paths of provider classes), so a deployment turns a
provider off by leaving it out, and adding one is one module plus one line of settings (the
connection's ``provider`` column is a plain string checked against the registry: no
migration).

``get(name)`` returns a provider client for a connection's ``provider`` (KeyError when that
provider is not enabled); ``can(name, capability)`` tells whether it does something;
``enabled()`` lists them in settings order. Nothing outside this package compares a
provider's name.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from channels_email.providers.base import (
    CAPABILITY_PROTOCOLS,
    AuthError,
    Capability,
    CursorExpired,
    EmailProvider,
    PermanentError,
    ProviderError,
    RateLimited,
    SandboxDemo,
    TransientError,
    WebhookRoute,
)

_BUILT: dict[tuple[str, ...], dict[str, type]] = {}


def _classes() -> dict[str, type]:
    """name -> provider class, for the current settings (cached per settings value, so a
    test overriding EMAIL_PROVIDERS sees its own registry)."""
    paths = tuple(settings.EMAIL_PROVIDERS)
    built = _BUILT.get(paths)
    if built is None:
        built = {}
        for path in paths:
            cls = import_string(path)
            for capability in cls.capabilities:
                protocol = CAPABILITY_PROTOCOLS[capability]
                wanted = [*vars(protocol), *getattr(protocol, "__annotations__", {})]
                missing = [name for name in wanted if not name.startswith("_")
                           and not hasattr(cls, name)]
                if missing:
                    raise TypeError(f"{path} declares {capability} without {missing}")
            if cls.name in built:
                raise ValueError(f"two providers are named {cls.name!r}")
            built[cls.name] = cls
        _BUILT[paths] = built
    return built


def get(name: str) -> EmailProvider:
    """A provider client for ``name`` (``EmailConnection.provider``); KeyError if that
    provider is not enabled on this server."""
    return _classes()[name]()


def enabled() -> list[EmailProvider]:
    """Every enabled provider, in settings order."""
    return [cls() for cls in _classes().values()]


def is_enabled(name: str) -> bool:
    return name in _classes()


def can(name: str, capability: Capability) -> bool:
    """Whether the provider ``name`` is enabled and has ``capability``."""
    cls = _classes().get(name)
    return cls is not None and capability in cls.capabilities


def names_with(capability: Capability) -> list[str]:
    """The enabled providers that have ``capability`` (for the sweeps' queries)."""
    return [name for name, cls in _classes().items() if capability in cls.capabilities]


def label(name: str) -> str:
    """How ``name`` is shown; the stored value itself for a provider not enabled here."""
    cls = _classes().get(name)
    return cls.label if cls is not None else name


def status_label(name: str, status: str, default: str) -> str:
    """How ``status`` reads for a mailbox of provider ``name`` (a password mailbox's Token
    Expired is "Sign-in failed"); ``default`` otherwise."""
    cls = _classes().get(name)
    return (getattr(cls, "status_labels", None) or {}).get(status, default)


def health_status(connection) -> tuple[str, str] | None:
    """(label, tone) a provider words a connection's health in from its own facts (a
    forwarding mailbox "Waiting for first email" until mail has arrived), or None for the
    status as stored (``status_label``)."""
    cls = _classes().get(connection.provider)
    hook = getattr(cls, "health_status", None) if cls is not None else None
    return hook(cls(), connection) if hook is not None else None


def last_sync_label(name: str) -> str:
    """What the health block calls ``last_sync_at`` for provider ``name``."""
    cls = _classes().get(name)
    return getattr(cls, "last_sync_label", "") or "Last sync"


def error_help(name: str, status: str, last_error: str) -> tuple[str, str] | None:
    """(url, label) of the page an admin must visit to fix what ``last_error`` says, for
    a mailbox of provider ``name`` in ``status``, when its provider offers one (a
    Microsoft organization's admin consent); None otherwise."""
    cls = _classes().get(name)
    helper = getattr(cls, "error_help", None)
    return helper(status, last_error) if helper is not None else None


def webhook_routes() -> list[tuple[str, WebhookRoute]]:
    """(provider name, route) of every enabled provider's webhooks."""
    return [(name, route) for name, cls in _classes().items()
            if Capability.PUSH in cls.capabilities for route in cls.webhook_routes]


def sandbox_demos(*, public_url: str, sandbox: dict, suggested: tuple[str, ...] = ()
                  ) -> list[tuple[EmailProvider, SandboxDemo]]:
    """How each enabled provider that has a side in the sandbox is wired for the demo
    (``make demo``), in settings order."""
    return [(provider, provider.sandbox_demo(public_url=public_url, sandbox=sandbox,
                                             suggested=suggested))
            for provider in enabled() if hasattr(provider, "sandbox_demo")]


def demo_seeded_provider() -> str:
    """The provider of the demo's seeded mailbox (one whose sandbox suggests it)."""
    for provider in enabled():
        if getattr(provider, "demo_seeded_mailbox", False):
            return provider.name
    raise LookupError("no enabled provider can hold the demo's seeded mailbox")


def form_action_origins() -> list[str]:
    """Every origin an enabled provider's sign-in forms lead to, without repeats."""
    origins: list[str] = []
    for provider in enabled():
        for origin in provider.form_action_origins():
            if origin and origin not in origins:
                origins.append(origin)
    return origins


__all__ = [
    "AuthError",
    "Capability",
    "CursorExpired",
    "EmailProvider",
    "PermanentError",
    "ProviderError",
    "RateLimited",
    "TransientError",
    "can",
    "demo_seeded_provider",
    "enabled",
    "form_action_origins",
    "get",
    "health_status",
    "is_enabled",
    "last_sync_label",
    "label",
    "names_with",
    "sandbox_demos",
    "status_label",
    "webhook_routes",
]
