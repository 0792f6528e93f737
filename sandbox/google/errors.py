"""Google's error bodies (the Gmail API's JSON error format)."""

from __future__ import annotations

from ..http import Response

GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}



def google_error(code: int, message: str, reason: str, domain: str = "global",
                 headers=None, item_message: str | None = None, **extra) -> Response:
    error = {"message": item_message or message, "domain": domain, "reason": reason, **extra}
    return Response(code, {"error": {"code": code, "message": message, "errors": [error],
                                     "status": GOOGLE_STATUS.get(code, "UNKNOWN")}},
                    headers=headers)

