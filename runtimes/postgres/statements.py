"""The bookkeeping tables every store has, their statements (built once and reused), DDL,
and the packing of many values into one parameter that every table's statements use.

SQLAlchemy compiles a statement object once, and psycopg prepares it server-side after a
few executions, so each statement here is made once per store (bookkeeping) or per state
table, never per batch.

Many byte strings travel as one text parameter (:func:`pack`), split and decoded by
PostgreSQL (:func:`packed`, :func:`unhex`): one statement, one plan, whatever the batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

OFFSETS_TABLE = "flows_offsets"
PENDING_TABLE = "flows_pending"

# Serialises DDL across processes: concurrent ``CREATE ... IF NOT EXISTS`` of one name can
# still fail on a unique index of the catalog, so creators take this advisory lock first.
_DDL_LOCK_KEY = 0x666C6F7773  # "flows"


def pack(items: Iterable[bytes]) -> str:
    """Many byte strings as one text parameter: ``x<hex>`` items joined by commas.

    psycopg dumps a ``bytea[]`` parameter element by element in Python (about 3.5 µs each,
    measured); one text parameter, split and decoded by PostgreSQL, costs a seventh of that.
    The ``x`` keeps an empty item distinct from no item.
    """
    return ",".join(["x" + item.hex() for item in items])


def packed(name: str) -> Any:
    """The ``text[]`` items of a :func:`pack` parameter."""
    return sa.func.string_to_array(sa.bindparam(name, type_=sa.Text), ",")


def unhex(item: Any) -> Any:
    """One :func:`pack` item back as ``bytea``."""
    return sa.func.decode(sa.func.substr(item, 2), "hex", type_=sa.LargeBinary)


def take_ddl_lock(conn: sa.Connection) -> None:
    """Takes the DDL advisory lock until ``conn``'s transaction ends (again: a no-op)."""
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DDL_LOCK_KEY)))


def array_text(items: Iterable[int | bool | None]) -> str:
    """Numbers or booleans as one PostgreSQL array literal (``{1,2,3}``, ``{t,f}``;
    ``None`` is ``NULL``).

    psycopg dumps a ``bigint[]`` parameter element by element in Python; the literal is one
    ``join`` and PostgreSQL parses it (:func:`array_of`): on the windowed benchmark, dumping
    the window rows' eight number and flag arrays was 5 % of a worker's time.
    """
    return (
        "{"
        + ",".join(
            [
                "t" if i is True else "f" if i is False else "NULL" if i is None else str(i)
                for i in items
            ]
        )
        + "}"
    )


def array_of(name: str, element: Any) -> Any:
    """The ``element[]`` that an :func:`array_text` parameter holds."""
    return sa.cast(sa.bindparam(name, type_=sa.Text), pg.ARRAY(element))


def create_tables(conn: sa.Connection, tables: Sequence[sa.Table], schema: str | None) -> None:
    """Creates ``schema`` and ``tables`` (with their indexes) when missing, in ``conn``'s
    transaction, holding the DDL advisory lock until it ends."""
    take_ddl_lock(conn)
    if schema is not None:
        conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
    for table in tables:
        if table.schema is not None and table.schema != schema:
            conn.execute(sa.schema.CreateSchema(table.schema, if_not_exists=True))
        conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))


@dataclasses.dataclass(frozen=True, slots=True)
class Bookkeeping:
    """``flows_offsets`` and ``flows_pending`` and the statements on them, built once.

    Parameters: ``b_group``, ``b_topic``, ``b_partition`` name a partition of a group;
    ``watermark_insert`` takes ``b_start``; ``watermark_update`` ``b_read`` and ``b_new``,
    and ``b_timed`` with ``b_read_seq``, ``b_seq``, ``b_stream_time`` (when ``b_timed`` is
    false, the sequence is neither checked nor changed: steps without windows);
    ``pending_select`` ``b_from`` and ``b_after_seq``; ``pending_forget`` takes ``topics``,
    ``partitions`` and ``offsets`` arrays, ``pending_insert`` ``topics``, ``partitions``,
    ``firsts``, ``nexts``, ``seqs`` arrays and the packed ``b_outputs``.
    """

    offsets: sa.Table
    pending: sa.Table
    watermark_insert: sa.Executable
    watermark_select: sa.Executable
    watermark_update: sa.Executable
    time_select: sa.Executable
    pending_forget: sa.Executable
    pending_insert: sa.Executable
    pending_select: sa.Executable


