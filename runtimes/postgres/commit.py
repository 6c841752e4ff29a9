"""The PostgreSQL store's commit path: one batch's effects applied in one transaction.

:meth:`PostgresStateStore.commit <runtimes.postgres.store.PostgresStateStore.commit>` opens
the transaction and calls :func:`apply_commit`, which writes everything in a fixed order
(its docstring states the order and why). Apart from the store so that the order is
written down where it happens, in one place, and the store keeps to tables and reads.
Each step's statements live with their tables (``watermarks.py``, ``states.py``,
``rows.py``, ``windows.py``, ``history_commit.py``); the pending outputs' are here, as only the
commit writes them.

Performance: one statement per kind of change per batch. States, pending batches and their
deletions are sent as arrays (packed into text parameters, ``columns.py``) and expanded
with ``unnest`` (one statement, one plan, whatever the batch size); materialised rows go
as one JSON text, arrays or multi-row ``VALUES`` (``rows.py``). Statements are built once
per table and reused, so SQLAlchemy compiles each once and psycopg prepares it
server-side after a few executions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sqlalchemy as sa

from flows.ports import PendingBatch, StateCommit
from runtimes.postgres.codec import encode_outputs
from runtimes.postgres.history import Histories
from runtimes.postgres.rows import RowUpserts
from runtimes.postgres.statements import Bookkeeping, pack
from runtimes.postgres.states import States
from runtimes.postgres.watermarks import move_watermarks
from runtimes.postgres.windows import Windows

__all__ = ["CommitTargets", "apply_commit"]


@dataclasses.dataclass(frozen=True, slots=True)
class CommitTargets:
    """What a commit writes to, the store's own: the bookkeeping statements, the state,
    materialised (``rows_table``: the commit's, None when it has no rows), window and
    history tables."""

    books: Bookkeeping
    states: States
    rows: RowUpserts
    rows_table: sa.Table | None
    windows: Windows
    histories: Histories


def apply_commit(conn: sa.Connection, commit: StateCommit, to: CommitTargets) -> None:
    """Applies ``commit`` (checked) in ``conn``'s transaction, in this order:

    a. **Watermarks**: for each input partition, in (topic, partition) order,
       ``UPDATE flows_offsets SET next_offset = :new WHERE group_id, topic, partition
       AND next_offset = :read``; every one must match exactly one row, else the
       transaction rolls back and :class:`WatermarkMovedError` names the partition, the
       expected and the stored watermark. A partition in ``commit.times`` also requires
       ``seq = :read_seq`` and sets ``seq`` and ``stream_time``: a zombie's *tick*
       (``read == new``) is refused by its stale sequence (``watermarks.py``). First,
       so that a fenced worker (a zombie) stops before writing anything, and so that
       two committers of one partition queue on its watermark row before touching any
       state; the fixed order keeps committers of several partitions from deadlocking.
    b. **States**: one ``INSERT ... SELECT FROM unnest(keys, values, versions) ON
       CONFLICT (key) DO UPDATE`` for the new values, one ``DELETE ... WHERE key =
       ANY(:keys)`` for ``None`` values (``states.py``).
    c. **Materialised rows**: collapsed per primary key (later fields win), then one
       multi-row ``INSERT ... ON CONFLICT (pk) DO UPDATE`` of the columns the rows
       carry (one statement per distinct set of columns; normally one).
    c'. **Windows**: one upsert of ``commit.windows`` (the last of a
       ``(partition, key, start)`` wins), then one delete of ``windows_removed``, then
       the **expiry** of ``commit.expire``: per partition, in partition order, one
       ``DELETE`` of at most ``expire_limit`` rows that are not pending and fell due,
       smallest ``due`` first (pipelined as one executemany, ``windows.py``). After
       the upsert, so that a row this batch made non-pending and due goes too, and a
       row it made pending again stays.
    d. **Forget** pending batches Kafka has committed: ``next_offset <= committed`` per
       partition of ``kafka_committed``. Kafka's committed offset never passes the
       watermark read in (a), so this cannot touch the batch stored in (e).
    e. **Pending outputs** of this batch, one row per input partition (batches without
       outputs are skipped: there is nothing to re-emit).
    f. **History** (flows with ``history=True``): age retention, then under a lock per
       history table (so that its ids grow in commit order) the batch's changes and
       their ``NOTIFY``, then count retention (``history_commit.py``). Last, so that the
       lock is held for as little of the transaction as can be.

    READ COMMITTED is enough. The only read that decides anything is the conditional
    ``UPDATE`` in (a); PostgreSQL evaluates it against the latest committed version of
    the row, and a second updater that waited on the first's row lock re-checks
    ``next_offset = :read`` against the first's result and matches nothing. The states
    written in (b) were computed from values loaded earlier, outside this transaction;
    they are right because only the holder of a partition's watermark writes the keys
    of that partition, and the holder's commit fails in (a) once anybody moved it.
    """
    move_watermarks(conn, to.books, commit)
    if commit.table is not None and commit.states:
        to.states.write(conn, commit)
    if to.rows_table is not None and commit.shape is not None:
        to.rows.write(conn, to.rows_table, commit.shape, commit.rows)
    to.windows.write(conn, commit)
    to.windows.expire(conn, commit)
    if commit.kafka_committed:
        committed = sorted(commit.kafka_committed.items())
        conn.execute(
            to.books.pending_forget,
            {
                "b_group": commit.group,
                "topics": [t for (t, _), _ in committed],
                "partitions": [p for (_, p), _ in committed],
                "offsets": [c for _, c in committed],
            },
        )
    _write_pending(conn, to.books, commit.group, commit.pending)
    if commit.history is not None:
        to.histories.write(conn, commit.history)


def _write_pending(
    conn: sa.Connection, books: Bookkeeping, group: str, batches: Sequence[PendingBatch]
) -> None:
    """Stores the batches with outputs, one row per ``(topic, partition, first_offset,
    seq)`` (the last given wins), in key order, as one array insert."""
    unique: dict[tuple[str, int, int, int], PendingBatch] = {}
    for batch in batches:
        if batch.outputs:
            unique[(batch.topic, batch.partition, batch.first_offset, batch.seq)] = batch
    if not unique:
        return
    ordered = [unique[k] for k in sorted(unique)]
    conn.execute(
        books.pending_insert,
        {
            "b_group": group,
            "topics": [b.topic for b in ordered],
            "partitions": [b.partition for b in ordered],
            "firsts": [b.first_offset for b in ordered],
            "nexts": [b.next_offset for b in ordered],
            "seqs": [b.seq for b in ordered],
            "b_outputs": pack(encode_outputs(b.outputs) for b in ordered),
        },
    )
