"""Hand-written SQL on the hot paths, returning model instances without the ORM's query
building (which costs more than the database's work for a one-row statement).

Contract: ``columns(Model, alias)`` lists a model's concrete columns in field order; a
statement that selects or returns exactly that list (then any extra values) can be turned
into an instance by ``instance(Model, values)``. Table and column names come from model
metadata, never from input; values always go through parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TypeVar

from django.db import connection, models

M = TypeVar("M", bound=models.Model)


@functools.cache
def columns(model: type[models.Model], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{f.column}"' for f in model._meta.concrete_fields)


@functools.cache
def _fields(model: type[models.Model]):
    fields = model._meta.concrete_fields
    converters = [(i, f) for i, f in enumerate(fields) if hasattr(f, "from_db_value")]
    return [f.attname for f in fields], converters, len(fields)


def width(model: type[models.Model]) -> int:
    return _fields(model)[2]


def instance(model: type[M], values: Sequence) -> M:
    """A model instance from the first ``width(model)`` values of a row."""
    attnames, converters, count = _fields(model)
    values = list(values[:count])
    for index, field in converters:
        if values[index] is not None:
            values[index] = field.from_db_value(values[index], None, connection)
    return model.from_db(connection.alias, attnames, values)


def fetch_one(model: type[M], sql: str, params: Sequence) -> tuple[M, tuple] | None:
    """Run ``sql`` (which returns ``columns(model)`` first) and return the instance and
    the row's extra values, or None when no row comes back."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    return instance(model, row), tuple(row[width(model):])


@functools.cache
def _insert_fields(model: type[models.Model]):
    return [f for f in model._meta.concrete_fields if not f.primary_key]


def insert_parts(obj: models.Model, expressions: dict[str, tuple[str, list]] | None = None
                 ) -> tuple[str, str, list]:
    """(column list, placeholders, parameters) of an INSERT of ``obj``, with the values the
    ORM would write (``pre_save`` fills auto_now fields, ``get_db_prep_save`` adapts).
    ``expressions`` maps a field's attname to (SQL, parameters) computed by the database
    instead, e.g. ``{"number": ("tickets_next_number(%s)", [tenant_id])}``."""
    expressions = expressions or {}
    names, placeholders, params = [], [], []
    for field in _insert_fields(type(obj)):
        names.append(f'"{field.column}"')
        if field.attname in expressions:
            snippet, values = expressions[field.attname]
            placeholders.append(snippet)
            params.extend(values)
        else:
            placeholders.append("%s")
            params.append(field.get_db_prep_save(field.pre_save(obj, True), connection))
    return ", ".join(names), ", ".join(placeholders), params


def saved(obj: M, pk: int) -> M:
    """Mark ``obj`` as the stored row ``pk`` (after a hand-written INSERT)."""
    obj.pk = pk
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


# In a statement's RETURNING list: the transaction it runs in (an autocommitted statement:
# itself) commits without waiting for the WAL flush. The commit of any later transaction
# that does wait flushes the WAL up to itself, this one's commit record included (the WAL
# is one sequence), so nothing committed after it is ever durable without it. See
# channels_email.services.inbound_email_receive for where that is enough.
NO_FLUSH_WAIT = "set_config('synchronous_commit', 'off', true)"


def insert(obj: M, expressions: dict[str, tuple[str, list]] | None = None, *,
           wait_for_flush: bool = True) -> M:
    """INSERT ``obj`` in one statement and set its primary key, and the fields computed by
    ``expressions`` (read back with RETURNING). ``wait_for_flush=False`` (autocommit
    only): see NO_FLUSH_WAIT."""
    names, placeholders, params = insert_parts(obj, expressions)
    computed = list(expressions or ())
    returning = ", ".join([obj._meta.pk.column,
                           *(obj._meta.get_field(a).column for a in computed)])
    if not wait_for_flush:
        if connection.in_atomic_block:
            raise RuntimeError("wait_for_flush=False would apply to the caller's transaction")
        returning += f", {NO_FLUSH_WAIT}"
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {obj._meta.db_table} ({names}) "  # noqa: S608
                       f"VALUES ({placeholders}) RETURNING {returning}", params)
        row = cursor.fetchone()
    for attname, value in zip(computed, row[1:1 + len(computed)], strict=True):
        setattr(obj, attname, value)
    return saved(obj, row[0])
