"""Where a partition resumes when it is assigned, and the outputs owed before it does.

This is the recovery rule of the exactly-once protocol (README, "Guarantees"): PostgreSQL's
watermark ``W`` is the truth about what is applied, Kafka's committed offset ``C`` about
what was published.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flows.broker import Consumer
from flows.engine.session import OwnedPartition, Session
from flows.errors import OffsetsAheadError
from flows.ports import StateStore, TopicPartition
from flows.records import RawMessage

log = logging.getLogger("flows.worker")


def reset_start(consumer: Consumer, tp: TopicPartition, policy: str, cached: bool = False) -> int:
    """Where a partition without a committed offset starts, by the reset policy (from the
    watermarks the last fetch saw, with ``cached``)."""
    marks = consumer.watermarks(tp, cached=cached)
    low, high = marks if marks is not None else (0, 0)
    return low if policy == "earliest" else high


def recover(
    session: Session,
    store: StateStore,
    partitions: Sequence[TopicPartition],
    policy: str,
    timed: bool = False,
) -> dict[TopicPartition, int]:
    """Reads ``W`` and ``C`` of each partition, records them as owned, and returns ``W`` as
    where each partition resumes.

    * no ``W`` yet: ``W`` starts at ``C`` (or the reset policy's start);
    * ``C == W``: nothing is owed;
    * ``C < W``: batches ``[C, W)`` are applied in PostgreSQL but their Kafka transaction
      never committed: their stored outputs are owed (:func:`reemit`), nothing is
      recomputed;
    * ``C > W``: the database went back in time: :class:`OffsetsAheadError`.

    ``timed`` (timed steps: windows, timers, TTL) compares commit sequences as well:
    PostgreSQL's, stored with ``W``, and Kafka's, committed as the offset's metadata. A
    *tick* moves the sequence but no offset, so ``C == W`` with Kafka's sequence behind
    still owes the tick's outputs; Kafka's sequence ahead is :class:`OffsetsAheadError` too.
    """
    group = session.step.group_id
    consumer = session.consumer
    committed = consumer.committed(partitions)
    metadata = consumer.committed_metadata(partitions) if timed else {}
    positions: dict[TopicPartition, int] = {}
    for tp in partitions:
        c = committed.get(tp, -1)
        start = c if c >= 0 else reset_start(consumer, tp, policy)
        w = store.watermark(group, tp[0], tp[1], start)
        if c >= 0 and c > w:
            raise OffsetsAheadError(group, tp[0], tp[1], c, w)
        part = session.owned[tp] = OwnedPartition(watermark=w, committed=c)
        if timed:
            time = store.partition_time(group, tp[0], tp[1])
            part.seq, part.stream_time = time.seq, time.stream_time
            part.committed_seq = commit_sequence(metadata.get(tp, ""))
            if part.committed_seq > part.seq:
                sequences = (part.committed_seq, part.seq)
                raise OffsetsAheadError(group, tp[0], tp[1], c, w, sequences)
        positions[tp] = w
    return positions


def commit_sequence(metadata: str) -> int:
    """The commit sequence a timed step's Kafka transaction left in the offset's
    metadata ("" before its first: 0)."""
    try:
        return int(metadata) if metadata else 0
    except ValueError:
        log.warning("ignoring committed offset metadata %r: not a flows commit sequence", metadata)
        return 0


def reemit(session: Session, store: StateStore, timed: bool = False) -> int:
    """Publishes the stored outputs of batches PostgreSQL committed and Kafka did not.

    For every owned partition with ``C < W`` (or, ``timed``, with Kafka's commit sequence
    behind PostgreSQL's): the pending batches with ``first_offset >= C`` (and, ``timed``, a
    sequence past Kafka's) go out in order, in one Kafka transaction that also commits
    offset ``W`` (with the sequence as its metadata). Returns how many outputs went out. A
    partition that owes nothing (its batches had no outputs, or it never committed) is only
    marked as caught up: Kafka's offset follows with its next batch, and positions come
    from ``W`` anyway.
    """
    behind = {tp: p for tp, p in session.owned.items() if p.owes}
    if not behind:
        return 0
    outputs: list[RawMessage] = []
    group = session.step.group_id
    for (topic, partition), part in behind.items():
        after = part.committed_seq if timed else -1
        for batch in store.pending(group, topic, partition, max(part.committed, 0), after):
            outputs.extend(batch.outputs)
    if outputs:
        log.info(
            "%s re-emits %d stored outputs that PostgreSQL committed before a Kafka "
            "transaction failed or a worker died: %s",
            session.step.name,
            len(outputs),
            ", ".join(
                f"{t}[{p}] offsets {max(part.committed, 0)} to {part.watermark}"
                for (t, p), part in behind.items()
            ),
        )
        session.transaction(
            outputs,
            {tp: p.watermark for tp, p in behind.items()},
            {tp: str(p.seq) for tp, p in behind.items()} if timed else None,
        )
    for part in behind.values():
        part.committed = part.watermark
        part.committed_seq = part.seq
    return len(outputs)
