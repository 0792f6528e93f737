"""The Microsoft identity platform v2.0 (login.microsoftonline.com): discovery, authorize,
admin consent and token endpoints."""

from __future__ import annotations


def routes(app) -> list:
    return []
