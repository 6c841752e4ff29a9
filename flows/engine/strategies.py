"""How one batch is processed and committed, a strategy per kind of step, chosen once.

Delivery guarantees by strategy (the README's "Guarantees" says the same):

* :class:`AtLeastOnce` (stateless steps by default): the outputs are produced, every
  delivery is awaited, and only then are the input offsets committed (in the background,
  :meth:`~flows.broker.Consumer.commit_async`). A crash can repeat outputs, never lose one.
* :class:`Transactional` (stateless steps with ``exactly_once``, and every re-key step):
  outputs and input offsets are committed in one Kafka transaction.
* :class:`StatefulBatch`: PostgreSQL first, Kafka second, the outputs kept in PostgreSQL
  until Kafka has them (see :meth:`StatefulBatch.process`).
* :class:`MaterialiseBatch`: rows and the input watermark in one PostgreSQL transaction;
  Kafka offsets are only a hint, positions come from the watermark.
* :class:`~flows.engine.timed.TimedBatch` (windows, deduplication, timers, TTL): as
  :class:`StatefulBatch`, with stream time and a commit sequence beside the watermark, and
  ticks that close what falls due without records.

Filtered and dead-lettered records advance offsets like any other.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from flows.engine.batches import fresh, offset_ranges
from flows.engine.config import EngineConfig
from flows.engine.session import Session
from flows.engine.stateful import StatefulBatch
from flows.engine.timed import TimedBatch
from flows.engine.untimed import Untimed
from flows.errors import FlowsError
from flows.ports import Clock, StateCommit, StateStore, TopicPartition
from flows.records import RawRecord
from flows.steps import MaterialiseStep, RekeyStep, StatefulStep, StatelessStep, Step
from flows.steps.dedupe import DeduplicateStep
from flows.steps.timed_state import TimedStatefulStep
from flows.steps.window import WindowStep

#: the step kinds that run as a :class:`TimedBatch`
TIMED_STEPS = (WindowStep, DeduplicateStep, TimedStatefulStep)

log = logging.getLogger("flows.worker")


class BatchStrategy(Protocol):
    """Processes and commits one batch of a worker's records."""

    #: whether positions come from PostgreSQL's watermarks (recovered on assignment)
    keeps_watermarks: bool
    #: whether outputs stored in PostgreSQL may be owed to Kafka (re-emitted first)
    reemits: bool
    #: whether the worker's producer is transactional
    transactional: bool
    #: whether partitions keep a stream time and a commit sequence (recovered with them)
    timed: bool
    #: records per batch
    batch_size: int

    def process(self, session: Session, records: list[RawRecord]) -> None:
        """Processes ``records`` (every record of the poll, in order) and commits them."""
        ...

    def tick(self, session: Session) -> bool:
        """Commits what time alone makes due, without records; whether it did."""
        ...

    def waits(self, session: Session) -> bool:
        """Whether something will still come due by time alone (not idle)."""
        ...

    def recovered(self, session: Session, partitions: list[TopicPartition]) -> None:
        """Called after recovery took ``partitions`` over."""
        ...


class AtLeastOnce(Untimed):
    keeps_watermarks = False
    reemits = False
    transactional = False

    def __init__(self, step: StatelessStep, config: EngineConfig) -> None:
        self.step = step
        self.batch_size = config.batch_size

    def process(self, session: Session, records: list[RawRecord]) -> None:
        result = self.step.process(records)
        session.deliver(result.outputs)
        session.commit_offsets({tp: n for tp, (_, n) in offset_ranges(records).items()})
        session.count(len(records), result)


class Transactional(Untimed):
    keeps_watermarks = False
    reemits = False
    transactional = True

    def __init__(self, step: StatelessStep | RekeyStep, config: EngineConfig) -> None:
        self.step = step
        self.batch_size = config.batch_size

    def process(self, session: Session, records: list[RawRecord]) -> None:
        result = self.step.process(records)
        offsets = {tp: n for tp, (_, n) in offset_ranges(records).items()}
        session.transaction(result.outputs, offsets)
        session.count(len(records), result)


class MaterialiseBatch(Untimed):
    """Rows and watermark in one PostgreSQL transaction; Kafka offsets are a hint.

    Dead letters go out at-least-once before the rows they stand beside are committed.
    """

    keeps_watermarks = True
    reemits = False
    transactional = False

    def __init__(self, step: MaterialiseStep, config: EngineConfig, store: StateStore) -> None:
        self.step = step
        self.store = store
        self.batch_size = config.batch_size

    def process(self, session: Session, records: list[RawRecord]) -> None:
        owned = session.owned
        kept = [raw for run in fresh(records, owned).values() for raw in run]
        if not kept:
            return
        ranges = offset_ranges(kept)
        result = self.step.collect(kept)
        if result.outputs:
            session.deliver(result.outputs)
        started = time.perf_counter()
        self.store.commit(
            StateCommit(
                group=self.step.group_id,
                watermarks={tp: (owned[tp].watermark, n) for tp, (_, n) in ranges.items()},
                shape=self.step.shape,
                rows=list(result.rows.values()),
            )
        )
        session.metrics.observe(
            "db_commit_seconds", time.perf_counter() - started, **session.labels
        )
        for tp, (_, n) in ranges.items():
            owned[tp].watermark = n
        try:
            session.commit_offsets({tp: n for tp, (_, n) in ranges.items()})
        except FlowsError as error:  # only a hint: the watermark decides
            log.info("%s: offset hint not committed: %s", self.step.name, error)
        session.count(len(kept), result)


def _store(step: Step, store: StateStore | None) -> StateStore:
    if store is None:
        raise TypeError(f"step {step.name!r} keeps state: its worker needs a state store")
    return store


def strategy_for(
    step: Step, config: EngineConfig, store: StateStore | None, clock: Clock
) -> BatchStrategy:
    """The strategy of ``step``'s kind, chosen once when its worker is built."""
    if isinstance(step, TIMED_STEPS):
        return TimedBatch(step, config, _store(step, store), clock)
    if isinstance(step, StatefulStep):
        return StatefulBatch(step, config, _store(step, store))
    if isinstance(step, MaterialiseStep):
        return MaterialiseBatch(step, config, _store(step, store))
    if isinstance(step, RekeyStep):
        return Transactional(step, config)
    if isinstance(step, StatelessStep):
        return Transactional(step, config) if step.exactly_once else AtLeastOnce(step, config)
    raise TypeError(f"no batch strategy for a step of type {type(step).__name__}")


__all__ = [
    "AtLeastOnce",
    "BatchStrategy",
    "MaterialiseBatch",
    "StatefulBatch",
    "TimedBatch",
    "Transactional",
    "Untimed",
    "strategy_for",
]
