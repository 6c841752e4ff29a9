"""The first step of every commit: the conditional move of its partitions' watermarks.

``flows_offsets.next_offset`` is the watermark (see ``store.py``); windowed steps keep their
commit sequence and stream time in the same row (:class:`flows.ports.PartitionTime`) and
move them with it, under the same condition plus ``seq = :read_seq``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from flows.errors import WatermarkMovedError
from flows.ports import StateCommit
from runtimes.postgres.statements import Bookkeeping


def move_watermarks(conn: sa.Connection, books: Bookkeeping, commit: StateCommit) -> None:
    """Moves every watermark of ``commit`` from its read to its new offset (and, for the
    partitions in ``commit.times``, the sequence from its read to the new time), in
    ``conn``'s transaction; raises :class:`WatermarkMovedError` naming each partition whose
    stored watermark or sequence is not the one read (the caller's transaction then rolls
    back). Partitions are updated in (topic, partition) order, so committers of several
    partitions queue on the rows in one order and never deadlock."""
    if not commit.watermarks:
        return
    moves = sorted(commit.watermarks.items())
    params: list[dict[str, Any]] = []
    for (topic, partition), (read, new) in moves:
        read_seq, time = commit.times.get((topic, partition), (None, None))
        params.append(
            {
                "b_group": commit.group,
                "b_topic": topic,
                "b_partition": partition,
                "b_read": read,
                "b_new": new,
                "b_timed": time is not None,
                "b_read_seq": read_seq,
                "b_seq": None if time is None else time.seq,
                "b_stream_time": None if time is None else time.stream_time,
            }
        )
    # One UPDATE per partition, pipelined by psycopg; the row counts add up, and each UPDATE
    # can match at most one row (the primary key), so the sum tells it all.
    moved = conn.execute(books.watermark_update, params).rowcount
    if moved == len(params):
        return
    stale: list[str] = []
    for (topic, partition), (read, _) in moves:
        where = {"b_group": commit.group, "b_topic": topic, "b_partition": partition}
        row = conn.execute(books.time_select, where).one_or_none()
        if row is None or row[0] != read:
            found = "no watermark" if row is None else f"watermark {row[0]}"
            stale.append(f"{topic}[{partition}] has {found}, expected {read}")
        elif (topic, partition) in commit.times:
            read_seq = commit.times[(topic, partition)][0]
            if row[1] != read_seq:
                stale.append(
                    f"{topic}[{partition}] has commit sequence {row[1]}, expected {read_seq}"
                )
    raise WatermarkMovedError(
        f"group {commit.group!r}: {'; '.join(stale) or 'a watermark moved'}; another "
        f"worker owns the partition, so this batch is not committed"
    )
