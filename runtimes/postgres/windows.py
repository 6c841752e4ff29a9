"""Window tables: the rows of windowed (event-time) steps, their statements and queries.

One table per windowed step (its name given by the flow)::

    <window table>  partition INTEGER, key BYTEA, start BIGINT, "end" BIGINT,
                    first_ts BIGINT, last_ts BIGINT, pending BOOLEAN, due BIGINT,
                    value BYTEA, updated_at TIMESTAMPTZ, wall BOOLEAN (default false)
                    PRIMARY KEY (partition, key, start),
                    INDEX (partition, wall, due) WHERE pending,
                    INDEX (partition, wall, due) WHERE NOT pending

``wall`` is the clock of ``due`` (:class:`flows.ports.WindowRow`): false, stream time; true,
wall-clock time. It comes last so that a table created before it existed, once migrated
(``ADD COLUMN``, ``migrations.migrate_window_table``), has the shape of a new one.

The primary key serves loading a batch's keys of one partition. Two partial ``(partition,
wall, due)`` indexes serve the rows that fell due, one range per clock (``wall = false AND
due <= stream time``, ``wall = true AND due <= wall time``): the pending rows' index those
to load and :meth:`next_due` of either clock (a ``min`` read off it); the other index the
silent rows to expire (a bounded ``DELETE``, :meth:`Windows.expire`). Each row is in one of
them, so a write maintains one, and ``next_due`` never walks past millions of states
waiting for their TTL to reach the first timer.
:meth:`Windows.of_key` (state queries) has no index of its own to use and reads the table:
it is not on the processing path.

Statements are built once per table (:class:`WindowTable`), like the state tables' in
``statements.py``: changed rows travel as arrays (keys and values :func:`pack` ed) expanded
with ``unnest``, so a commit sends one upsert and one delete whatever its size.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows.ports import StateCommit, WindowRow
from runtimes.postgres.errors import translated
from runtimes.postgres.migrations import migrate_window_table
from runtimes.postgres.statements import (
    array_of,
    array_text,
    create_tables,
    pack,
    packed,
    take_ddl_lock,
    unhex,
)


@dataclasses.dataclass(frozen=True, slots=True)
class WindowTable:
    """A window table and the statements on it, built once.

    ``upsert`` takes the array literals (:func:`array_text`) ``partitions``, ``starts``,
    ``ends``, ``firsts``, ``lasts``, ``pendings``, ``dues``, ``walls`` and the packed
    ``keys`` and ``values``; ``delete`` the literals ``partitions``, ``starts`` and packed
    ``keys``; ``load`` is keyed
    by which thresholds are given, ``(due_by is not None, wall_due_by is not None)``, and
    each takes ``partition``, packed ``keys`` and the thresholds it has (a clock without a
    threshold is left out of the statement: it matches nothing); ``expire`` ``partition``,
    ``due_by``, ``wall_due_by`` (NULL matches nothing) and ``limit``; ``next_due``
    ``partition`` and ``wall``; ``of_key`` ``key``.
    """

    table: sa.Table
    upsert: sa.Executable
    delete: sa.Executable
    load: Mapping[tuple[bool, bool], sa.Executable]
    expire: sa.Executable
    next_due: sa.Executable
    of_key: sa.Executable


def window_table(name: str, metadata: sa.MetaData) -> WindowTable:
    """The window table ``name`` in ``metadata`` and its statements (built, not created)."""
    table = sa.Table(
        name,
        metadata,
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("key", sa.LargeBinary, primary_key=True),
        sa.Column("start", sa.BigInteger, primary_key=True),
        sa.Column("end", sa.BigInteger, nullable=False),
        sa.Column("first_ts", sa.BigInteger, nullable=False),
        sa.Column("last_ts", sa.BigInteger, nullable=False),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("due", sa.BigInteger, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column(
            "updated_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("wall", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    sa.Index(
        due_index(name),
        table.c.partition,
        table.c.wall,
        table.c.due,
        postgresql_where=table.c.pending,
    )
    sa.Index(
        silent_index(name),
        table.c.partition,
        table.c.wall,
        table.c.due,
        postgresql_where=sa.not_(table.c.pending),
    )
    c = table.c
    changed = (
        sa.func.unnest(
            array_of("partitions", sa.Integer),
            packed("keys"),
            array_of("starts", sa.BigInteger),
            array_of("ends", sa.BigInteger),
            array_of("firsts", sa.BigInteger),
            array_of("lasts", sa.BigInteger),
            array_of("pendings", sa.Boolean),
            array_of("dues", sa.BigInteger),
            array_of("walls", sa.Boolean),
            packed("values"),
        )
        .table_valued("p", "k", "s", "e", "f", "l", "pe", "d", "wa", "v")
        .render_derived(name="w")
    )
    w = changed.c
    columns = ["partition", "key", "start", "end", "first_ts", "last_ts", "pending", "due", "wall"]
    upsert = pg.insert(table).from_select(
        [*columns, "value"],
        sa.select(w.p, unhex(w.k), w.s, w.e, w.f, w.l, w.pe, w.d, w.wa, unhex(w.v)),
    )
    updated = {name: upsert.excluded[name] for name in [*columns[3:], "value"]}
    removed = (
        sa.func.unnest(
            array_of("partitions", sa.Integer),
            packed("keys"),
            array_of("starts", sa.BigInteger),
        )
        .table_valued("p", "k", "s")
        .render_derived(name="r")
    )
    listed = sa.func.unnest(packed("keys")).table_valued("key").render_derived(name="k")
    keys = sa.func.array(sa.select(unhex(listed.c.key)).scalar_subquery())
    partition = c.partition == sa.bindparam("partition", type_=sa.Integer)
    rows = sa.select(
        c.partition, c.key, c.start, c.end, c.first_ts, c.last_ts, c.pending, c.due, c.value,
        c.wall,
    )  # fmt: skip
    # Each clock's condition is a range of the (partition, wall, due) index; OR-ed with the
    # keys (a range of the primary key each), the plan is a BitmapOr of index scans.
    stream_due = sa.and_(c.wall == sa.false(), c.due <= sa.bindparam("due_by", type_=sa.BigInteger))
    wall_due = sa.and_(
        c.wall == sa.true(), c.due <= sa.bindparam("wall_due_by", type_=sa.BigInteger)
    )

    def loading(*fell_due: Any) -> sa.Executable:
        # Only pending rows are loaded for being due: the others fall due silently (and are
        # expired). ``pending`` is not in the index: it filters each due range's rows.
        due = [sa.and_(c.pending == sa.true(), clock) for clock in fell_due]
        found = sa.or_(c.key == sa.any_(keys), *due)
        return rows.where(partition, found).order_by(c.key, c.start)

    # Expiry: per clock, the first ``limit`` rows by ``due`` of the range of the due index
    # (``pending`` filtered, not indexed), merged, the first ``limit`` of both deleted by
    # primary key. Each branch stops after ``limit`` matches, so the statement reads
    # ``limit`` rows per clock (and the pending rows it skips on the way, few: see above)
    # however many rows fell due. A NULL threshold compares to nothing: its branch returns
    # no row.
    limit = sa.bindparam("limit", type_=sa.Integer)

    def expirable(wall: bool, threshold: str) -> sa.Select[Any]:
        return (
            sa.select(c.partition, c.key, c.start, c.due)
            .where(
                partition,
                c.wall == (sa.true() if wall else sa.false()),
                c.due <= sa.bindparam(threshold, type_=sa.BigInteger),
                c.pending == sa.false(),
            )
            .order_by(c.due)
            .limit(limit)
        )

    both = sa.union_all(expirable(False, "due_by"), expirable(True, "wall_due_by")).subquery("x")
    doomed = sa.select(both.c.partition, both.c.key, both.c.start).order_by(both.c.due).limit(limit)
    expire = sa.delete(table).where(sa.tuple_(c.partition, c.key, c.start).in_(doomed))

    load = {
        (False, False): loading(),
        (True, False): loading(stream_due),
        (False, True): loading(wall_due),
        (True, True): loading(stream_due, wall_due),
    }
    return WindowTable(
        table=table,
        upsert=upsert.on_conflict_do_update(
            index_elements=[c.partition, c.key, c.start],
            set_={**updated, "updated_at": sa.func.now()},
        ),
        delete=sa.delete(table).where(
            c.partition == removed.c.p, c.key == unhex(removed.c.k), c.start == removed.c.s
        ),
        load=load,
        expire=expire,
        next_due=sa.select(sa.func.min(c.due)).where(
            partition,
            c.wall == sa.bindparam("wall", type_=sa.Boolean),
            c.pending == sa.true(),
        ),
        of_key=rows.where(c.key == sa.bindparam("key", type_=sa.LargeBinary)).order_by(
            c.partition, c.start
        ),
    )


def due_index(name: str) -> str:
    """The name of the ``(partition, wall, due)`` index of the pending rows of ``name``."""
    return f"{name}_pending_due"


def silent_index(name: str) -> str:
    """The name of the ``(partition, wall, due)`` index of the silent rows of ``name``."""
    return f"{name}_silent_due"


def _row(found: Any) -> WindowRow:
    p, key, start, end, first, last, pending, due, value, wall = found
    return WindowRow(
        int(p), bytes(key), int(start), int(end), int(first), int(last), bool(pending), int(due),
        bytes(value), bool(wall),
    )  # fmt: skip


class Windows:
    """The window tables of one store: built once per name, created on demand, queried and
    written (inside the caller's commit transaction) with one statement each."""

    def __init__(self, engine: sa.Engine, metadata: sa.MetaData, lock: threading.Lock) -> None:
        self._engine = engine
        self._metadata = metadata
        self._lock = lock
        self._tables: dict[str, WindowTable] = {}

    def get(self, name: str) -> WindowTable:
        """The window table ``name`` and its statements (built, not created, on first use)."""
        found = self._tables.get(name)
        if found is not None:
            return found
        with self._lock:
            found = self._tables.get(name)
            if found is None:
                found = self._tables[name] = window_table(name, self._metadata)
            return found

    def forget(self, names: Iterable[str]) -> None:
        """Forgets the statements of ``names`` (the caller holds the lock and drops them)."""
        for name in names:
            self._tables.pop(name, None)

    def ensure(self, name: str, schema: str | None) -> None:
        """Creates the window table ``name`` and its due index when missing, after bringing
        one of an older shape to the current one (``migrations.migrate_window_table``), all
        in one transaction under the DDL lock."""
        table = self.get(name).table
        doing = f"creating or migrating window table {name!r}"
        with translated(doing), self._engine.begin() as conn:
            take_ddl_lock(conn)  # before reading the catalog: one migrator at a time
            migrate_window_table(conn, name, schema)
            create_tables(conn, [table], schema)

    def write(self, conn: sa.Connection, commit: StateCommit) -> None:
        """Upserts ``commit.windows`` (the last of one ``(partition, key, start)`` wins), then
        deletes ``commit.windows_removed``, in ``conn``'s transaction: one statement each."""
        if commit.window_table is None or not (commit.windows or commit.windows_removed):
            return
        statements = self.get(commit.window_table)
        latest = {(w.partition, w.key, w.start): w for w in commit.windows}
        if latest:
            rows = [latest[k] for k in sorted(latest)]  # a fixed order of row locks
            conn.execute(
                statements.upsert,
                {
                    "partitions": array_text(w.partition for w in rows),
                    "keys": pack(w.key for w in rows),
                    "starts": array_text(w.start for w in rows),
                    "ends": array_text(w.end for w in rows),
                    "firsts": array_text(w.first for w in rows),
                    "lasts": array_text(w.last for w in rows),
                    "pendings": array_text(w.pending for w in rows),
                    "dues": array_text(w.due for w in rows),
                    "walls": array_text(w.wall for w in rows),
                    "values": pack(w.value for w in rows),
                },
            )
        if commit.windows_removed:
            doomed = sorted(set(commit.windows_removed))
            conn.execute(
                statements.delete,
                {
                    "partitions": array_text(p for p, _, _ in doomed),
                    "keys": pack(k for _, k, _ in doomed),
                    "starts": array_text(s for _, _, s in doomed),
                },
            )

    def expire(self, conn: sa.Connection, commit: StateCommit) -> None:
        """Deletes, per partition of ``commit.expire``, at most ``commit.expire_limit`` rows
        that are not pending and fell due, smallest ``due`` first, in ``conn``'s
        transaction: one bounded ``DELETE`` per partition, pipelined by psycopg as one
        executemany (partitions in order, so committers lock rows in one order)."""
        if commit.window_table is None or not commit.expire or commit.expire_limit == 0:
            return
        statement = self.get(commit.window_table).expire
        limit = commit.expire_limit
        params = [
            {"partition": p, "due_by": due_by, "wall_due_by": wall_due_by, "limit": limit}
            for p, (due_by, wall_due_by) in sorted(commit.expire.items())
            if due_by is not None or wall_due_by is not None
        ]
        if params:
            conn.execute(statement, params)

    def load(
        self,
        name: str,
        partition: int,
        keys: Sequence[bytes],
        due_by: int | None,
        wall_due_by: int | None,
    ) -> list[WindowRow]:
        """The rows of ``partition`` with a key in ``keys``, or pending stream-time rows
        with ``due <= due_by``, or pending wall-clock rows with ``due <= wall_due_by``
        (None: none of that clock), ordered by ``(key, start)``: one ``SELECT``."""
        if not keys and due_by is None and wall_due_by is None:
            return []
        statement = self.get(name).load[(due_by is not None, wall_due_by is not None)]
        params: dict[str, Any] = {"partition": partition, "keys": pack(keys)}
        if due_by is not None:
            params["due_by"] = due_by
        if wall_due_by is not None:
            params["wall_due_by"] = wall_due_by
        with translated(f"loading windows of {name!r}"), self._engine.connect() as conn:
            return [_row(found) for found in conn.execute(statement, params)]

    def next_due(self, name: str, partition: int, wall: bool) -> int | None:
        """The smallest ``due`` of ``partition``'s pending rows of one clock (read off the
        due index, the rows that are not pending skipped)."""
        statement = self.get(name).next_due
        params = {"partition": partition, "wall": wall}
        with translated(f"reading the next due of {name!r}"), self._engine.connect() as conn:
            due = conn.execute(statement, params).scalar_one_or_none()
        return None if due is None else int(due)

    def of_key(self, name: str, key: bytes) -> list[WindowRow]:
        """Every row of ``key``, ordered by ``(partition, start)``."""
        statement = self.get(name).of_key
        with translated(f"reading windows of {name!r}"), self._engine.connect() as conn:
            return [_row(found) for found in conn.execute(statement, {"key": key})]
