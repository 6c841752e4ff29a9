"""History tables (:mod:`flows.history`): their shape and the statements on them, built
once per table.

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

The statements are the commit's (``history_commit.py``: the id lock, the insert and its
``NOTIFY``, both retentions) and the queries' (``history.py``); they are built here, together,
because each depends on the table's columns and their strategies (``columns.py``), and a
table whose columns change is built again as a whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows.ports import StateColumns
from runtimes.postgres.columns import Column, column_of
from runtimes.postgres.statements import array_of

__all__ = ["CHANNEL", "NO_CURSOR", "HistoryTable", "history_table"]

#: the channel of every history table's notifications: ``<qualified table> <first> <last>``
CHANNEL = "flows_history"
#: the first key of the id lock (two int4 keys: a space apart from the DDL lock's bigint)
_LOCK_CLASS = 0x666C6F77  # "flow"
#: ``seq < before`` when no cursor is given
NO_CURSOR = 1 << 62


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
        """What queries read of a row, in ``history._entry``'s order."""
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
    """What queries read of a row, in ``history._entry``'s order."""
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
