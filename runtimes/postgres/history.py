"""History tables (:mod:`flows.history`): their shape, the statements on them and queries.

One table per stateful flow with ``history=True``, ``<state table>_history``::

    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY
    key               BYTEA | TEXT COLLATE "C"  NOT NULL   (as the state table's)
    seq               BIGINT NOT NULL           the key's change number
    previous, value   BYTEA | JSONB             (as the state table's; NULL: absent)
    source_topic      TEXT NOT NULL
    source_partition  INTEGER NOT NULL
    source_offset     BIGINT NOT NULL
    event_timestamp   BIGINT                    the input record's timestamp (ms)
    committed_at      TIMESTAMPTZ NOT NULL DEFAULT now()
    UNIQUE INDEX <table>_key_seq (key, seq)

A commit's history (:meth:`Histories.write`, the last step of the store's commit, in its
transaction) runs, in order:

1. **age retention**: when the oldest row (smallest id) was committed before ``now() -
   max_age``, one ``DELETE`` of those of the ``limit`` oldest rows that were (the primary
   key's order is commit order; when the oldest row has not expired, one probe of it is
   all: an index on ``committed_at`` would cost every insert more, measured a third);
2. **the id lock**: ``pg_advisory_xact_lock(<class>, hashtext(<table>))``, held until the
   transaction ends. Identity values are handed out when rows are inserted, not when they
   commit: without the lock, two committers of one flow (two partitions in two workers)
   could commit ids 5-9 after ids 10-14 had been read, and a subscriber resuming after 14
   would miss 5-9. Under the lock, a commit's ids are drawn after every earlier commit of
   the table is visible (PostgreSQL releases locks after a commit becomes visible), so ids
   grow in commit order and ``id > n`` means "committed after ``n``". It serialises only
   the end of commits of one flow (the insert, step 4, and the commit itself);
3. **the insert** of the changes, in the order applied, with ``seq`` the key's largest
   plus its rank in the batch, then ``NOTIFY flows_history '<table> <first id> <last
   id>'`` in the same statement (a ``WITH ... RETURNING``): PostgreSQL delivers it on
   commit only, in commit order, to every listening process (``changes.py``);
4. **count retention**: one ``DELETE`` of at most ``limit`` rows of the keys the batch
   changed beyond their newest ``keep`` (the ``(key, seq)`` index, per key), oldest first.

Values go through the state table's own column strategies (``columns.py``), so a history
keeps what its states keep, in the same form. A worker converts a history table whose
columns no longer fit its flow's states (``migrations.convert_history_table``); a process
that only reads it follows the catalog.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows.history import HistoryCommit, HistoryEntry, StateChange
from flows.ports import StateColumns
from runtimes.postgres.columns import Column, column_of
from runtimes.postgres.errors import translated
from runtimes.postgres.migrations import convert_history_table, found_state_table
from runtimes.postgres.state_tables import key_range
from runtimes.postgres.statements import array_of, array_text, create_tables, take_ddl_lock

__all__ = ["CHANNEL", "Histories", "HistoryTable", "history_table"]

#: the channel of every history table's notifications: ``<qualified table> <first> <last>``
CHANNEL = "flows_history"
#: the first key of the id lock (two int4 keys: a space apart from the DDL lock's bigint)
_LOCK_CLASS = 0x666C6F77  # "flow"
#: ``seq < before`` when no cursor is given
_NO_CURSOR = 1 << 62


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryTable:
    """A history table, its columns' strategies and the statements on it, built once.

    ``lock`` takes nothing; ``last_seqs`` the keys ``distinct`` (:meth:`Column.dump`), and
    selects each with its largest ``seq`` (NULL: none); ``insert`` takes ``count`` and the
    array literals ``seqs``, ``has_previous``, ``has_value``, ``topic_ix`` (1-based, into
    ``topics``: names joined by commas), ``partitions``, ``offsets``, ``timestamps``, and
    ``keys``, ``previous``, ``values`` (dumped); it returns the ``pg_notify`` row.
    ``trim_count`` takes the keys ``trimmed`` (dumped), the literal ``cuts`` (per key,
    the largest ``seq`` to delete) and ``limit``; ``trim_age`` ``max_age`` (an interval)
    and ``limit``; ``page`` ``key``, ``before`` and ``limit``; ``last_id`` nothing.
    """

    name: str
    qualified: str
    table: sa.Table
    key: Column
    value: Column
    lock: sa.Executable
    last_seqs: sa.Executable
    insert: sa.Executable
    trim_count: sa.Executable
    trim_age: sa.Executable
    page: sa.Executable
    last_id: sa.Executable

    def selected(self) -> list[Any]:
        """What queries read of a row, in :func:`_entry`'s order."""
        return _selected(self.table, self.value)


