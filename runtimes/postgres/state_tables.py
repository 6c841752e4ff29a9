"""State tables: their shape, the statements on them (built once per table) and queries.

One table per stateful flow (its name given by the flow)::

    <state table>  key               BYTEA | TEXT COLLATE "C"   PRIMARY KEY
                   value             BYTEA | JSONB              NOT NULL
                   updated_at        TIMESTAMPTZ                NOT NULL DEFAULT now()
                   source_partition  INTEGER                    (NULL: stored before versions)
                   source_offset     BIGINT

Keys are ``TEXT`` when the flow's key format is ``str`` or ``json``, values ``JSONB`` when
its state format is ``json`` (:class:`flows.ports.StateColumns`; ``columns.py`` says how the
bytes travel), so plain SQL reads them: ``SELECT value FROM wordcount_count_state WHERE key
= 'the'``. ``COLLATE "C"`` orders text keys bytewise (as their UTF-8 bytes, as Python
compares ``bytes``), which paging by key relies on; equality is the same in any collation.

``source_partition`` and ``source_offset`` name the input record that last changed the row,
written by the same statement as the value: the row's *version*
(:func:`flows.ports.state_version`), an HTTP ETag. A key lives in one partition, whose
offsets only grow, so each change has a new one. Rows of a table created before versions
existed keep NULLs until they change; their version is ``updated_at``'s.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows.ports import StateColumns, state_version
from runtimes.postgres.columns import Column, column_of
from runtimes.postgres.statements import array_of

__all__ = ["StateTable", "key_range", "state_table", "version_of"]


@dataclasses.dataclass(frozen=True, slots=True)
class StateTable:
    """A state table, its columns' strategies and the statements on it, built once.

    ``upsert`` takes ``keys`` and ``values`` (:meth:`Column.dump` ed) and the array literals
    ``partitions`` and ``offsets`` (the versions); ``delete`` and ``load`` take ``keys``;
    ``get`` one ``key`` (:meth:`Column.one`) and selects the value and its version.
    ``versioned`` is false only for a table of the old shape that this store reads without
    having migrated it (a process that runs no worker of the flow).
    """

    table: sa.Table
    columns: StateColumns
    key: Column
    value: Column
    versioned: bool
    upsert: sa.Executable
    delete: sa.Executable
    load: sa.Executable
    get: sa.Executable

    def scan(
        self, prefix: bytes, after: bytes | None, limit: int, where: str | None = None
    ) -> sa.Select[Any]:
        """Up to ``limit`` rows (key, value, version columns) whose key starts with
        ``prefix``, sorts after ``after`` and, with ``where`` (JSON text; ``jsonb`` values
        only), whose value contains it (``@>``), in key order."""
        t = self.table
        conditions = [*key_range(t.c.key, self.key, prefix, after)]
        if where is not None:
            conditions.append(t.c.value.op("@>")(sa.cast(sa.literal(where, sa.Text), pg.JSONB)))
        selected = _selected(t, self.value, self.versioned)
        return sa.select(*selected).where(*conditions).order_by(t.c.key).limit(limit)


def state_table(
    name: str, schema: str | None, columns: StateColumns, versioned: bool
) -> StateTable:
    """The state table ``name`` keeping ``columns`` and its statements (built, not
    created; in a metadata of its own, so that it can be built again with other columns)."""
    key, value = column_of(columns.key), column_of(columns.value)
    parts = [
        sa.Column("key", key.sql_type(), primary_key=True),
        sa.Column("value", value.sql_type(), nullable=False),
        sa.Column(
            "updated_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
    ]
    if versioned:
        parts += [
            sa.Column("source_partition", sa.Integer, nullable=True),
            sa.Column("source_offset", sa.BigInteger, nullable=True),
        ]
    table = sa.Table(name, sa.MetaData(schema=schema), *parts)
    written = ["key", "value"]
    rows = [key.each("keys"), value.each("values")]
    if versioned:
        written += ["source_partition", "source_offset"]
        rows += [
            sa.func.unnest(array_of("partitions", sa.Integer)),
            sa.func.unnest(array_of("offsets", sa.BigInteger)),
        ]
    # Set-returning functions in a select list run in lockstep (PostgreSQL 10+): row i has
    # item i of every parameter.
    upsert = pg.insert(table).from_select(written, sa.select(*rows))
    keys = sa.func.array(sa.select(key.each("keys")).scalar_subquery())
    return StateTable(
        table=table,
        columns=columns,
        key=key,
        value=value,
        versioned=versioned,
        upsert=upsert.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                **{c: upsert.excluded[c] for c in written[1:]},
                "updated_at": sa.func.now(),
            },
        ),
        delete=sa.delete(table).where(table.c.key == sa.any_(keys)),
        load=sa.select(table.c.key, value.read(table.c.value)).where(table.c.key == sa.any_(keys)),
        get=sa.select(*_selected(table, value, versioned)).where(
            table.c.key == sa.bindparam("key")
        ),
    )


def _selected(table: sa.Table, value: Column, versioned: bool) -> list[Any]:
    """What queries read of a row: key, value (as :meth:`Column.read` says), version."""
    c = table.c
    version: list[Any] = [c.source_partition, c.source_offset] if versioned else [sa.null()] * 2
    return [c.key, value.read(c.value), *version, c.updated_at]


def version_of(partition: int | None, offset: int | None, updated_at: datetime.datetime) -> str:
    """The version of a row: its source record's, or ``updated_at``'s for a row stored
    before versions were kept (``u`` and microseconds since the epoch)."""
    if partition is not None and offset is not None:
        return state_version(partition, offset)
    stamp = updated_at - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return f"u{stamp // datetime.timedelta(microseconds=1)}"


# --- key ranges -----------------------------------------------------------------------------


def key_range(column: Any, kind: Column, prefix: bytes, after: bytes | None) -> list[Any]:
    """Conditions for keys that start with ``prefix`` and sort after ``after``, bytewise.

    ``bytea`` compares bytewise. ``text COLLATE "C"`` compares the UTF-8 bytes, so a bound
    that is UTF-8 text is compared as text (the primary key's index serves it); a bound
    that is not (a cursor or prefix cut inside a character) is compared on the key's bytes,
    which no index serves but which is exact.
    """
    conditions: list[Any] = []
    bounds: list[tuple[str, bytes]] = [("ge", prefix)]
    end = _prefix_end(prefix)
    if end is not None:
        bounds.append(("lt", end))
    if after is not None:
        bounds.append(("gt", after))
    for op, bound in bounds:
        target: Any = column
        value: Any = bound
        if kind.kind == "text":
            try:
                value = kind.one(bound)
            except ValueError:
                target = sa.func.convert_to(column, "UTF8", type_=sa.LargeBinary)
        param = sa.literal(value, type_=target.type)
        conditions.append(
            target >= param if op == "ge" else target < param if op == "lt" else target > param
        )
    return conditions


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
