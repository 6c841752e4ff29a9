"""The processing loops: one worker per step, each with its own consumer and producer.

Delivery guarantees by step kind (the README's "Guarantees" says the same):

* stateless, at-least-once (default): a batch's outputs are produced, every delivery report
  is awaited, and only then are the batch's offsets committed. A crash can repeat a batch's
  outputs, never lose one.
* stateless, exactly-once (opt-in; always for re-key steps): outputs and input offsets are
  committed in one Kafka transaction (``send_offsets_to_transaction``).
* stateful: the protocol of :meth:`Worker._stateful_batch` (PostgreSQL first, Kafka second,
  pending outputs kept in PostgreSQL until Kafka commits them).
* materialise: rows and the input watermark in one PostgreSQL transaction; Kafka offsets
  are only a hint, positions come from the watermark.

Filtered and dead-lettered records advance offsets like any other.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from flows.errors import (
    BrokerUnavailableError,
    FencedError,
    FlowFailedError,
    FlowsError,
    OffsetsAheadError,
    TransientError,
)
from flows.ports import Metrics, NullMetrics, PendingBatch, StateCommit, StateStore, TopicPartition
from flows.records import RawMessage, RawRecord
from flows.steps import (
    BatchResult,
    MaterialiseStep,
    RekeyStep,
    StatefulStep,
    StatelessStep,
    Step,
)
from runtimes.config import Settings
from runtimes.kafka import to_raw, translate

log = logging.getLogger("flows.worker")

#: Test hook for the crash tests: after this many PostgreSQL commits of a stateful step the
#: process kills itself with SIGKILL, before the Kafka transaction of that batch.
CRASH_AFTER_DB_COMMITS = "FLOWS_TEST_CRASH_AFTER_DB_COMMITS"


_partition_of = attrgetter("topic", "partition")


def _runs(records: Sequence[RawRecord]) -> Iterator[tuple[TopicPartition, list[RawRecord]]]:
    """Each run of consecutive records of one partition, in order; a partition may come in
    several runs. A consumer hands out a fetch's records together, so runs are long and the
    per-record work stays in C."""
    for tp, run in groupby(records, _partition_of):
        yield tp, list(run)


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and in total time."""

    attempts: int = 30
    initial: float = 0.2
    maximum: float = 5.0
    total: float = 300.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (attempt - 1)))


@dataclass
class _Partition:
    """What a stateful or materialise worker knows about a partition it owns."""

    watermark: int
    #: Kafka's committed offset as last seen; below ``watermark`` means outputs to re-emit
    committed: int
    cache: dict[bytes, bytes | None] = field(default_factory=dict)


