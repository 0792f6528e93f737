"""Regular expressions that workspace admins write (mailbox block lists, routing rules).

They run on text that senders control, on workers that every workspace shares, so each
search has a time limit (the ``regex`` module's ``timeout``; the stdlib ``re`` has none):
a catastrophic pattern like ``(a+)+$`` costs at most PATTERN_TIMEOUT seconds and then
counts as no match, logged. Within ``pattern_budget(seconds)`` (ingest gives each email
one) all searches together get at most that long: many slow rules cannot add up to
more, and once it is spent the remaining patterns count as no match. Matching is
case-insensitive; syntax is ``re``'s.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import time

import regex

logger = logging.getLogger(__name__)

PATTERN_TIMEOUT = 0.05  # seconds a single search may take
EMAIL_BUDGET = 0.25  # seconds all the searches for one email may take together
MAX_PATTERN = 500

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pattern_deadline", default=None)


@contextlib.contextmanager
def pattern_budget(seconds: float = EMAIL_BUDGET):
    """Searches inside share ``seconds`` of time in all."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used, or None (forms and rule validation)."""
    if len(pattern) > MAX_PATTERN:
        return f"regular expression is longer than {MAX_PATTERN} characters"
    try:
        regex.compile(pattern, regex.IGNORECASE)
    except (regex.error, TypeError, ValueError, RecursionError, OverflowError) as exc:
        return f"invalid regular expression {pattern!r}: {exc}"
    return None


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str):
    return None if pattern_problem(pattern) else regex.compile(pattern, regex.IGNORECASE)


def pattern_search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` occurs in ``text``; False for a pattern that does not compile
    or a search that ran out of time."""
    compiled = _compiled(pattern)
    if compiled is None:
        return False
    timeout = PATTERN_TIMEOUT
    deadline = _deadline.get()
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
        if timeout <= 0:
            logger.warning("pattern.budget_spent pattern=%r", pattern[:80])
            return False
    try:
        return compiled.search(text, timeout=timeout) is not None
    except TimeoutError:
        logger.warning("pattern.timeout pattern=%r length=%s", pattern[:80], len(text))
        return False
