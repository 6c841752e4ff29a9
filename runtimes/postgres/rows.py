"""Materialised rows written as upserts: one statement per distinct set of columns.

Three ways to send the rows, chosen per set of columns by their types (fastest first):

1. ``INSERT ... SELECT FROM jsonb_to_recordset(:rows)``: every column is text, a number, a
   boolean or JSON, and the rows are plain JSON; they travel as one JSON text.
2. ``INSERT ... SELECT FROM unnest(:a_0, :a_1, ...)``: every column has a plain scalar type;
   one array per column.
3. ``INSERT ... VALUES (...), (...) ... RETURNING``: anything else, as multi-row ``VALUES``
   (SQLAlchemy's "insertmanyvalues").

Each statement is built once per (table, columns) and cached until :meth:`RowUpserts.forget`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows.errors import StateError
from flows.tables import TableShape

#: scalar column types that both bulk paths below carry unchanged
_SCALAR_TYPES = (
    sa.Text,
    sa.String,
    sa.Integer,
    sa.BigInteger,
    sa.SmallInteger,
    sa.Float,
    sa.Double,
    sa.Boolean,
)
#: column types that come out of ``jsonb_to_recordset`` as they went in (the JSON upsert path)
_JSON_TYPES = (*_SCALAR_TYPES, sa.JSON)
#: column types whose arrays psycopg sends as they are (the unnest upsert path)
_UNNEST_TYPES = (*_SCALAR_TYPES, sa.Numeric, sa.LargeBinary, sa.DateTime, sa.Date, sa.Uuid)

_CacheKey = tuple[str, frozenset[str]]


def _on_conflict(
    insert: pg.Insert, table: sa.Table, shape: TableShape, columns: Sequence[str]
) -> pg.Insert:
    """``insert`` as an upsert: the non-key ``columns`` take the new values on conflict."""
    pk_columns = [table.c[c] for c in shape.primary_key]
    others = {c: insert.excluded[c] for c in columns if c not in shape.primary_key}
    if not others:
        return insert.on_conflict_do_nothing(index_elements=pk_columns)
    return insert.on_conflict_do_update(index_elements=pk_columns, set_=others)


def _json_rows(rows: Sequence[dict[str, Any]]) -> str | None:
    """The rows as one JSON array, or ``None`` when a value is not plain JSON (a float NaN,
    a Decimal, a date): those rows take the array path."""
    try:
        return json.dumps(rows, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


class RowUpserts:
    """Writes materialised rows; caches its statements per table name (thread-safe).

    A table dropped and created again under its name may have other columns or types:
    :meth:`forget` it, or the cached statements would write with the old ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._row_upserts: dict[_CacheKey, sa.Executable] = {}
        self._row_unnests: dict[_CacheKey, sa.Executable | None] = {}
        self._row_jsons: dict[_CacheKey, sa.Executable | None] = {}

    def forget(self, names: Iterable[str]) -> None:
        """Drops every statement built for the tables ``names``."""
        doomed = set(names)
        with self._lock:
            for cache in (self._row_upserts, self._row_unnests, self._row_jsons):
                for key in [k for k in cache if k[0] in doomed]:
                    del cache[key]

    def write(
        self,
        conn: sa.Connection,
        table: sa.Table,
        shape: TableShape,
        rows: Sequence[dict[str, Any]],
    ) -> None:
        """Upserts ``rows`` into ``table`` in ``conn``'s transaction.

        Rows are collapsed per primary key first (later fields win), then sent with one
        statement per distinct set of columns (normally one). Raises :class:`StateError`
        for a row without its primary key or with a column the table lacks, before writing.
        """
        collapsed: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            try:
                pk = tuple(row[c] for c in shape.primary_key)
            except KeyError as missing:
                raise StateError(
                    f"a row for table {shape.name!r} lacks primary key column {missing}"
                ) from None
            collapsed[pk] = {**collapsed.get(pk, {}), **row}
        by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in collapsed.values():
            by_columns.setdefault(frozenset(row), []).append(row)
        for columns, same in by_columns.items():
            unknown = columns - set(table.c.keys())
            if unknown:
                raise StateError(
                    f"rows for table {shape.name!r} have columns it lacks: {sorted(unknown)}"
                )
            by_json = self._row_upsert_json(table, shape, columns)
            encoded = _json_rows(same) if by_json is not None else None
            unnest = self._row_upsert_unnest(table, shape, columns)
            if by_json is not None and encoded is not None:
                conn.execute(by_json, {"rows": encoded})
            elif unnest is not None:
                ordered = sorted(columns)
                conn.execute(
                    unnest, {f"a_{i}": [row[c] for row in same] for i, c in enumerate(ordered)}
                )
            else:
                conn.execute(self._row_upsert(table, shape, columns), same)

    def _row_upsert_json(
        self, table: sa.Table, shape: TableShape, columns: frozenset[str]
    ) -> sa.Executable | None:
        """One ``INSERT ... SELECT FROM jsonb_to_recordset(rows) ON CONFLICT``, when every
        column is text, a number, a boolean or JSON: the rows travel as one JSON text that
        the C encoder writes, instead of arrays that psycopg dumps element by element in
        Python. ``None`` when a column's type does not come out of JSON as it is."""
        cache_key = (shape.name, columns)
        if cache_key in self._row_jsons:
            return self._row_jsons[cache_key]
        ordered = sorted(columns)
        found: sa.Executable | None = None
        if all(isinstance(table.c[c].type, _JSON_TYPES) for c in ordered):
            rows = (
                sa.func.jsonb_to_recordset(sa.cast(sa.bindparam("rows", type_=sa.Text), pg.JSONB))
                .table_valued(*[sa.column(c, table.c[c].type) for c in ordered])
                .render_derived(name="r", with_types=True)
            )
            insert = pg.insert(table).from_select(ordered, sa.select(*[rows.c[c] for c in ordered]))
            found = _on_conflict(insert, table, shape, ordered)
        with self._lock:
            self._row_jsons[cache_key] = found
        return found

    def _row_upsert_unnest(
        self, table: sa.Table, shape: TableShape, columns: frozenset[str]
    ) -> sa.Executable | None:
        """One ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT`` for the rows, when every
        column has a plain scalar type (no JSON, no arrays): a single statement whatever the
        batch size, with no per-row work in SQLAlchemy. ``None`` otherwise."""
        cache_key = (shape.name, columns)
        if cache_key in self._row_unnests:
            return self._row_unnests[cache_key]
        ordered = sorted(columns)
        plain = all(isinstance(table.c[c].type, _UNNEST_TYPES) for c in ordered)
        found: sa.Executable | None = None
        if plain:
            source = (
                sa.func.unnest(
                    *[
                        sa.bindparam(f"a_{i}", type_=pg.ARRAY(table.c[c].type))
                        for i, c in enumerate(ordered)
                    ]
                )
                .table_valued(*[f"c{i}" for i in range(len(ordered))])
                .render_derived(name="r")
            )
            insert = pg.insert(table).from_select(
                ordered, sa.select(*[source.c[f"c{i}"] for i in range(len(ordered))])
            )
            found = _on_conflict(insert, table, shape, ordered)
        with self._lock:
            self._row_unnests[cache_key] = found
        return found

    def _row_upsert(
        self, table: sa.Table, shape: TableShape, columns: frozenset[str]
    ) -> sa.Executable:
        cache_key = (shape.name, columns)
        found = self._row_upserts.get(cache_key)
        if found is not None:
            return found
        statement = _on_conflict(pg.insert(table), table, shape, sorted(columns))
        # RETURNING makes SQLAlchemy send the rows as multi-row VALUES ("insertmanyvalues",
        # 1000 rows a statement) instead of one INSERT per row.
        found = statement.returning(table.c[shape.primary_key[0]])
        with self._lock:
            self._row_upserts[cache_key] = found
        return found