def history_table(name: str, schema: str | None, columns: StateColumns) -> HistoryTable:
    """The history table ``name`` keeping ``columns`` and its statements (built, not
    created; in a metadata of its own)."""
    key, value = column_of(columns.key), column_of(columns.value)
    t = sa.Table(
        name,
        sa.MetaData(schema=schema),
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("key", key.sql_type(), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("previous", value.sql_type(), nullable=True),
        sa.Column("value", value.sql_type(), nullable=True),
        sa.Column("source_topic", sa.Text, nullable=False),
        sa.Column("source_partition", sa.Integer, nullable=False),
        sa.Column("source_offset", sa.BigInteger, nullable=False),
        sa.Column("event_timestamp", sa.BigInteger, nullable=True),
        sa.Column(
            "committed_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
    )
    sa.Index(f"{name}_key_seq", t.c.key, t.c.seq, unique=True)
    qualified = name if schema is None else f"{schema}.{name}"

    # One row per change, every array in lockstep; NULLs travel as placeholders and a flag.
    changes = sa.select(
        sa.func.generate_series(1, sa.bindparam("count", type_=sa.Integer)).label("i"),
        key.each("keys").label("key"),
        sa.func.unnest(array_of("seqs", sa.BigInteger)).label("seq"),
        value.each("previous").label("previous"),
        sa.func.unnest(array_of("has_previous", sa.Boolean)).label("has_previous"),
        value.each("values").label("value"),
        sa.func.unnest(array_of("has_value", sa.Boolean)).label("has_value"),
        sa.func.unnest(array_of("topic_ix", sa.Integer)).label("topic_ix"),
        sa.func.unnest(array_of("partitions", sa.Integer)).label("partition"),
        sa.func.unnest(array_of("offsets", sa.BigInteger)).label("offset"),
        sa.func.unnest(array_of("timestamps", sa.BigInteger)).label("ts"),
    ).subquery("c")
    c = changes.c
    # Kafka topic names have no comma: the batch's topics as one text, split by PostgreSQL
    topics = sa.bindparam("topics", type_=sa.Text)
    inserted = (
        pg.insert(t)
        .from_select(
            [
                "key",
                "seq",
                "previous",
                "value",
                "source_topic",
                "source_partition",
                "source_offset",
                "event_timestamp",
            ],
            sa.select(
                c.key,
                c.seq,
                sa.case((c.has_previous, c.previous), else_=sa.null()),
                sa.case((c.has_value, c.value), else_=sa.null()),
                sa.func.split_part(topics, ",", c.topic_ix),
                c.partition,
                c.offset,
                c.ts,
            ).order_by(c.i),
        )
        .returning(t.c.id)
        .cte("inserted")
    )
    payload = sa.func.concat(
        qualified, " ", sa.func.min(inserted.c.id), " ", sa.func.max(inserted.c.id)
    )

    # Each distinct key's last seq: one backward probe of the (key, seq) index per key.
    older = t.alias("o")
    distinct = sa.select(key.each("distinct").label("key")).subquery("d")
    last_seqs = sa.select(
        distinct.c.key,
        sa.select(sa.func.max(older.c.seq)).where(older.c.key == distinct.c.key).scalar_subquery(),
    )
    # The rows of some keys up to a seq each (the (key, seq) index), oldest first.
    cuts = sa.select(
        key.each("trimmed").label("key"),
        sa.func.unnest(array_of("cuts", sa.BigInteger)).label("cut"),
    ).subquery("cuts")
    beyond = (
        sa.select(t.c.id)
        .join(cuts, sa.and_(t.c.key == cuts.c.key, t.c.seq <= cuts.c.cut))
        .order_by(t.c.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    # The oldest rows by id (commit order) that expired, gated on the oldest one: when it
    # has not expired, nothing is read past it (no index on committed_at to keep up).
    cutoff = sa.func.now() - sa.bindparam("max_age", type_=sa.Interval)
    oldest = (
        sa.select(t.c.id, t.c.committed_at)
        .order_by(t.c.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .subquery("oldest")
    )
    first = sa.select(t.c.committed_at).order_by(t.c.id).limit(1).scalar_subquery()
    expired = sa.select(oldest.c.id).where(first < cutoff, oldest.c.committed_at < cutoff)
    page = (
        sa.select(*_selected(t, value))
        .where(t.c.key == sa.bindparam("key"), t.c.seq < sa.bindparam("before"))
        .order_by(t.c.seq.desc())
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    return HistoryTable(
        name=name,
        qualified=qualified,
        table=t,
        key=key,
        value=value,
        lock=sa.select(
            sa.func.pg_advisory_xact_lock(
                sa.literal(_LOCK_CLASS, sa.Integer), sa.func.hashtext(qualified)
            )
        ),
        last_seqs=last_seqs,
        insert=sa.select(sa.func.pg_notify(CHANNEL, payload)),
        trim_count=sa.delete(t).where(t.c.id.in_(beyond.scalar_subquery())),
        trim_age=sa.delete(t).where(t.c.id.in_(expired.scalar_subquery())),
        page=page,
        last_id=sa.select(sa.func.coalesce(sa.func.max(t.c.id), 0)),
    )


def _selected(t: sa.Table, value: Column) -> list[Any]:
    """What queries read of a row, in :func:`_entry`'s order."""
    c, read = t.c, value.read
    return [
        c.id,
        c.seq,
        c.key,
        read(c.previous),
        read(c.value),
        c.source_topic,
        c.source_partition,
        c.source_offset,
        c.event_timestamp,
        c.committed_at,
    ]


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
        """Applies ``history`` in ``conn``'s transaction (the module docstring's steps)."""
        t = self.table(history.table)
        policy, limit = history.policy, history.limit
        if policy.max_age_ms is not None and limit > 0:
            age = datetime.timedelta(milliseconds=policy.max_age_ms)
            conn.execute(t.trim_age, {"max_age": age, "limit": limit})
        changes = history.changes
        if not changes:
            return
        # The keys' last seqs, read before the lock: only this partition's owner writes
        # them (the watermark rows it holds say so), so they cannot move meanwhile.
        distinct = list(dict.fromkeys(c.key for c in changes))
        to_bytes = t.key.to_bytes
        found = conn.execute(t.last_seqs, {"distinct": t.key.dump(distinct)}).all()
        last = {to_bytes(k): int(seq) for k, seq in found if seq is not None}
        params = _insert_params(t, changes, last)
        conn.execute(t.lock)
        conn.execute(t.insert, params)
        if policy.keep is not None and limit > 0:
            cuts = {k: seq - policy.keep for k, seq in last.items() if seq > policy.keep}
            if cuts:
                conn.execute(
                    t.trim_count,
                    {
                        "trimmed": t.key.dump(list(cuts)),
                        "cuts": array_text(cuts.values()),
                        "limit": limit,
                    },
                )

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
        before = _NO_CURSOR if before_seq is None else before_seq
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


def _insert_params(
    t: HistoryTable, changes: Sequence[StateChange], last: dict[bytes, int]
) -> dict[str, Any]:
    """The parameters of :attr:`HistoryTable.insert` for ``changes``; ``last`` has each
    key's largest stored ``seq`` (absent: none) and leaves with its new one."""
    placeholder = b"null" if t.value.kind == "json" else b""
    seqs: list[int] = []
    topics: dict[str, int] = {}
    stamps = [c.timestamp for c in changes]
    known = [stamp for stamp in stamps if stamp is not None]
    for change in changes:
        seq = last[change.key] = last.get(change.key, 0) + 1
        seqs.append(seq)
        topics.setdefault(change.topic, len(topics) + 1)
    return {
        "count": len(changes),
        "keys": t.key.dump([c.key for c in changes]),
        "seqs": _numbers(seqs),
        "previous": t.value.dump(
            [placeholder if c.previous is None else c.previous for c in changes]
        ),
        "has_previous": _flags([c.previous is not None for c in changes]),
        "values": t.value.dump([placeholder if c.value is None else c.value for c in changes]),
        "has_value": _flags([c.value is not None for c in changes]),
        "topics": ",".join(topics),
        "topic_ix": _numbers([topics[c.topic] for c in changes]),
        "partitions": _numbers([c.partition for c in changes]),
        "offsets": _numbers([c.offset for c in changes]),
        "timestamps": _numbers(known) if len(known) == len(stamps) else array_text(stamps),
    }


def _numbers(items: list[int]) -> str:
    """:func:`array_text` of numbers without a NULL, in one ``join`` (a change's numbers
    are a good part of a history's cost in Python)."""
    return "{" + ",".join(map(str, items)) + "}"


def _flags(items: list[bool]) -> str:
    """:func:`array_text` of booleans."""
    return "{" + ",".join(["t" if item else "f" for item in items]) + "}"


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
