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
    session: Session, store: StateStore, partitions: Sequence[TopicPartition], policy: str
) -> dict[TopicPartition, int]:
    """Reads ``W`` and ``C`` of each partition, records them as owned, and returns ``W`` as
    where each partition resumes.

    * no ``W`` yet: ``W`` starts at ``C`` (or the reset policy's start);
    * ``C == W``: nothing is owed;
    * ``C < W``: batches ``[C, W)`` are applied in PostgreSQL but their Kafka transaction
      never committed: their stored outputs are owed (:func:`reemit`), nothing is
      recomputed;
    * ``C > W``: the database went back in time: :class:`OffsetsAheadError`.
    """
    group = session.step.group_id
    committed = session.consumer.committed(partitions)
    positions: dict[TopicPartition, int] = {}
    for tp in partitions:
        c = committed.get(tp, -1)
        start = c if c >= 0 else reset_start(session.consumer, tp, policy)
        w = store.watermark(group, tp[0], tp[1], start)
        if c >= 0 and c > w:
            raise OffsetsAheadError(group, tp[0], tp[1], c, w)
        session.owned[tp] = OwnedPartition(watermark=w, committed=c)
        positions[tp] = w
    return positions


def reemit(session: Session, store: StateStore) -> int:
    """Publishes the stored outputs of batches PostgreSQL committed and Kafka did not.

    For every owned partition with ``C < W``: the pending batches with
    ``first_offset >= C`` go out in offset order, in one Kafka transaction that also commits
    offset ``W``. Returns how many outputs went out. A partition that owes nothing (its
    batches had no outputs, or it never committed) is only marked as caught up: Kafka's
    offset follows with its next batch, and positions come from ``W`` anyway.
    """
    behind = {tp: p for tp, p in session.owned.items() if p.committed < p.watermark}
    if not behind:
        return 0
    outputs: list[RawMessage] = []
    group = session.step.group_id
    for (topic, partition), part in behind.items():
        for batch in store.pending(group, topic, partition, max(part.committed, 0)):
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
        session.transaction(outputs, {tp: p.watermark for tp, p in behind.items()})
    for part in behind.values():
        part.committed = part.watermark
    return len(outputs)
