"""History tables (:mod:`flows.history`) of one store: created, converted, and read.

:class:`Histories` keeps each table's statements (``history_tables.py``: the shape and the
statements, with the table's layout), creates or converts a table when a worker ensures it,
hands a commit's history to ``history_commit.py`` (the write, its lock, ``NOTIFY`` and
retention, in the commit's transaction), and pages through what is kept: a key's changes
newest first (``GET /state/<flow>/<key>/history``), or every change after an id (the
streams of changes, ``changes.py``).

Values go through the state table's own column strategies (``columns.py``), so a history
keeps what its states keep, in the same form. A worker converts a history table whose
columns no longer fit its flow's states (``migrations.convert_history_table``); a process
that only reads it follows the catalog.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from flows.history import HistoryCommit, HistoryEntry, StateChange
from flows.ports import StateColumns
from runtimes.postgres.errors import translated
from runtimes.postgres.history_commit import write_history
from runtimes.postgres.history_tables import CHANNEL, NO_CURSOR, HistoryTable, history_table
from runtimes.postgres.migrations import convert_history_table, found_state_table
from runtimes.postgres.state_tables import key_range
from runtimes.postgres.statements import create_tables, take_ddl_lock

# CHANNEL, HistoryTable and history_table live in history_tables.py; named here too, where
# they were first (``changes.py`` and others import CHANNEL from this module).
__all__ = ["CHANNEL", "Histories", "HistoryTable", "history_table"]


class Histories:
    """The history tables of one store; thread-safe (``lock`` guards the cache)."""

    def __init__(self, engine: sa.Engine, schema: str | None, lock: threading.Lock) -> None:
        self._engine = engine
        self._schema = schema
        self._lock = lock
        self._tables: dict[str, HistoryTable] = {}

    def forget(self, names: Sequence[str]) -> None:
        """Forgets the statements of ``names`` (the caller holds the lock)."""
        for name in names:
            self._tables.pop(name, None)

    def ensure(self, name: str, columns: StateColumns) -> None:
        """Creates the history table ``name`` keeping ``columns`` when missing, or converts
        one that keeps others (``migrations.convert_history_table``), under the DDL lock."""
        with translated(f"creating history table {name!r}"), self._engine.begin() as conn:
            take_ddl_lock(conn)
            found = found_state_table(conn, name, self._schema)
            if found is None:
                built = history_table(name, self._schema, columns)
                create_tables(conn, [built.table], self._schema)
            else:
                kept = convert_history_table(conn, name, self._schema, found.columns, columns)
                built = history_table(name, self._schema, kept)
        with self._lock:
            self._tables[name] = built

    def table(self, name: str) -> HistoryTable:
        """The history table ``name`` as it exists (read off the catalog on first use; a
        missing one is built for bytes and not remembered: PostgreSQL's answer says it is
        missing)."""
        found = self._tables.get(name)
        if found is not None:
            return found
        with (
            translated(f"reading the shape of history table {name!r}"),
            self._engine.connect() as conn,
        ):
            shape = found_state_table(conn, name, self._schema)
        if shape is None:
            return history_table(name, self._schema, StateColumns())
        built = history_table(name, self._schema, shape.columns)
        with self._lock:
            return self._tables.setdefault(name, built)

    # --- the commit

    def write(self, conn: sa.Connection, history: HistoryCommit) -> None:
        """Applies ``history`` in ``conn``'s transaction (``history_commit.py``)."""
        write_history(conn, self.table(history.table), history)

    # --- queries

    def page(self, name: str, key: bytes, before_seq: int | None, limit: int) -> list[HistoryEntry]:
        """Up to ``limit`` changes of ``key`` with ``seq < before_seq``, newest first."""
        t = self.table(name)
        try:
            param = t.key.one(key)
        except ValueError:
            return []  # not a key the table can hold
        if limit <= 0:
            return []
        before = NO_CURSOR if before_seq is None else before_seq
        with translated(f"reading the history of {name!r}"), self._engine.connect() as conn:
            rows = conn.execute(t.page, {"key": param, "before": before, "limit": limit}).all()
        return [_entry(t, row) for row in rows]

    def after(
        self,
        name: str,
        after_id: int,
        limit: int,
        key: bytes | None,
        prefix: bytes,
        up_to: int | None,
    ) -> list[HistoryEntry]:
        """Up to ``limit`` changes with ``after_id < id <= up_to``, of ``key`` or of the
        keys starting with ``prefix``, in id order."""
        t = self.table(name)
        c = t.table.c
        conditions: list[Any] = [c.id > after_id]
        if up_to is not None:
            conditions.append(c.id <= up_to)
        if key is not None:
            try:
                conditions.append(c.key == sa.literal(t.key.one(key), c.key.type))
            except ValueError:
                return []
        elif prefix:
            conditions += key_range(c.key, t.key, prefix, None)
        if limit <= 0:
            return []
        query = sa.select(*t.selected()).where(*conditions).order_by(c.id).limit(limit)
        with translated(f"reading the history of {name!r}"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_entry(t, row) for row in rows]

    def last_id(self, name: str) -> int:
        """The largest id of the rows kept (0: none)."""
        t = self.table(name)
        with translated(f"reading the history of {name!r}"), self._engine.connect() as conn:
            return int(conn.execute(t.last_id).scalar_one())


def _entry(t: HistoryTable, row: Any) -> HistoryEntry:
    id_, seq, key, previous, value, topic, partition, offset, timestamp, at = row
    to_bytes = t.value.to_bytes
    return HistoryEntry(
        int(id_),
        int(seq),
        StateChange(
            t.key.to_bytes(key),
            None if previous is None else to_bytes(previous),
            None if value is None else to_bytes(value),
            topic,
            int(partition),
            int(offset),
            None if timestamp is None else int(timestamp),
        ),
        at,
    )
