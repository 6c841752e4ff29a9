"""The state tables of one store: their shapes, ensured or read off the catalog, and the
reads and writes on them (``state_tables.py`` builds the statements).

A table's column strategies follow the table as it exists, not the flow's formats: a
worker ensures its table first (:meth:`States.ensure`: created, or migrated to the
formats' columns where its rows allow, ``migrations.migrate_state_table``), and a process
that only queries reads the shape off the catalog on first use. A query that meets a
table whose shape changed since (a worker of a newer version migrated it) reads the
catalog again and retries once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from flows.errors import StateError
from flows.ports import BYTES_COLUMNS, StateColumns, StateCommit, StoredState
from runtimes.postgres.errors import translated
from runtimes.postgres.migrations import found_state_table, migrate_state_table
from runtimes.postgres.state_tables import StateTable, state_table, version_of
from runtimes.postgres.statements import array_text, create_tables, take_ddl_lock

__all__ = ["States"]

T = TypeVar("T")

# A statement built for other column types or without columns the table has now: the table
# was migrated by another process (undefined function: `text = bytea`; datatype mismatch;
# undefined column).
_SHAPE_CHANGED = {"42883", "42804", "42703"}


class States:
    """The state tables of one store; thread-safe (``lock`` guards the cache)."""

    def __init__(self, engine: sa.Engine, schema: str | None, lock: threading.Lock) -> None:
        self._engine = engine
        self._schema = schema
        self._lock = lock
        self._tables: dict[str, StateTable] = {}

    def forget(self, names: Iterable[str]) -> None:
        """Forgets the statements of ``names`` (the caller holds the lock)."""
        for name in names:
            self._tables.pop(name, None)

    def ensure(self, name: str, columns: StateColumns) -> StateColumns:
        """Creates the state table ``name`` keeping ``columns`` when missing, or brings one
        of an older shape to it where its rows allow, in one transaction under the DDL
        lock; returns the columns the table keeps."""
        doing = f"creating or migrating state table {name!r}"
        with translated(doing), self._engine.begin() as conn:
            take_ddl_lock(conn)  # before reading the catalog: one migrator at a time
            found, _ = migrate_state_table(conn, name, self._schema, columns)
            if found is None:
                built = state_table(name, self._schema, columns, versioned=True)
                create_tables(conn, [built.table], self._schema)
            else:
                built = state_table(name, self._schema, found.columns, found.versioned)
        with self._lock:
            self._tables[name] = built
        return built.columns

    def table(self, name: str) -> StateTable:
        """The state table ``name`` as it exists (read off the catalog on first use). A
        table that does not exist is not remembered: its statements are built for bytes,
        and PostgreSQL's answer to them says it is missing."""
        found = self._tables.get(name)
        if found is not None:
            return found
        with (
            translated(f"reading the shape of state table {name!r}"),
            self._engine.connect() as conn,
        ):
            shape = found_state_table(conn, name, self._schema)
        if shape is None:
            return state_table(name, self._schema, BYTES_COLUMNS, versioned=True)
        built = state_table(name, self._schema, shape.columns, shape.versioned)
        with self._lock:
            return self._tables.setdefault(name, built)

    def _query(self, name: str, read: Callable[[StateTable], T]) -> T:
        """``read(table)``, once more with the table read off the catalog again when its
        shape changed under the statements (see the module docstring)."""
        try:
            return read(self.table(name))
        except StateError as error:
            sqlstate = getattr(getattr(error.__cause__, "orig", None), "sqlstate", None)
            if sqlstate not in _SHAPE_CHANGED:
                raise
        with self._lock:
            self._tables.pop(name, None)
        return read(self.table(name))

    # --- the processing path

    def load(self, name: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored states of ``keys``; keys the table cannot hold are not stored."""
        t = self.table(name)
        wanted = t.key.dump_held(keys)
        if wanted is None:
            return {}
        with (
            translated(f"loading {len(keys)} states of {name!r}"),
            self._engine.connect() as conn,
        ):
            found = conn.execute(t.load, {"keys": wanted}).all()
        key_bytes, value_bytes = t.key.to_bytes, t.value.to_bytes
        return {key_bytes(key): value_bytes(value) for key, value in found}

    def write(self, conn: sa.Connection, commit: StateCommit) -> None:
        """Upserts the states of ``commit`` with their versions and deletes its ``None``
        states, in ``conn``'s transaction: one statement each, keys in order."""
        assert commit.table is not None
        t = self.table(commit.table)
        upserted = sorted((k, v) for k, v in commit.states.items() if v is not None)
        deleted = sorted(k for k, v in commit.states.items() if v is None)
        try:
            if upserted:
                keys = [k for k, _ in upserted]
                params: dict[str, Any] = {
                    "keys": t.key.dump(keys),
                    "values": t.value.dump([v for _, v in upserted]),
                }
                if t.versioned:
                    params["partitions"], params["offsets"] = _versions(keys, commit.versions)
                conn.execute(t.upsert, params)
            held = t.key.dump_held(deleted)
            if held is not None:
                conn.execute(t.delete, {"keys": held})
        except ValueError as error:  # a key or value that the column cannot hold
            raise StateError(
                f"state table {commit.table!r} keeps {t.key.sql_name} keys and "
                f"{t.value.sql_name} values: {error}"
            ) from error

    # --- queries

    def state(self, name: str, key: bytes) -> StoredState | None:
        """One state and its version; None when there is none."""

        def read(t: StateTable) -> StoredState | None:
            try:
                param = t.key.one(key)
            except ValueError:
                return None  # not a key the table can hold
            with translated(f"reading a state of {name!r}"), self._engine.connect() as conn:
                row = conn.execute(t.get, {"key": param}).one_or_none()
            return None if row is None else _stored(t, row)

        return self._query(name, read)

    def states(
        self, name: str, prefix: bytes, after: bytes | None, limit: int, where: str | None
    ) -> list[StoredState]:
        """Up to ``limit`` states whose key starts with ``prefix``, sorts after ``after``
        and (``where``) whose value contains that JSON, in key order; ``ValueError`` for a
        ``where`` on a table whose values are not ``jsonb``."""
        if limit <= 0:
            return []

        def read(t: StateTable) -> list[StoredState]:
            if where is not None and t.columns.value != "json":
                raise ValueError(
                    f"state table {name!r} keeps its values as {t.value.sql_name}, not "
                    "jsonb, so they cannot be searched (a worker migrates the table of a "
                    "json state format when its rows allow: see its log)"
                )
            with translated(f"scanning {name!r}"), self._engine.connect() as conn:
                rows = conn.execute(t.scan(prefix, after, limit, where)).all()
            return [_stored(t, row) for row in rows]

        return self._query(name, read)


def _versions(keys: Sequence[bytes], versions: Mapping[bytes, tuple[int, int]]) -> tuple[str, str]:
    """The partitions and offsets of ``keys`` as two array literals (NULL for a key without
    a version)."""
    try:
        found = [versions[k] for k in keys]
    except KeyError:  # some key has no version: the slower way, with NULLs
        some = [versions.get(k) for k in keys]
        return (
            array_text(None if v is None else v[0] for v in some),
            array_text(None if v is None else v[1] for v in some),
        )
    return (
        "{" + ",".join([str(p) for p, _ in found]) + "}",
        "{" + ",".join([str(o) for _, o in found]) + "}",
    )


def _stored(t: StateTable, row: Any) -> StoredState:
    key, value, partition, offset, updated_at = row
    return StoredState(
        t.key.to_bytes(key), t.value.to_bytes(value), version_of(partition, offset, updated_at)
    )
