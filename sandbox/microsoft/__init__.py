"""The Microsoft side of the sandbox: the identity platform (login.microsoftonline.com,
``identity.py``) and Microsoft Graph v1.0 (``graph.py``)."""

from __future__ import annotations

from . import graph, identity


def routes(app) -> list:
    return identity.routes(app) + graph.routes(app)