def bookkeeping(metadata: sa.MetaData) -> Bookkeeping:
    """The bookkeeping tables in ``metadata`` and their statements (built, not created)."""
    offsets = sa.Table(
        OFFSETS_TABLE,
        metadata,
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        # windowed steps: the commit sequence and stream time (see flows.ports.PartitionTime)
        sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("stream_time", sa.BigInteger, nullable=True),
    )
    pending = sa.Table(
        PENDING_TABLE,
        metadata,
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("first_offset", sa.BigInteger, primary_key=True),
        # a tick's row (first_offset == next_offset) and the batch after it share an offset
        sa.Column("seq", sa.BigInteger, primary_key=True, server_default="0"),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("outputs", sa.LargeBinary, nullable=False),
    )
    group = sa.bindparam("b_group", type_=sa.Text)
    topic = sa.bindparam("b_topic", type_=sa.Text)
    partition = sa.bindparam("b_partition", type_=sa.Integer)
    this_partition = sa.and_(
        offsets.c.group_id == group, offsets.c.topic == topic, offsets.c.partition == partition
    )

    watermark_insert = pg.insert(offsets).values(
        group_id=group, topic=topic, partition=partition, next_offset=sa.bindparam("b_start")
    )

    # (topic, partition, offset) triples, passed as three arrays.
    committed = (
        sa.func.unnest(
            sa.bindparam("topics", type_=pg.ARRAY(sa.Text)),
            sa.bindparam("partitions", type_=pg.ARRAY(sa.Integer)),
            sa.bindparam("offsets", type_=pg.ARRAY(sa.BigInteger)),
        )
        .table_valued("topic", "partition", "committed")
        .render_derived(name="c")
    )
    batches = (
        sa.func.unnest(
            sa.bindparam("topics", type_=pg.ARRAY(sa.Text)),
            sa.bindparam("partitions", type_=pg.ARRAY(sa.Integer)),
            sa.bindparam("firsts", type_=pg.ARRAY(sa.BigInteger)),
            sa.bindparam("nexts", type_=pg.ARRAY(sa.BigInteger)),
            sa.bindparam("seqs", type_=pg.ARRAY(sa.BigInteger)),
            packed("b_outputs"),
        )
        .table_valued("topic", "partition", "first_offset", "next_offset", "seq", "outputs")
        .render_derived(name="b")
    )
    pending_insert = pg.insert(pending).from_select(
        ["group_id", "topic", "partition", "first_offset", "next_offset", "seq", "outputs"],
        sa.select(
            group,
            batches.c.topic,
            batches.c.partition,
            batches.c.first_offset,
            batches.c.next_offset,
            batches.c.seq,
            unhex(batches.c.outputs),
        ),
    )
    # Windowed steps move the commit sequence with the watermark and require the one read;
    # the others leave it alone. One statement for both, so every commit updates its
    # partitions' rows in one executemany, in (topic, partition) order.
    timed = sa.bindparam("b_timed", type_=sa.Boolean)
    watermark_update = (
        sa.update(offsets)
        .where(
            this_partition,
            offsets.c.next_offset == sa.bindparam("b_read"),
            sa.or_(
                sa.not_(timed), offsets.c.seq == sa.bindparam("b_read_seq", type_=sa.BigInteger)
            ),
        )
        .values(
            next_offset=sa.bindparam("b_new"),
            seq=sa.case((timed, sa.bindparam("b_seq", type_=sa.BigInteger)), else_=offsets.c.seq),
            stream_time=sa.case(
                (timed, sa.bindparam("b_stream_time", type_=sa.BigInteger)),
                else_=offsets.c.stream_time,
            ),
        )
    )
    return Bookkeeping(
        offsets=offsets,
        pending=pending,
        watermark_insert=watermark_insert.on_conflict_do_nothing(
            index_elements=list(offsets.primary_key.columns)
        ).returning(offsets.c.next_offset),
        watermark_select=sa.select(offsets.c.next_offset).where(this_partition),
        watermark_update=watermark_update,
        time_select=sa.select(offsets.c.next_offset, offsets.c.seq, offsets.c.stream_time).where(
            this_partition
        ),
        pending_forget=sa.delete(pending).where(
            pending.c.group_id == group,
            pending.c.topic == committed.c.topic,
            pending.c.partition == committed.c.partition,
            pending.c.next_offset <= committed.c.committed,
        ),
        # A range stored again (only after `flows reset`) replaces the old one, as in memory.
        pending_insert=pending_insert.on_conflict_do_update(
            index_elements=list(pending.primary_key.columns),
            set_={
                "next_offset": pending_insert.excluded.next_offset,
                "outputs": pending_insert.excluded.outputs,
            },
        ),
        pending_select=(
            sa.select(
                pending.c.first_offset, pending.c.next_offset, pending.c.seq, pending.c.outputs
            )
            .where(
                pending.c.group_id == group,
                pending.c.topic == topic,
                pending.c.partition == partition,
                pending.c.first_offset >= sa.bindparam("b_from"),
                pending.c.seq > sa.bindparam("b_after_seq"),
            )
            .order_by(pending.c.first_offset, pending.c.seq)
        ),
    )
