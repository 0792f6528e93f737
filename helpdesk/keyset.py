"""Keyset (cursor) pagination, shared by the REST API (``helpdesk.api.KeysetPagination``)
and the agent pages: a page is "the next ``size`` rows after this row" in a stable order
whose last key is unique, read from an index, never an OFFSET and never a COUNT(*), so
page 2,000 of 100,000 tickets costs what page 1 does.

A cursor is an opaque URL-safe token of the boundary row's key values. ``keyset_page``
reads one page forwards (``after``) or backwards (``before``, for a "Newer" link) and
says whether there is more in either direction it can tell without another query."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q, QuerySet


class InvalidCursor(ValueError):
    """A cursor this code did not give out (or for another order)."""


def encode(values: Sequence) -> str:
    plain = [{"dt": v.isoformat()} if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def decode(token: str, keyset: Sequence[str]) -> list:
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(values, list) or len(values) != len(keyset):
            raise ValueError
        return [datetime.fromisoformat(v["dt"]) if isinstance(v, dict) else v for v in values]
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(token) from None


def row_values(row, keyset: Sequence[str]) -> list:
    values = []
    for key in keyset:
        value = row
        for step in key.lstrip("-").split("__"):  # "user__email": through the relation
            value = getattr(value, step)
        values.append(value)
    return values


def after(keyset: Sequence[str], values: Sequence) -> Q:
    """Rows strictly after ``values`` in ``keyset`` order: the usual lexicographic
    (a < x) or (a = x and b < y) ... expansion."""
    condition = Q()
    equal = Q()
    for key, value in zip(keyset, values, strict=True):
        name = key.lstrip("-")
        step = Q(**{f"{name}__lt" if key.startswith("-") else f"{name}__gt": value})
        condition |= equal & step
        equal &= Q(**{name: value})
    return condition


def reverse(keyset: Sequence[str]) -> list[str]:
    return [key[1:] if key.startswith("-") else f"-{key}" for key in keyset]


@dataclass
class KeysetPage:
    rows: list
    next_cursor: str | None = None  # the rows after this page, when there are any
    previous_cursor: str | None = None  # the rows before it, when there are any
    extra: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def keyset_page(queryset: QuerySet, keyset: Sequence[str], *, size: int,
                after_cursor: str | None = None, before_cursor: str | None = None) -> KeysetPage:
    """One page of ``queryset`` in ``keyset`` order (one query of ``size + 1`` rows).
    ``after_cursor``: the page after that row; ``before_cursor``: the page before it
    (shown in the same order). Raises InvalidCursor on a token it did not give out."""
    if before_cursor:
        boundary = decode(before_cursor, keyset)
        backwards = reverse(keyset)
        rows = list(queryset.filter(after(backwards, boundary)).order_by(*backwards)[: size + 1])
        more_before = len(rows) > size
        rows = rows[:size][::-1]
        return KeysetPage(
            rows,
            next_cursor=encode(row_values(rows[-1], keyset)) if rows else before_cursor,
            previous_cursor=encode(row_values(rows[0], keyset)) if more_before else None)
    queryset = queryset.order_by(*keyset)
    if after_cursor:
        queryset = queryset.filter(after(keyset, decode(after_cursor, keyset)))
    rows = list(queryset[: size + 1])
    more_after = len(rows) > size
    rows = rows[:size]
    return KeysetPage(
        rows,
        next_cursor=encode(row_values(rows[-1], keyset)) if more_after else None,
        # Past the first page there is something before, unless it was all taken since.
        previous_cursor=encode(row_values(rows[0], keyset)) if after_cursor and rows else None)
