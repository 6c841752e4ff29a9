"""The exactly-once batch of a step whose rows fall due in time, and its ticks.

Windowed flows, deduplication, and stateful flows with timers or a TTL
(:class:`~flows.steps.timed.TimedStep`) run here. A timed batch follows the stateful
protocol (PostgreSQL first, Kafka second, outputs kept as pending until Kafka has them; see
:class:`~flows.engine.stateful.StatefulBatch`), with three additions:

* **Stream time** of each partition is stored in the watermark row and moves in the same
  conditional ``UPDATE`` as the watermark, so a restart resumes with exactly the stream time
  the committed windows saw.
* **A commit sequence** per partition, also in the watermark row, counts every commit; each
  Kafka transaction carries it as the committed offset's metadata. Recovery compares the two
  (:func:`~flows.engine.recovery.recover` with ``timed``).
* **Ticks.** A tick is a batch without records. It runs when rows fall due by the wall clock
  (wall-clock timers and TTLs), and when a partition is caught up (its position at the high
  watermark) and no record arrived for ``close_after_idle`` on the wall clock: then its
  stream time moves to ``max(wall clock, stream time + time idle)``. What falls due is
  closed, and the tick commits like a batch: watermark ``(W, W)`` guarded as usual (a
  zombie's tick is refused), sequence + 1, the new stream time, the closed windows deleted,
  its outputs pending; then one Kafka transaction with the outputs and offset ``W`` with the
  new sequence. Without the sequence, a tick that reached PostgreSQL and not Kafka would be
  invisible to recovery (``C == W``), and its windows, already deleted, lost.

A partition with records to read never ticks, so the idle advance never changes what a
catch-up computes; the outputs depend on the wall clock only through when a quiet partition's
last windows close.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flows.engine.batches import fresh
from flows.engine.config import EngineConfig
from flows.engine.session import OwnedPartition, Session
from flows.errors import FlowsError
from flows.ports import (
    Clock,
    PartitionTime,
    PendingBatch,
    StateCommit,
    StateStore,
    TopicPartition,
    WindowRow,
)
from flows.records import RawRecord
from flows.steps import BatchResult
from flows.steps.timed import NEVER, TimedStep, Working

__all__ = ["TimedBatch"]


@dataclass
class _Commit:
    """What one batch or tick changes, gathered over its partitions."""

    watermarks: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    times: dict[TopicPartition, tuple[int, PartitionTime]] = field(default_factory=dict)
    windows: list[WindowRow] = field(default_factory=list)
    removed: list[tuple[int, bytes, int]] = field(default_factory=list)
    pending: list[PendingBatch] = field(default_factory=list)
    #: per partition, the thresholds below which silent rows are deleted (bounded)
    expire: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)
    total: BatchResult = field(default_factory=BatchResult)
    late: int = 0


class TimedBatch:
    """Batches and ticks of a :class:`~flows.steps.timed.TimedStep`, exactly-once."""

    keeps_watermarks = True
    reemits = True
    transactional = True
    timed = True

    def __init__(
        self, step: TimedStep[Any], config: EngineConfig, store: StateStore, clock: Clock
    ) -> None:
        self.step = step
        self.store = store
        self.clock = clock
        self.batch_size = config.stateful_batch_size
        self.expire_limit = config.expire_limit

    # --- records -------------------------------------------------------------------------

    def process(self, session: Session, records: list[RawRecord]) -> None:
        """Loads, folds, commits and publishes the records of the owned partitions:
        per partition, its batch's keys' rows and the rows due by its last stream time,
        then :meth:`WindowStep.apply`, then one PostgreSQL and one Kafka transaction."""
        by_partition = fresh(records, session.owned)
        if not by_partition:
            return
        step, owned = self.step, session.owned
        now, wall = self.clock.monotonic(), self._wall()
        commit = _Commit()
        for tp, raws in by_partition.items():
            part = owned[tp]
            part.arrived = now
            result = BatchResult()
            prepared = step.timestamps(raws, result)
            last = max((item.ts for item in prepared), default=None)
            due_by = _max(part.stream_time, last)
            keys = sorted({item.key for item in prepared})
            stored = self._load(tp[1], keys, due_by, wall)
            table = step.load(tp[1], part.stream_time, wall, stored)
            step.apply(table, prepared, result)
            self._gather(commit, tp, part, table, result, raws[0].offset, raws[-1].offset + 1)
        consumed = sum(len(raws) for raws in by_partition.values())
        self._commit(session, commit, consumed)

    # --- ticks ---------------------------------------------------------------------------

    def tick(self, session: Session) -> bool:
        """Closes what the wall clock makes due: rows due by it, and on quiet, caught-up
        partitions what the idle advance of stream time makes due. Returns whether a tick
        committed."""
        now, wall = self.clock.monotonic(), self._wall()
        commit = _Commit()
        for tp, part in session.owned.items():
            target = self._idle_target(session, tp, part, now, wall)
            if target is None and (part.next_wall_due is None or part.next_wall_due > wall):
                continue
            due_by = target if target is not None else part.stream_time
            stored = self._load(tp[1], [], due_by, wall)
            table = self.step.load(tp[1], part.stream_time, wall, stored)
            result = BatchResult()
            self.step.advance(table, target, result)
            self._gather(commit, tp, part, table, result, part.watermark, part.watermark)
        if not commit.watermarks:
            return False
        self._commit(session, commit, 0)
        return True

    def _load(
        self, partition: int, keys: list[bytes], due_by: int | None, wall: int
    ) -> list[WindowRow]:
        """The rows of ``keys`` and the rows due; for a step that needs whole keys, every
        row of a key with a row due too (a second query, only when there is such a key)."""
        table = self.step.table
        stored = self.store.load_windows(table, partition, keys, due_by, wall)
        if self.step.whole_keys:
            asked = set(keys)
            others = sorted({row.key for row in stored} - asked)
            if others:
                known = {(row.key, row.start) for row in stored}
                more = self.store.load_windows(table, partition, others, None, None)
                stored.extend(row for row in more if (row.key, row.start) not in known)
        return stored

    def _idle_target(
        self,
        session: Session,
        tp: TopicPartition,
        part: OwnedPartition,
        now: float,
        wall: int,
    ) -> int | None:
        """The stream time a quiet, caught-up partition advances to, when that closes
        something; None otherwise (never while it has records to read)."""
        idle_ms = self.step.close_after_idle
        if idle_ms is None or part.next_due is None:
            return None
        quiet = int((now - part.arrived) * 1000)
        if quiet < idle_ms:
            return None
        target = wall if part.stream_time is None else max(wall, part.stream_time + quiet)
        if target < part.next_due or not self._caught_up(session, tp, part):
            return None
        return target

    def waits(self, session: Session) -> bool:
        """Whether rows of owned partitions will still close by the idle advance of stream
        time (so the worker is not idle for ``--until-idle``). Rows due by the wall clock
        alone (wall-clock timers and TTLs) do not hold it."""
        if self.step.close_after_idle is None:
            return False
        return any(part.next_due is not None for part in session.owned.values())

    def recovered(self, session: Session, partitions: list[TopicPartition]) -> None:
        """After recovery: when the partitions' rows next fall due."""
        now = self.clock.monotonic()
        for tp in partitions:
            part = session.owned[tp]
            part.arrived = now
            self._next_due(part, tp)

    def _next_due(self, part: OwnedPartition, tp: TopicPartition) -> None:
        """When the partition's rows next fall due, as far as anything waits for it: the
        idle advance (only with ``close_after_idle``) and ticks by the wall clock (only for
        steps with wall-clock rows). Each is one indexed query, so none is asked in vain."""
        step = self.step
        if step.close_after_idle is not None:
            due = self.store.next_due(step.table, tp[1])
            part.next_due = due if due is not None and due < NEVER else None
        if step.wall_clock:
            part.next_wall_due = self.store.next_due(step.table, tp[1], wall=True)

    def _wall(self) -> int:
        return int(self.clock.time() * 1000)

    @staticmethod
    def _caught_up(session: Session, tp: TopicPartition, part: OwnedPartition) -> bool:
        """Whether the partition's position is at its high watermark (known, not guessed:
        asked of the broker when no fetch has told it yet)."""
        consumer = session.consumer
        try:
            marks = consumer.watermarks(tp, cached=True) or consumer.watermarks(tp, cached=False)
            if marks is None:
                return False
            position = consumer.position(tp)
        except FlowsError:
            return False
        return (position if position is not None else part.watermark) >= marks[1]

    # --- commit --------------------------------------------------------------------------

    def _gather(
        self,
        commit: _Commit,
        tp: TopicPartition,
        part: OwnedPartition,
        table: Working,
        result: BatchResult,
        first: int,
        new: int,
    ) -> None:
        seq = part.seq + 1
        commit.watermarks[tp] = (part.watermark, new)
        commit.times[tp] = (part.seq, PartitionTime(seq, table.stream_time))
        upserted, removed = self.step.changes(table)
        commit.windows.extend(upserted)
        commit.removed.extend(removed)
        commit.expire[tp[1]] = (table.stream_time, table.wall)
        if result.outputs:
            commit.pending.append(
                PendingBatch(tp[0], tp[1], first, new, tuple(result.outputs), seq)
            )
        total = commit.total
        total.outputs.extend(result.outputs)
        total.filtered += result.filtered
        total.dead_lettered += result.dead_lettered
        total.skipped += result.skipped
        commit.late += table.late

    def _commit(self, session: Session, commit: _Commit, consumed: int) -> None:
        """PostgreSQL (watermarks, times, windows, pending) then Kafka (outputs, offsets
        with the sequence); see the module docstring for why in this order."""
        owned, step = session.owned, self.step
        started = time.perf_counter()
        self.store.commit(
            StateCommit(
                group=step.group_id,
                watermarks=commit.watermarks,
                times=commit.times,
                window_table=step.table,
                windows=commit.windows,
                windows_removed=commit.removed,
                expire=commit.expire,
                expire_limit=self.expire_limit,
                pending=commit.pending,
                kafka_committed={
                    tp: owned[tp].committed for tp in commit.watermarks if owned[tp].committed >= 0
                },
            )
        )
        session.metrics.observe(
            "db_commit_seconds", time.perf_counter() - started, **session.labels
        )
        for tp, (_, new) in commit.watermarks.items():
            part = owned[tp]
            part.watermark = new
            part.seq, part.stream_time = commit.times[tp][1].seq, commit.times[tp][1].stream_time
            self._next_due(part, tp)
        session.transaction(
            commit.total.outputs,
            {tp: new for tp, (_, new) in commit.watermarks.items()},
            {tp: str(owned[tp].seq) for tp in commit.watermarks},
        )
        for tp in commit.watermarks:
            part = owned[tp]
            part.committed, part.committed_seq = part.watermark, part.seq
        session.count(consumed, commit.total)
        if commit.late:
            session.metrics.increment("records_late", commit.late, **session.labels)


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
