"""Mail providers behind one protocol (``base.EmailProvider``); ``get(name)`` returns the
implementation for a connection's ``provider``. Each provider lives in its own module and
registers itself here, so adding one changes nothing outside that module and the sandbox."""

from __future__ import annotations

from channels_email.providers.base import (
    AuthError,
    CursorExpired,
    EmailProvider,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
)

_REGISTRY: dict[str, type[EmailProvider]] = {}
_MODULES = {"gmail": "channels_email.providers.gmail"}


def register(name: str):
    def decorator(cls):
        _REGISTRY[name] = cls
        return cls

    return decorator


def get(name: str) -> EmailProvider:
    """A provider client for ``name`` (``EmailConnection.provider``); KeyError if none."""
    if name not in _REGISTRY and name in _MODULES:
        import importlib

        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]()


__all__ = [
    "AuthError",
    "CursorExpired",
    "EmailProvider",
    "PermanentError",
    "ProviderError",
    "RateLimited",
    "TransientError",
    "get",
    "register",
]
