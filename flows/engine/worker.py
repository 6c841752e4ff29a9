"""The worker loop: one compiled step over the broker port, the state store, a clock.

The same loop runs on Kafka (``runtimes``, a thread per step) and in memory
(:class:`flows.testing.TestDriver`, turn by turn): poll, re-emit what is owed, process a
batch with the step's strategy (:mod:`flows.engine.strategies`), retry what passes, rejoin
when fenced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from flows.broker import Broker
from flows.engine.batches import offset_ranges
from flows.engine.config import EngineConfig, RetryPolicy
from flows.engine.recovery import recover, reemit, reset_start
from flows.engine.session import Session
from flows.engine.strategies import strategy_for
from flows.errors import FencedError, FlowFailedError, FlowsError, TransientError
from flows.ports import Clock, Metrics, NullMetrics, StateStore, SystemClock, TopicPartition
from flows.records import RawRecord
from flows.steps import Step

log = logging.getLogger("flows.worker")


def _names(partitions: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in partitions) or "nothing"


class _Listener:
    """The worker's side of a rebalance, for one session."""

    def __init__(self, worker: Worker, session: Session) -> None:
        self.worker = worker
        self.session = session

    def assigned(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        worker, session = self.worker, self.session
        worker.metrics.increment("rebalances", **session.labels)
        log.info("%s assigned %s", worker.step.name, _names(partitions))
        starts: Mapping[TopicPartition, int] = {}
        if worker.strategy.keeps_watermarks and partitions:
            assert worker.store is not None
            try:
                strategy = worker.strategy
                starts = recover(
                    session,
                    worker.store,
                    partitions,
                    worker.config.auto_offset_reset,
                    strategy.timed,
                )
                strategy.recovered(session, list(partitions))
            except BaseException:
                # the consumer keeps them paused: rejoin with fresh clients after a backoff
                session.needs_reset = True
                raise
        session.assignment.update(partitions)
        worker.last_rebalance = worker.quiet_since = worker.clock.monotonic()
        worker.assigned_once.set()
        return starts

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        # Batches are committed before the next poll, so nothing is in flight here (a poll
        # that tops a batch up drops the records of what it revokes: see Worker._poll).
        worker, session = self.worker, self.session
        log.info("%s revoked %s", worker.step.name, _names(partitions))
        session.revocations += 1
        for tp in partitions:
            session.owned.pop(tp, None)
            session.assignment.discard(tp)
            session.starts.pop(tp, None)
        worker.last_rebalance = worker.quiet_since = worker.clock.monotonic()


class Worker:
    """Runs one compiled step: :meth:`turn` by turn, or in a thread (:meth:`start`).

    A transient failure or a fencing retries the batch after a backoff (a fencing with
    fresh clients); one that persists past the retry policy is a
    :class:`~flows.errors.FlowFailedError`. Any other error stops the worker: :meth:`turn`
    raises it, the thread records it in :attr:`failure`.
    """

    def __init__(
        self,
        step: Step,
        broker: Broker,
        config: EngineConfig,
        *,
        store: StateStore | None = None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        self.step = step
        self.broker = broker
        self.config = config
        self.store = store
        self.metrics = metrics or NullMetrics()
        self.clock = clock or SystemClock()
        self.retry = retry or RetryPolicy(
            attempts=step.retry_attempts
            if step.retry_attempts is not None
            else config.retry_attempts,
            total=step.retry_seconds if step.retry_seconds is not None else config.retry_seconds,
        )
        self.on_activity = on_activity
        self.strategy = strategy_for(step, config, store, self.clock)
        #: metric labels: the flow as the user named it, and the step of it (a flow with a
        #: state key runs as two steps, ``count.rekey`` and ``count``)
        self.labels = {"flow": step.flow, "step": step.name}
        self.session: Session | None = None
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.assigned_once = threading.Event()
        self.last_rebalance = self.quiet_since = self.clock.monotonic()
        self.source_partitions: int | None = None
        #: for ``--until-idle``: whether it is in a batch or a retry, or knows of records it
        #: has not read yet
        self.busy = False
        self.lagging = False
        #: the failed attempts in a row, when the first failed, when the next may run
        self._attempt = 0
        self._first_failure = 0.0
        self.retry_at: float | None = None
        self._thread: threading.Thread | None = None

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this worker's consumer holds."""
        return self.session.assignment if self.session is not None else set()

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Creates the clients and joins the group (the first poll takes the partitions)."""
        step, config = self.step, self.config
        client_id = f"{step.group_id}.{config.instance_id}"
        consumer = self.broker.consumer(step.group_id, client_id)
        try:
            self.source_partitions = consumer.partition_count(step.source_names)
            transactional_id = client_id if self.strategy.transactional else None
            producer = self.broker.producer(transactional_id, client_id)
        except BaseException:
            consumer.close()
            raise
        session = Session(step, consumer, producer, self.metrics, self.labels)
        try:
            if transactional_id is not None:
                producer.init_transactions()
            consumer.subscribe(step.source_names, _Listener(self, session))
        except BaseException:
            session.close()
            raise
        self.session = session

    def close(self) -> None:
        """Leaves the group (its partitions go to other members) and flushes."""
        if self.session is not None:
            self.session.close()
            self.session = None

    def abandon(self) -> None:
        """Drops the clients without a word to the broker, as a killed process does: the
        group evicts the member when its session times out, and a new producer with the
        same transactional id aborts what it left open."""
        self.session = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"flows-{self.step.name}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def run(self) -> None:
        """Turns until stopped or failed; raises nothing, records the failure instead."""
        while not self.stopping.is_set():
            try:
                self.turn()
            except BaseException as error:
                log.error(
                    "flow %s failed: %s",
                    self.step.name,
                    error,
                    exc_info=not isinstance(error, FlowsError),
                )
                self.failure = error
                return
            if self.retry_at is not None:
                self.busy = True  # a failing worker is not an idle one
                self.stopping.wait(max(0.0, self.retry_at - self.clock.monotonic()))
                self.busy = False
                self.quiet_since = self.clock.monotonic()

    # --- one turn ------------------------------------------------------------------------

    def turn(self) -> bool:
        """A reset if due, the outputs owed, one poll and its batch. Returns whether it did
        any work (processed records, re-emitted outputs); False while backing off."""
        if self.retry_at is not None:
            if self.clock.monotonic() < self.retry_at:
                return False
            self.retry_at = None
        try:
            if self.session is None or self.session.needs_reset:
                self._reset()
            worked = self._batch()
        except (TransientError, FencedError) as error:
            self._failed(error)
            return False
        self._attempt = 0
        return worked

    def _failed(self, error: TransientError | FencedError) -> None:
        self._attempt += 1
        now = self.clock.monotonic()
        if self._attempt == 1:
            self._first_failure = now
        if isinstance(error, FencedError):
            log.warning(
                "%s lost a partition to another worker (%s); rejoining", self.step.name, error
            )
            if self.session is not None:
                self.session.needs_reset = True
        elapsed = now - self._first_failure
        if self._attempt > self.retry.attempts or elapsed > self.retry.total:
            raise FlowFailedError(
                f"flow {self.step.name!r} failed {self._attempt} times in {elapsed:.0f} s; "
                f"last error: {error}"
            ) from error
        self.metrics.increment("retries", **self.labels)
        delay = self.retry.delay(self._attempt)
        log.warning("%s: %s; retry %d in %.1f s", self.step.name, error, self._attempt, delay)
        self.retry_at = now + delay

    def _reset(self) -> None:
        """Leaves and rejoins the group with fresh clients, forgetting everything owned."""
        self.close()
        self.open()

    def _reemit(self, session: Session) -> bool:
        if not self.strategy.reemits or not any(p.owes for p in session.owned.values()):
            return False  # nothing owed: no work, so no activity either
        assert self.store is not None
        self.busy = True
        try:
            return reemit(session, self.store, self.strategy.timed) > 0
        finally:
            self.busy = False
            self.quiet_since = self.clock.monotonic()

    def _batch(self) -> bool:
        session = self.session
        assert session is not None
        worked = self._reemit(session)
        records = self._poll(session)
        try:
            # the poll may have run an assignment: what it owes goes out before any new
            # batch commits an offset past it
            worked = self._reemit(session) or worked
            if not records:
                self.lagging = self._lags(session)
                return self._tick(session) or worked
            self.busy = True
            if self.on_activity is not None:
                self.on_activity()
            started = time.perf_counter()
            self.strategy.process(session, records)
        except BaseException:
            # The consumer's position is past these records: whatever failed, they must be
            # consumed again, or the next batch would move offsets over them unprocessed.
            self._rewind(session, records)
            raise
        finally:
            if self.busy:
                self.busy = False
                self.quiet_since = self.clock.monotonic()
        labels = session.labels
        self.metrics.observe("batch_size", len(records), **labels)
        self.metrics.observe("batch_seconds", time.perf_counter() - started, **labels)
        self._gauges(session, offset_ranges(records))
        self._tick(session)  # a quiet partition closes its windows while others are busy
        return True

    def _poll(self, session: Session) -> list[RawRecord]:
        """The records of one batch: what the consumer has fetched, topped up while the
        broker holds more for it.

        A batch closes when it is full, when nothing more is coming (every partition held
        is read up to its high watermark as the last fetch saw it), or when it has waited
        ``batch_linger`` for more. Under load the broker holds more, so batches fill up and
        their commits stay few; at a trickle a batch goes as soon as what came is read,
        instead of waiting out the linger for records that are not there. With nothing
        fetched, the first poll waits up to ``batch_linger`` for a record.
        """
        consumer, size = session.consumer, self.strategy.batch_size
        linger = self.config.batch_linger
        records = consumer.poll(size, linger)
        if not records or len(records) >= size:
            return records
        revocations = session.revocations
        deadline = self.clock.monotonic() + linger
        try:
            while len(records) < size and self._lags(session):
                left = deadline - self.clock.monotonic()
                more = consumer.poll(size - len(records), left) if left > 0 else []
                if not more:
                    break
                records.extend(more)
        except BaseException:
            self._rewind(session, records)  # read, not processed: read again
            raise
        if session.revocations != revocations:
            # a poll that topped the batch up took partitions away: their records are the
            # new owner's to process (and nothing of them was committed here)
            held = session.assignment
            records = [r for r in records if (r.topic, r.partition) in held]
        return records

    def _tick(self, session: Session) -> bool:
        """Runs what time alone makes due (windows closing on a quiet partition)."""
        self.busy = True
        try:
            ticked = self.strategy.tick(session)
        finally:
            self.busy = False
        if ticked:
            self.quiet_since = self.clock.monotonic()
        return ticked

    def _rewind(self, session: Session, records: Sequence[RawRecord]) -> None:
        """Seeks back so a failed batch is consumed again: owned partitions to their
        watermark (PostgreSQL's word on what is applied), others to the batch's start."""
        for tp, (first, _) in offset_ranges(records).items():
            if tp in session.owned:
                offset = session.owned[tp].watermark
            elif not self.strategy.keeps_watermarks:
                offset = first
            else:
                continue  # revoked meanwhile: its new owner takes over
            try:
                session.consumer.seek(tp, offset)
            except FlowsError as error:
                log.info("not rewinding %s[%s]: %s", tp[0], tp[1], error)

    # --- idleness and lag ----------------------------------------------------------------

    def settled(self, session_timeout: float) -> bool:
        """True once the assignment is final for an idle check: this worker holds every
        partition of its sources, or no rebalance happened for a session timeout (so a
        killed member that still held partitions has been evicted, or the other members
        are alive and keep theirs)."""
        if not self.assigned_once.is_set():
            return False
        if self.source_partitions is not None and len(self.assignment) >= self.source_partitions:
            return True
        return self.clock.monotonic() - self.last_rebalance > session_timeout

    def idle_since(self, session_timeout: float) -> float | None:
        """When this worker went quiet, or None while it is not idle: its assignment is not
        settled, it is in a batch or a retry (a slow commit or a failing database is not
        idleness), or a partition it holds has records past its position that it has not
        read (an open transaction holds a ``read_committed`` reader back until it commits,
        aborts or times out)."""
        if self.busy or self.lagging or not self.settled(session_timeout):
            return None
        if self.session is not None and self.strategy.waits(self.session):
            return None  # windows will still close by the wall clock
        return self.quiet_since

    def _lags(self, session: Session) -> bool:
        """True when a held partition's position is behind its high watermark as this
        consumer last saw it. Aborted records and transaction markers move the position
        too, so a partition fully read has no lag; records of an open transaction do."""
        consumer = session.consumer
        try:
            for tp in sorted(session.assignment):
                marks = consumer.watermarks(tp, cached=True)
                if marks is None:
                    continue  # no fetch answered yet: nothing known to wait for
                position = consumer.position(tp)
                if (position if position is not None else self._start(session, tp)) < marks[1]:
                    return True
        except FlowsError:
            return True  # not known to be caught up
        return False

    def _start(self, session: Session, tp: TopicPartition) -> int:
        """Where a partition this worker has read nothing of since its assignment starts:
        the recovered watermark, else the committed offset, else the reset policy's start;
        asked of the broker once per assignment."""
        owned = session.owned.get(tp)
        if owned is not None:
            return owned.watermark
        start = session.starts.get(tp)
        if start is None:
            start = session.consumer.committed([tp]).get(tp, -1)
            if start < 0:
                start = reset_start(
                    session.consumer, tp, self.config.auto_offset_reset, cached=True
                )
            session.starts[tp] = start
        return start

    def _gauges(self, session: Session, ranges: dict[TopicPartition, tuple[int, int]]) -> None:
        """Committed offset and lag of the batch's partitions (lag from the last fetch's
        high watermark, so no request goes to the broker)."""
        for (topic, partition), (_, next_offset) in ranges.items():
            labels = {**session.labels, "topic": topic, "partition": str(partition)}
            self.metrics.gauge("committed_offset", next_offset, **labels)
            marks = session.consumer.watermarks((topic, partition), cached=True)
            if marks is not None:
                self.metrics.gauge("consumer_lag", max(0, marks[1] - next_offset), **labels)
