"""The Google side of the sandbox: OAuth 2.0 (accounts.google.com) and the Gmail API v1."""

from __future__ import annotations

from .gmail_api import GmailAPI
from .oauth import GoogleOAuth


def routes(app) -> list:
    return GoogleOAuth(app).routes() + GmailAPI(app).routes()
