"""The domain's one error type (DESIGN.md section 11).

Services raise ``ApplicationError`` for a rule the input breaks: HTML views show it on
the form (on ``field`` when it names one), the API answers it as an RFC 9457 problem
document whose ``type`` ends in ``code``. ``code`` is stable (clients branch on it);
``message`` is for people.
"""

from __future__ import annotations


class ApplicationError(Exception):
    """A request the domain refuses. ``status`` is the HTTP status the API answers with
    (400 by default: the input is wrong; 409: the state does not allow it now)."""

    def __init__(self, code: str, message: str, *, field: str | None = None,
                 status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status