class Worker:
    """Runs one compiled step until stopped; raises nothing, records its failure instead."""

    def __init__(
        self,
        step: Step,
        settings: Settings,
        *,
        store: StateStore | None = None,
        metrics: Metrics | None = None,
        retry: RetryPolicy | None = None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        self.step = step
        self.settings = settings
        self.store = store
        self.metrics = metrics or NullMetrics()
        self.retry = retry or RetryPolicy(
            attempts=step.retry_attempts
            if step.retry_attempts is not None
            else settings.retry_attempts,
            total=step.retry_seconds if step.retry_seconds is not None else settings.retry_seconds,
        )
        self.on_activity = on_activity
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.assigned_once = threading.Event()
        #: partitions this worker's consumer holds, and when that last changed
        self.assignment: set[TopicPartition] = set()
        self.last_rebalance = time.monotonic()
        self.source_partitions: int | None = None
        #: for ``--until-idle``: when this worker last did anything but wait for records, and
        #: whether it is in a batch or a retry, or knows of records it has not read yet
        self.quiet_since = time.monotonic()
        self.busy = False
        self.lagging = False
        self._starts: dict[TopicPartition, int] = {}
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.owned: dict[TopicPartition, _Partition] = {}
        self._needs_reset = False
        self._delivery_errors: list[KafkaError] = []
        self._db_commits = 0
        self._crash_after = int(os.environ.get(CRASH_AFTER_DB_COMMITS, "0") or 0)
        self._thread: threading.Thread | None = None
        self.batch_size = (
            settings.stateful_batch_size if isinstance(step, StatefulStep) else settings.batch_size
        )
        self.transactional = step.exactly_once and not isinstance(step, MaterialiseStep)
        self.labels = {"flow": step.name}

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Creates the consumer and producer and joins the group (the batch loop polls)."""
        settings, step = self.settings, self.step
        self.consumer = Consumer(settings.consumer_config(step.group_id))
        try:
            metadata = self.consumer.list_topics(timeout=settings.startup_timeout)
            self.source_partitions = sum(
                len(metadata.topics[t].partitions)
                for t in step.source_names
                if t in metadata.topics
            )
        except KafkaException as error:
            raise translate(error, f"reading the partitions of {step.source_names}") from error
        transactional_id = f"{step.group_id}.{settings.instance_id}" if self.transactional else None
        # one delivery callback for every message (failures only: delivery.report.only.error)
        self.producer = Producer(
            {**settings.producer_config(transactional_id), "on_delivery": self._on_delivery}
        )
        if transactional_id is not None:
            try:
                self.producer.init_transactions(settings.startup_timeout)
            except KafkaException as error:
                raise translate(error, f"initialising transactions of {step.name!r}") from error
        self.consumer.subscribe(
            list(step.source_names),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"flows-{self.step.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self) -> None:
        """Leaves the group (a last rebalance hands the partitions over) and flushes."""
        if self.consumer is not None:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError) as error:
                log.warning("closing the consumer of %s: %s", self.step.name, error)
            self.consumer = None
        if self.producer is not None:
            try:
                self.producer.flush(self.settings.shutdown_timeout)
            except KafkaException as error:  # a fenced or fatal producer has nothing to flush
                log.warning("closing the producer of %s: %s", self.step.name, error)
            self.producer = None

    def _run(self) -> None:
        attempt, first_failure = 0, 0.0
        while not self.stopping.is_set():
            try:
                if self._needs_reset:
                    self._reset()
                self._batch()
                attempt = 0
            except (TransientError, FencedError) as error:
                attempt += 1
                now = time.monotonic()
                if attempt == 1:
                    first_failure = now
                if isinstance(error, FencedError):
                    log.warning(
                        "%s lost a partition to another worker (%s); rejoining",
                        self.step.name,
                        error,
                    )
                    self._needs_reset = True
                if attempt > self.retry.attempts or now - first_failure > self.retry.total:
                    self.failure = FlowFailedError(
                        f"flow {self.step.name!r} failed {attempt} times in "
                        f"{now - first_failure:.0f} s; last error: {error}"
                    )
                    return
                self.metrics.increment("retries", **self.labels)
                delay = self.retry.delay(attempt)
                log.warning("%s: %s; retry %d in %.1f s", self.step.name, error, attempt, delay)
                self.busy = True  # a failing worker is not an idle one
                self.stopping.wait(delay)
                self.busy = False
                self.quiet_since = time.monotonic()
            except BaseException as error:
                log.error(
                    "flow %s failed: %s",
                    self.step.name,
                    error,
                    exc_info=not isinstance(error, FlowsError),
                )
                self.failure = error
                return

    def settled(self, session_timeout: float) -> bool:
        """True once the assignment is final for an idle check: this worker holds every
        partition of its sources, or no rebalance happened for a session timeout (so a
        killed member that still held partitions has been evicted, or the other members
        are alive and keep theirs)."""
        if not self.assigned_once.is_set():
            return False
        if self.source_partitions is not None and len(self.assignment) >= self.source_partitions:
            return True
        return time.monotonic() - self.last_rebalance > session_timeout

    def idle_since(self, session_timeout: float) -> float | None:
        """When this worker went quiet, or None while it is not idle: its assignment is not
        settled, it is in a batch or a retry (a slow commit or a failing database is not
        idleness), or a partition it holds has records past its position that it has not
        read (an open transaction holds a ``read_committed`` reader back until it commits,
        aborts or times out)."""
        if self.busy or self.lagging or not self.settled(session_timeout):
            return None
        return self.quiet_since

    def _lags(self, consumer: Consumer) -> bool:
        """True when a held partition's position is behind its high watermark as this
        consumer last saw it. Aborted records and transaction markers move the position
        too, so a partition fully read has no lag; records of an open transaction do."""
        held = [KafkaTopicPartition(t, p) for t, p in self.assignment]
        if not held:
            return False
        try:
            for tp in consumer.position(held):
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue  # no fetch answered yet: nothing known to wait for
                offset = tp.offset if tp.offset >= 0 else self._start(consumer, tp)
                if offset < high:
                    return True
        except KafkaException:
            return True  # not known to be caught up
        return False

    def _start(self, consumer: Consumer, tp: KafkaTopicPartition) -> int:
        """Where a partition this worker has read nothing of since its assignment starts:
        the recovered watermark (stateful and materialise steps), else the committed offset,
        else the reset policy's end; asked of the broker once per assignment."""
        key = (tp.topic, tp.partition)
        owned = self.owned.get(key)
        if owned is not None:
            return owned.watermark
        start = self._starts.get(key)
        if start is None:
            # short: this runs between batches, and a stop request waits for it
            timeout = min(5.0, self.settings.startup_timeout)
            start = consumer.committed([tp], timeout=timeout)[0].offset
            if start < 0:
                start = self._reset_start(*consumer.get_watermark_offsets(tp, cached=True))
            self._starts[key] = start
        return start

    def _reset_start(self, low: int, high: int) -> int:
        """Where a partition without a committed offset starts, by the reset policy."""
        return low if self.settings.auto_offset_reset == "earliest" else high

    def _reset(self) -> None:
        """Leaves and rejoins the group with fresh clients, forgetting everything owned."""
        self.owned.clear()
        self.assignment.clear()
        self._starts.clear()
        self.close()
        self.open()
        self._needs_reset = False

    # --- rebalance callbacks (run inside consume(), in the worker's thread) --------------

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self.metrics.increment("rebalances", **self.labels)
        log.info(
            "%s assigned %s",
            self.step.name,
            ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing",
        )
        if isinstance(self.step, StatefulStep | MaterialiseStep) and partitions:
            try:
                partitions = self._recover_positions(consumer, partitions)
            except Exception:
                # Never consume from an unknown position: take the partitions paused and
                # rejoin with fresh clients after a backoff.
                consumer.incremental_assign(partitions)
                consumer.pause(partitions)
                self._needs_reset = True
                raise
        consumer.incremental_assign(partitions)
        self.assignment.update((p.topic, p.partition) for p in partitions)
        self.last_rebalance = self.quiet_since = time.monotonic()
        self.assigned_once.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        # Batches are committed before the next poll, so nothing is in flight here.
        log.info(
            "%s revoked %s",
            self.step.name,
            ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing",
        )
        for p in partitions:
            self.owned.pop((p.topic, p.partition), None)
            self.assignment.discard((p.topic, p.partition))
            self._starts.pop((p.topic, p.partition), None)
        self.last_rebalance = self.quiet_since = time.monotonic()
        if partitions:
            consumer.incremental_unassign(partitions)

    def _recover_positions(
        self, consumer: Consumer, partitions: list[KafkaTopicPartition]
    ) -> list[KafkaTopicPartition]:
        """Reads PostgreSQL's watermark ``W`` and Kafka's committed offset ``C`` of each
        partition, and positions the consumer at ``W``.

        * no ``W`` yet: ``W`` starts at ``C`` (or the reset policy's start);
        * ``C == W``: nothing to do;
        * ``C < W``: batches ``[C, W)`` are applied in PostgreSQL but their Kafka
          transaction never committed: their stored outputs are re-emitted before any new
          batch (see :meth:`_reemit`), nothing is recomputed;
        * ``C > W``: the database went back in time: :class:`OffsetsAheadError`.
        """
        assert self.store is not None
        timeout = self.settings.startup_timeout
        committed = consumer.committed(partitions, timeout=timeout)
        positioned = []
        for tp in committed:
            c = tp.offset
            if c < 0:
                start = self._reset_start(
                    *consumer.get_watermark_offsets(
                        KafkaTopicPartition(tp.topic, tp.partition), timeout=timeout
                    )
                )
            else:
                start = c
            w = self.store.watermark(self.step.group_id, tp.topic, tp.partition, start)
            if c >= 0 and c > w:
                raise OffsetsAheadError(self.step.group_id, tp.topic, tp.partition, c, w)
            self.owned[(tp.topic, tp.partition)] = _Partition(watermark=w, committed=c)
            positioned.append(KafkaTopicPartition(tp.topic, tp.partition, w))
        return positioned

    # --- the batch loop ------------------------------------------------------------------

    def _batch(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        stateful = isinstance(self.step, StatefulStep)
        if stateful:
            self._reemit()
        messages = consumer.consume(self.batch_size, self.settings.batch_linger)
        records = [to_raw(m) for m in messages if m.error() is None]
        failure: KafkaError | None = None
        if len(records) != len(messages):
            for message in messages:
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    failure = error
        # librdkafka frees a fetched record (and, with its last record, the fetch buffer)
        # only when its Message goes: not held through the batch, they are memory twice
        del messages
        try:
            if stateful:
                # consume() may have run an assignment: its pending outputs go out before
                # any new batch commits an offset past them
                self._reemit()
            if failure is not None:
                raise translate(KafkaException(failure), f"consuming {self.step.source_names}")
            if not records:
                self.lagging = self._lags(consumer)
                return
            self.busy = True
            if self.on_activity is not None:
                self.on_activity()
            started = time.perf_counter()
            ranges = self._next_offsets(records)
            self._process(records, ranges)
        except BaseException:
            # The consumer's position is past these records: whatever failed, they must be
            # consumed again, or the next batch would move offsets over them unprocessed.
            self._rewind(self._restart_positions(records))
            raise
        finally:
            if self.busy:
                self.busy = False
                self.quiet_since = time.monotonic()
        self.metrics.observe("batch_size", len(records), **self.labels)
        self.metrics.observe("batch_seconds", time.perf_counter() - started, **self.labels)
        self._positions(ranges)

    def _process(
        self, records: list[RawRecord], ranges: dict[TopicPartition, tuple[int, int]]
    ) -> None:
        step = self.step
        if isinstance(step, StatefulStep):
            self._stateful_batch(step, records)
        elif isinstance(step, MaterialiseStep):
            self._materialise_batch(step, records)
        elif isinstance(step, StatelessStep | RekeyStep):
            self._stateless_batch(step, records, ranges)

    def _restart_positions(self, records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
        """Where a failed batch's partitions resume: the watermark of owned partitions
        (PostgreSQL's word on what is applied), else the batch's first offset."""
        positions: dict[TopicPartition, int] = {}
        keeps_watermarks = isinstance(self.step, StatefulStep | MaterialiseStep)
        for tp, (first, _) in self._next_offsets(records).items():
            if tp in self.owned:
                positions[tp] = self.owned[tp].watermark
            elif not keeps_watermarks:
                positions[tp] = first
        return positions

    def _positions(self, ranges: dict[TopicPartition, tuple[int, int]]) -> None:
        """Committed offset and lag of the batch's partitions (lag from the last fetch's
        high watermark, so no request goes to the broker)."""
        consumer = self.consumer
        assert consumer is not None
        for (topic, partition), (_, next_offset) in ranges.items():
            labels = {**self.labels, "topic": topic, "partition": str(partition)}
            self.metrics.gauge("committed_offset", next_offset, **labels)
            _, high = consumer.get_watermark_offsets(
                KafkaTopicPartition(topic, partition), cached=True
            ) or (0, -1)
            if high >= 0:
                self.metrics.gauge("consumer_lag", max(0, high - next_offset), **labels)

    def _count(self, records: Sequence[RawRecord], result: BatchResult) -> None:
        metrics, labels = self.metrics, self.labels
        metrics.increment("records_consumed", len(records), **labels)
        metrics.increment("records_produced", len(result.outputs) - result.dead_lettered, **labels)
        if result.filtered:
            metrics.increment("records_filtered", result.filtered, **labels)
        if result.dead_lettered:
            metrics.increment("records_dead_lettered", result.dead_lettered, **labels)
        if result.skipped:
            metrics.increment("records_skipped", result.skipped, **labels)

    @staticmethod
    def _next_offsets(records: Sequence[RawRecord]) -> dict[TopicPartition, tuple[int, int]]:
        """First offset and next offset of each partition in the batch."""
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for tp, run in _runs(records):
            first, next_offset = run[0].offset, run[-1].offset + 1
            ranges[tp] = (ranges[tp][0] if tp in ranges else first, next_offset)
        return ranges

    def _rewind(self, positions: dict[TopicPartition, int]) -> None:
        """Seeks back so a failed batch is consumed again."""
        assert self.consumer is not None
        for (topic, partition), offset in positions.items():
            try:
                self.consumer.seek(KafkaTopicPartition(topic, partition, offset))
            except KafkaException as error:  # revoked meanwhile: its new owner takes over
                log.info("not rewinding %s[%s]: %s", topic, partition, error)

    # --- producing -----------------------------------------------------------------------

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._delivery_errors.append(error)

    def _produce(self, outputs: Sequence[RawMessage]) -> None:
        producer = self.producer
        assert producer is not None
        produce = producer.produce
        done, total = 0, len(outputs)
        # Positional arguments: (topic, value, key, partition, on_delivery, callback,
        # timestamp, headers); -1 lets the configured partitioner choose, None keeps the
        # producer's delivery callback. Keywords cost twice as much per call (measured).
        while done < total:
            try:
                for out in outputs[done:] if done else outputs:
                    headers: list[tuple[str, str | bytes | None]] | None = (
                        list(out.headers) if out.headers else None
                    )
                    produce(
                        out.topic, out.value, out.key, -1, None, None, out.timestamp or 0, headers
                    )
                    done += 1
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        producer.poll(0)

    def _flush(self) -> None:
        """Waits for every delivery report; raises if one failed."""
        assert self.producer is not None
        remaining = self.producer.flush(self.settings.shutdown_timeout)
        errors, self._delivery_errors = self._delivery_errors, []
        if remaining:
            raise BrokerUnavailableError(
                f"{remaining} outputs of {self.step.name!r} were not "
                f"acknowledged within {self.settings.shutdown_timeout} s"
            )
        if errors:
            raise translate(KafkaException(errors[0]), f"producing outputs of {self.step.name!r}")

    def _transaction(
        self,
        outputs: Sequence[RawMessage],
        offsets: dict[TopicPartition, int],
    ) -> None:
        """Produces ``outputs`` and commits ``offsets`` in one Kafka transaction.

        On failure the transaction is aborted (or, on a fatal error, the producer is
        replaced) and a :class:`TransientError` or :class:`FencedError` is raised.
        """
        producer, consumer = self.producer, self.consumer
        assert producer is not None and consumer is not None
        started = time.perf_counter()
        try:
            producer.begin_transaction()
            self._produce(outputs)
            producer.send_offsets_to_transaction(
                [KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()],
                consumer.consumer_group_metadata(),
                self.settings.transaction_op_timeout,
            )
            producer.commit_transaction(self.settings.transaction_op_timeout)
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            self._delivery_errors.clear()
            # A producer whose transaction failed is not trusted again: librdkafka can be left
            # in states (epoch bumps after a broker outage) where the next transactional call
            # hangs. The worker rejoins with fresh clients, and recovery on assignment re-emits
            # whatever PostgreSQL committed and Kafka did not.
            self._needs_reset = True
            if isinstance(kafka_error, KafkaError) and kafka_error.fatal():
                raise FencedError(
                    f"the producer of {self.step.name!r} was fenced: {kafka_error.str()}"
                ) from error
            try:
                producer.abort_transaction(self.settings.transaction_op_timeout)
            except KafkaException as abort_error:
                raise FencedError(
                    f"cannot abort the transaction of {self.step.name!r}: {abort_error}"
                ) from error
            if isinstance(kafka_error, KafkaError) and kafka_error.code() in (
                KafkaError.ILLEGAL_GENERATION,
                KafkaError.UNKNOWN_MEMBER_ID,
                KafkaError.FENCED_INSTANCE_ID,
                KafkaError.REBALANCE_IN_PROGRESS,
            ):
                raise FencedError(
                    f"{self.step.name!r} is no longer in the group's "
                    f"generation: {kafka_error.str()}"
                ) from error
            raise translate(error, f"committing the transaction of {self.step.name!r}") from error
        self.metrics.observe("kafka_commit_seconds", time.perf_counter() - started, **self.labels)

    # --- stateless -------------------------------------------------------------------------

    def _stateless_batch(
        self,
        step: StatelessStep | RekeyStep,
        records: list[RawRecord],
        ranges: dict[TopicPartition, tuple[int, int]],
    ) -> None:
        offsets = {tp: n for tp, (_, n) in ranges.items()}
        result = step.process(records)
        if self.transactional:
            self._transaction(result.outputs, offsets)
        else:
            self._produce(result.outputs)
            self._flush()
            self._commit_offsets(offsets)
        self._count(records, result)

    def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        try:
            self.consumer.commit(
                offsets=[KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as error:
            code = error.args[0].code() if error.args else None
            if code == KafkaError._NO_OFFSET:
                return
            raise translate(error, f"committing offsets of {self.step.name!r}") from error

    # --- stateful ----------------------------------------------------------------------------

    def _stateful_batch(self, step: StatefulStep, records: list[RawRecord]) -> None:
        """One batch of a stateful step, exactly-once. The order is the point:

        1. keep only records of owned partitions at or past their watermark ``W`` (anything
           below is already applied);
        2. load the states the batch needs: from the owned partitions' cache, else one
           ``SELECT ... WHERE key = ANY(...)``;
        3. fold every record into its key's state, in offset order;
        4. **PostgreSQL transaction**: the watermark moves from ``W`` to the batch's next
           offset only if it still is ``W`` (else :class:`FencedError`: a zombie aborts); the
           changed states are upserted (deleted when ``None``); the batch's outputs are stored
           as pending; pending rows that Kafka already committed are deleted. Commit.
        5. **Kafka transaction**: produce the outputs, ``send_offsets_to_transaction`` with
           the new offsets and the consumer's group metadata (so a worker fenced by a
           rebalance cannot commit), commit.
        6. only then update the cache and the known committed offsets.

        So Kafka's committed offset ``C`` never passes ``W``, and batch boundaries agree. If
        step 5 fails after step 4, the outputs are re-emitted from PostgreSQL
        (:meth:`_reemit`) before any new batch, here or by the partition's next owner.
        """
        store = self.store
        assert store is not None
        owned = self.owned
        by_partition: dict[TopicPartition, list[RawRecord]] = {}
        for tp, run in _runs(records):
            part = owned.get(tp)
            if part is None:
                continue
            # records below the watermark are applied already (offsets rise within a run)
            fresh = (
                run
                if run[0].offset >= part.watermark
                else [raw for raw in run if raw.offset >= part.watermark]
            )
            if fresh:
                by_partition.setdefault(tp, []).extend(fresh)
        if not by_partition:
            return
        # Load what the cache lacks, in one query.
        missing: list[bytes] = []
        missing_by_tp: dict[TopicPartition, list[bytes]] = {}
        keys_by_tp: dict[TopicPartition, set[bytes]] = {}
        for tp, raws in by_partition.items():
            cache = owned[tp].cache
            keys = keys_by_tp[tp] = step.state_keys(raws)
            absent = missing_by_tp[tp] = [k for k in keys if k not in cache]
            missing.extend(absent)
            hits = len(keys) - len(absent)
            if hits:
                self.metrics.increment("state_cache_hits", hits, **self.labels)
        loaded = store.load(step.table, missing) if missing else {}
        if missing:
            self.metrics.increment("state_cache_misses", len(missing), **self.labels)
        states: dict[bytes, bytes] = {}
        for tp, keys in keys_by_tp.items():  # the batch's keys only, not the whole cache
            cached = owned[tp].cache
            for key in keys:
                value = cached.get(key)
                if value is not None:
                    states[key] = value
        states.update(loaded)
        # Fold per partition so the outputs of each input partition are known.
        changed: dict[bytes, bytes | None] = {}
        outputs: list[RawMessage] = []
        pending: list[PendingBatch] = []
        watermarks: dict[TopicPartition, tuple[int, int]] = {}
        total = BatchResult()
        for tp, raws in by_partition.items():
            result = step.fold(raws, states)
            for key, value in result.states.items():
                changed[key] = value
                if value is None:
                    states.pop(key, None)
                else:
                    states[key] = value
            outputs.extend(result.outputs)
            first, new = raws[0].offset, raws[-1].offset + 1
            watermarks[tp] = (owned[tp].watermark, new)
            if result.outputs:
                pending.append(PendingBatch(tp[0], tp[1], first, new, tuple(result.outputs)))
            total.filtered += result.filtered
            total.dead_lettered += result.dead_lettered
            total.skipped += result.skipped
        total.outputs = outputs
        started = time.perf_counter()
        store.commit(
            StateCommit(
                group=step.group_id,
                watermarks=watermarks,
                table=step.table,
                states=changed,
                pending=pending,
                kafka_committed={
                    tp: owned[tp].committed for tp in by_partition if owned[tp].committed >= 0
                },
            )
        )
        self.metrics.observe("db_commit_seconds", time.perf_counter() - started, **self.labels)
        # PostgreSQL now holds the truth: the watermark and the cache follow it at once, so
        # a failed Kafka transaction below leaves nothing stale (its outputs are re-emitted).
        for tp, (_, new) in watermarks.items():
            part = owned[tp]
            part.watermark = new
            if self.settings.state_cache:
                cache = part.cache
                for key in missing_by_tp[tp]:
                    cache[key] = loaded.get(key)
                cache.update({key: changed[key] for key in keys_by_tp[tp] if key in changed})
                if len(part.cache) > self.settings.state_cache_keys:
                    part.cache.clear()
        self._db_commits += 1
        if self._crash_after and self._db_commits >= self._crash_after:
            log.warning(
                "test hook %s: killing the process between the commits", CRASH_AFTER_DB_COMMITS
            )
            os.kill(os.getpid(), signal.SIGKILL)
        self._transaction(outputs, {tp: new for tp, (_, new) in watermarks.items()})
        for tp in by_partition:
            owned[tp].committed = owned[tp].watermark
        self._count(records, total)

    def _reemit(self) -> None:
        """Re-emits the stored outputs of batches PostgreSQL committed and Kafka did not.

        For every owned partition with ``C < W``: the pending batches with
        ``first_offset >= C`` go out in offset order, in one Kafka transaction that also
        commits offset ``W``. Nothing is recomputed, so nothing counts twice.
        """
        behind = {tp: p for tp, p in self.owned.items() if p.committed < p.watermark}
        if not behind:
            return
        assert self.store is not None
        outputs: list[RawMessage] = []
        for (topic, partition), part in behind.items():
            for batch in self.store.pending(
                self.step.group_id, topic, partition, max(part.committed, 0)
            ):
                outputs.extend(batch.outputs)
        log.info(
            "%s re-emits %d stored outputs of %s",
            self.step.name,
            len(outputs),
            ", ".join(
                f"{t}[{p}] {part.committed}..{part.watermark}" for (t, p), part in behind.items()
            ),
        )
        self.busy = True
        try:
            self._transaction(outputs, {tp: p.watermark for tp, p in behind.items()})
        finally:
            self.busy = False
            self.quiet_since = time.monotonic()
        for part in behind.values():
            part.committed = part.watermark

    # --- materialise ---------------------------------------------------------------------

    def _materialise_batch(self, step: MaterialiseStep, records: list[RawRecord]) -> None:
        """Rows and watermark in one PostgreSQL transaction; Kafka offsets are a hint."""
        store = self.store
        assert store is not None
        owned = self.owned
        kept = [
            r
            for r in records
            if (part := owned.get((r.topic, r.partition))) is not None
            and r.offset >= part.watermark
        ]
        if not kept:
            return
        ranges = self._next_offsets(kept)
        result = step.collect(kept)
        if result.outputs:  # dead letters: at-least-once, before the rows they stand beside
            self._produce(result.outputs)
            self._flush()
        started = time.perf_counter()
        store.commit(
            StateCommit(
                group=step.group_id,
                watermarks={tp: (owned[tp].watermark, n) for tp, (_, n) in ranges.items()},
                shape=step.shape,
                rows=list(result.rows.values()),
            )
        )
        self.metrics.observe("db_commit_seconds", time.perf_counter() - started, **self.labels)
        for tp, (_, n) in ranges.items():
            owned[tp].watermark = n
        try:
            self._commit_offsets({tp: n for tp, (_, n) in ranges.items()})
        except FlowsError as error:  # only a hint: the watermark decides
            log.info("%s: offset hint not committed: %s", step.name, error)
        self._count(kept, result)


__all__ = ["CRASH_AFTER_DB_COMMITS", "RetryPolicy", "Worker"]
