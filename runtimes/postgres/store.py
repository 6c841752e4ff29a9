"""The PostgreSQL state store: per-key state, offset watermarks and pending outputs.

:class:`PostgresStateStore` implements :class:`flows.ports.StateStore` with SQLAlchemy Core
over psycopg 3. The in-memory :class:`flows.testing.InMemoryStateStore` follows the same
contract; ``tests/contract/test_state_store.py`` runs one suite against both.

Tables (in ``schema`` when one is given; everything is created when missing; every column
is described in ``docs/TABLES.md``)::

    <state table>   key BYTEA or TEXT PRIMARY KEY, value BYTEA or JSONB, updated_at,
                    source_partition, source_offset (the version), see ``state_tables.py``
    flows_offsets   (group_id, topic, partition) PRIMARY KEY, next_offset BIGINT,
                    seq BIGINT, stream_time BIGINT (windowed steps' ``PartitionTime``)
    flows_pending   (group_id, topic, partition, first_offset, seq) PRIMARY KEY,
                    next_offset BIGINT, outputs BYTEA (an ``OutputColumns`` protobuf)
    <materialised>  from a ``TableShape``: a SQLAlchemy ``Table`` as declared, or the
                    fields of a dataclass mapped to columns (see ``typemap.column_type``)
    <window table>  windowed steps' rows, see ``windows.py``
    <table>_history every change of a flow with ``history=True``, see ``history_tables.py``

Bookkeeping tables of an older shape are migrated on first use, state and window tables
when a worker ensures them (``migrations.py``).

``flows_offsets.next_offset`` is the *watermark*: the first input offset of the partition
whose effect is not yet in PostgreSQL. Every commit moves it with a conditional ``UPDATE``
(``... AND next_offset = :read``) in the same transaction as the state it protects, so a
worker that lost its partition (a zombie) cannot write: its ``read`` is stale, the update
matches no row, and the whole transaction rolls back with :class:`WatermarkMovedError`.

The commit path, the order of its steps and its performance, is in ``commit.py``; this
module creates the tables and reads them. Driver errors are translated at the edge
(``errors.py``); the originals are kept as ``__cause__``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows.errors import ConfigError
from flows.history import HistoryEntry
from flows.ports import (
    BYTES_COLUMNS,
    PartitionTime,
    PendingBatch,
    StateColumns,
    StateCommit,
    StoredState,
    WindowRow,
)
from flows.tables import TableShape
from runtimes.postgres.codec import decode_outputs
from runtimes.postgres.commit import CommitTargets, apply_commit
from runtimes.postgres.engine import create_engine
from runtimes.postgres.errors import translated
from runtimes.postgres.history import Histories
from runtimes.postgres.migrations import migrate_bookkeeping
from runtimes.postgres.rows import RowUpserts
from runtimes.postgres.statements import (
    OFFSETS_TABLE,
    PENDING_TABLE,
    bookkeeping,
    create_tables,
)
from runtimes.postgres.states import States
from runtimes.postgres.typemap import materialised_table
from runtimes.postgres.windows import Windows


class PostgresStateStore:
    """Per-key state, watermarks and pending outputs in PostgreSQL (thread-safe).

    Tables are created by :meth:`ensure_table` / :meth:`ensure_rows_table`, and the two
    bookkeeping tables (``flows_offsets``, ``flows_pending``) on first use. Every other
    method expects its table to exist. Call :meth:`close` to release the connections.
    """

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 2) -> None:
        if pool_size < 1:
            raise ConfigError(f"pool_size must be at least 1, got {pool_size}")
        self.schema = schema
        self._engine = create_engine(url, pool_size)
        self._metadata = sa.MetaData(schema=schema)
        self._lock = threading.Lock()
        self._infrastructure_ready = False
        self._states = States(self._engine, schema, self._lock)
        self._row_tables: dict[str, sa.Table] = {}
        self._rows = RowUpserts()
        self._books = bookkeeping(self._metadata)
        self._windows = Windows(self._engine, self._metadata, self._lock)
        self._histories = Histories(self._engine, schema, self._lock)

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (its pool is this store's)."""
        return self._engine

    def __repr__(self) -> str:
        url = self._engine.url.render_as_string(hide_password=True)
        return f"PostgresStateStore({url!r}, schema={self.schema!r})"

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Closes every pooled connection."""
        self._engine.dispose()

    def ping(self) -> None:
        """``SELECT 1``; raises :class:`DatabaseUnavailableError` if PostgreSQL does not answer."""
        with translated("pinging PostgreSQL"), self._engine.connect() as conn:
            conn.execute(sa.select(sa.literal(1)))

    # --- tables ----------------------------------------------------------------------------

    def _create(self, tables: Sequence[sa.Table], doing: str) -> None:
        """Creates the schema and ``tables`` (with their indexes) when missing."""
        with translated(doing), self._engine.begin() as conn:
            create_tables(conn, tables, self.schema)

    def _ensure_infrastructure(self) -> None:
        if self._infrastructure_ready:
            return
        with self._lock:
            if not self._infrastructure_ready:
                tables = [self._books.offsets, self._books.pending]
                doing = f"creating or migrating {OFFSETS_TABLE} and {PENDING_TABLE}"
                with translated(doing), self._engine.begin() as conn:
                    create_tables(conn, tables, self.schema)  # takes the DDL lock
                    migrate_bookkeeping(conn, self.schema)
                self._infrastructure_ready = True

    def _rows_table(self, shape: TableShape) -> sa.Table:
        """The materialised table of ``shape`` in our metadata (built, not created)."""
        found = self._row_tables.get(shape.name)
        if found is not None:
            return found
        with self._lock:
            found = self._row_tables.get(shape.name)
            if found is not None:
                return found
            found = materialised_table(shape, self._metadata, self.schema)
            self._row_tables[shape.name] = found
            return found

    def ensure_table(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        """Creates the state table ``table`` keeping ``columns`` (and the bookkeeping
        tables) when missing, or migrates one of an older shape (``migrations.py``)."""
        self._ensure_infrastructure()
        self._states.ensure(table, columns)

    def state_columns(self, table: str) -> StateColumns:
        """How the state table ``table`` keeps keys and values, as it exists."""
        return self._states.table(table).columns

    def ensure_rows_table(self, shape: TableShape) -> None:
        """Creates the materialised table of ``shape`` (and the bookkeeping tables)."""
        self._ensure_infrastructure()
        self._create([self._rows_table(shape)], f"creating table {shape.name!r}")

    def ensure_history_table(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        """Creates the history table ``table`` keeping ``columns`` (and the bookkeeping
        tables) when missing (``history.py``)."""
        self._ensure_infrastructure()
        self._histories.ensure(table, columns)

    def ensure_window_table(self, table: str) -> None:
        """Creates the window table ``table`` (and the bookkeeping tables) when missing."""
        self._ensure_infrastructure()
        self._windows.ensure(table, self.schema)

    def drop_tables(self, names: Iterable[str]) -> None:
        """Drops the state, materialised or window tables ``names`` (those that exist), and
        forgets every table object and statement this store built for them."""
        names = list(names)
        with self._lock:
            self._windows.forget(names)
            self._states.forget(names)
            self._histories.forget(names)
            for name in names:
                self._row_tables.pop(name, None)
                key = name if self.schema is None else f"{self.schema}.{name}"
                if key in self._metadata.tables:
                    self._metadata.remove(self._metadata.tables[key])
            # Every statement built on a dropped table goes with it: a table created again
            # under the name may have other columns or types.
            self._rows.forget(names)
        with translated(f"dropping tables {names}"), self._engine.begin() as conn:
            for name in names:
                doomed = sa.Table(name, sa.MetaData(schema=self.schema))
                conn.execute(sa.schema.DropTable(doomed, if_exists=True))

    def forget_groups(self, groups: Iterable[str]) -> None:
        """Deletes the watermarks and pending outputs of ``groups``."""
        groups = list(groups)
        self._ensure_infrastructure()
        names = sa.bindparam("groups", type_=pg.ARRAY(sa.Text))
        with translated(f"forgetting groups {groups}"), self._engine.begin() as conn:
            for table in (self._books.offsets, self._books.pending):
                conn.execute(
                    sa.delete(table).where(table.c.group_id == sa.any_(names)), {"groups": groups}
                )

    # --- watermarks ------------------------------------------------------------------------

    def watermark(self, group: str, topic: str, partition: int, start: int) -> int:
        """The stored watermark; stores ``start`` when there is none and returns it.

        Two statements (insert if absent, then read) rather than one: under READ COMMITTED
        the ``SELECT`` takes a new snapshot, so it sees a row another worker inserted
        concurrently, which a single statement's snapshot might not.
        """
        self._ensure_infrastructure()
        params = {"b_group": group, "b_topic": topic, "b_partition": partition, "b_start": start}
        with (
            translated(f"reading the watermark of {topic}[{partition}]"),
            self._engine.begin() as conn,
        ):
            inserted = conn.execute(self._books.watermark_insert, params).scalar_one_or_none()
            if inserted is not None:
                return int(inserted)
            return int(conn.execute(self._books.watermark_select, params).scalar_one())

    def partition_time(self, group: str, topic: str, partition: int) -> PartitionTime:
        """The commit sequence and stream time stored beside the watermark (``PartitionTime()``
        when the partition has no watermark row)."""
        self._ensure_infrastructure()
        params = {"b_group": group, "b_topic": topic, "b_partition": partition}
        with (
            translated(f"reading the time of {topic}[{partition}]"),
            self._engine.connect() as conn,
        ):
            found = conn.execute(self._books.time_select, params).one_or_none()
        if found is None:
            return PartitionTime()
        _, seq, stream_time = found
        return PartitionTime(int(seq), None if stream_time is None else int(stream_time))

    # --- state -----------------------------------------------------------------------------

    def load(self, table: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored states of ``keys`` (one ``SELECT ... = ANY``); absent keys are left out."""
        if not keys:
            return {}
        return self._states.load(table, keys)

    def get(self, table: str, key: bytes) -> bytes | None:
        """One state, for queries."""
        found = self._states.state(table, key)
        return None if found is None else found.value

    def state(self, table: str, key: bytes) -> StoredState | None:
        """One state and its version (``StoredState``), for queries; None when absent."""
        return self._states.state(table, key)

    def scan(
        self, table: str, prefix: bytes, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` states whose key starts with ``prefix`` and sorts after ``after``.

        In key order (bytewise, as Python compares ``bytes``), for paging: pass the last key
        of a page as ``after`` to get the next.
        """
        return [(s.key, s.value) for s in self._states.states(table, prefix, after, limit, None)]

    def states(
        self,
        table: str,
        prefix: bytes,
        after: bytes | None,
        limit: int,
        where: str | None = None,
    ) -> list[StoredState]:
        """:meth:`scan` with versions, and with ``where`` (a JSON text), only the states
        whose value contains it (``value @> where::jsonb``, PostgreSQL's containment).
        Raises ``ValueError`` for a ``where`` on a table whose values are not ``jsonb``."""
        return self._states.states(table, prefix, after, limit, where)

    def history(
        self, table: str, key: bytes, before_seq: int | None, limit: int
    ) -> list[HistoryEntry]:
        """Up to ``limit`` changes of ``key`` in the history table ``table`` with ``seq <
        before_seq`` (None: from the newest), newest first."""
        return self._histories.page(table, key, before_seq, limit)

    def history_after(
        self,
        table: str,
        after_id: int,
        limit: int,
        key: bytes | None = None,
        prefix: bytes = b"",
        up_to: int | None = None,
    ) -> list[HistoryEntry]:
        """Up to ``limit`` changes with ``after_id < id <= up_to`` (None: no bound), of
        ``key`` (or of the keys starting with ``prefix``), in id order: what was committed
        after ``after_id``."""
        return self._histories.after(table, after_id, limit, key, prefix, up_to)

    def history_last_id(self, table: str) -> int:
        """The largest id of the changes kept in ``table`` (0: none)."""
        return self._histories.last_id(table)

    def rows(self, table_name: str) -> list[dict[str, Any]]:
        """Every row of a materialised table, ordered by primary key (for tests)."""
        table = self._row_tables.get(table_name)
        with translated(f"reading table {table_name!r}"), self._engine.connect() as conn:
            if table is None:
                try:
                    table = sa.Table(
                        table_name, sa.MetaData(schema=self.schema), autoload_with=conn
                    )
                except sa.exc.NoSuchTableError:
                    raise KeyError(f"no table {table_name!r}") from None
            order = [
                c.collate("C") if isinstance(c.type, sa.String) else c
                for c in table.primary_key.columns
            ]
            found = conn.execute(sa.select(table).order_by(*order)).mappings().all()
        return [dict(row) for row in found]

    # --- windows ---------------------------------------------------------------------------

    def load_windows(
        self,
        table: str,
        partition: int,
        keys: Sequence[bytes],
        due_by: int | None,
        wall_due_by: int | None = None,
    ) -> list[WindowRow]:
        """The rows of ``partition`` whose key is in ``keys``, or pending stream-time rows
        with ``due <= due_by``, or pending wall-clock rows with ``due <= wall_due_by``
        (``None``: none of that clock), ordered by ``(key, start)``; one ``SELECT``. Rows
        that are not pending come only by key."""
        return self._windows.load(table, partition, keys, due_by, wall_due_by)

    def next_due(self, table: str, partition: int, wall: bool = False) -> int | None:
        """The smallest ``due`` among the pending rows of ``partition`` of one clock (from
        the due index)."""
        return self._windows.next_due(table, partition, wall)

    def windows(self, table: str, key: bytes) -> list[WindowRow]:
        """Every row of ``key``, in any partition, ordered by ``(partition, start)``."""
        return self._windows.of_key(table, key)

    # --- commit ----------------------------------------------------------------------------

    def commit(self, commit: StateCommit) -> None:
        """Applies ``commit`` in ONE transaction, or nothing of it: watermarks first (a
        zombie's commit fails there with :class:`WatermarkMovedError`), then states,
        materialised rows, windows, pending outputs and history, in the order
        :func:`runtimes.postgres.commit.apply_commit` states and why."""
        commit.check()
        self._ensure_infrastructure()
        rows_table = (
            self._rows_table(commit.shape) if commit.shape is not None and commit.rows else None
        )
        to = CommitTargets(
            self._books, self._states, self._rows, rows_table, self._windows, self._histories
        )
        doing = f"committing a batch of group {commit.group!r}"
        with translated(doing), self._engine.begin() as conn:
            apply_commit(conn, commit, to)

    # --- pending outputs -------------------------------------------------------------------

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int, after_seq: int = -1
    ) -> list[PendingBatch]:
        """Pending batches with ``first_offset >= from_offset`` and ``seq > after_seq``, in
        order of ``(first_offset, seq)``."""
        self._ensure_infrastructure()
        params = {
            "b_group": group,
            "b_topic": topic,
            "b_partition": partition,
            "b_from": from_offset,
            "b_after_seq": after_seq,
        }
        with (
            translated(f"reading pending outputs of {topic}[{partition}]"),
            self._engine.connect() as conn,
        ):
            found = conn.execute(self._books.pending_select, params).all()
        return [
            PendingBatch(
                topic,
                partition,
                int(first),
                int(next_offset),
                decode_outputs(bytes(outputs)),
                int(seq),
            )
            for first, next_offset, seq, outputs in found
        ]
