"""A worker's clients between two resets, the partitions it owns, and the Kafka side of
each commit (deliveries, offsets, transactions) over the broker port."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flows.broker import Consumer, Producer
from flows.errors import FencedError, FlowsError, KafkaFencedError
from flows.ports import Metrics, TopicPartition
from flows.records import RawMessage
from flows.steps import BatchResult, Step

log = logging.getLogger("flows.worker")


@dataclass
class OwnedPartition:
    """What a stateful or materialise worker knows of a partition it owns."""

    #: PostgreSQL's watermark: the next input offset whose effect is not yet in the database
    watermark: int
    #: Kafka's committed offset as last seen (-1: none); below ``watermark`` means stored
    #: outputs to re-emit before any new batch
    committed: int
    cache: dict[bytes, bytes | None] = field(default_factory=dict)
    #: timed steps: the commit sequence in PostgreSQL and as Kafka last committed it
    #: (below ``seq``: a tick's outputs are owed even when ``committed == watermark``)
    seq: int = 0
    committed_seq: int = 0
    #: timed steps: the stream time committed with the watermark (ms; None before any)
    stream_time: int | None = None
    #: timed steps: the smallest due time of the partition's rows by stream time, and by
    #: the wall clock (None: no such row)
    next_due: int | None = None
    next_wall_due: int | None = None
    #: timed steps: when (monotonic clock) a record of the partition last arrived
    arrived: float = 0.0

    @property
    def owes(self) -> bool:
        """Whether PostgreSQL holds outputs that Kafka has not committed."""
        return self.committed < self.watermark or self.committed_seq < self.seq


class Session:
    """The consumer and producer of one worker until it resets, and what it owns.

    A session whose Kafka transaction failed is not trusted again (librdkafka can be left in
    states, such as epoch bumps after a broker outage, where the next transactional call
    hangs): it sets :attr:`needs_reset`, the worker replaces it, and recovery on assignment
    re-emits whatever PostgreSQL committed and Kafka did not.
    """

    def __init__(
        self,
        step: Step,
        consumer: Consumer,
        producer: Producer,
        metrics: Metrics,
        labels: dict[str, str],
    ) -> None:
        self.step = step
        self.consumer = consumer
        self.producer = producer
        self.metrics = metrics
        self.labels = labels
        self.owned: dict[TopicPartition, OwnedPartition] = {}
        self.assignment: set[TopicPartition] = set()
        #: where partitions this session has read nothing of start (asked once each)
        self.starts: dict[TopicPartition, int] = {}
        self.needs_reset = False
        #: how many times partitions were revoked from this session (a batch read over
        #: several polls drops the records of partitions revoked meanwhile)
        self.revocations = 0

    def deliver(self, outputs: Sequence[RawMessage]) -> None:
        """Produces ``outputs`` and waits until every one is acknowledged."""
        if outputs:
            self.producer.produce(outputs)
        self.producer.flush()

    def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commits consumer offsets in the background (at-least-once steps commit after
        their outputs are acknowledged; a late or lost commit repeats records, never loses
        one; materialise steps' offsets are hints)."""
        self.consumer.commit_async(offsets)

    def transaction(
        self,
        outputs: Sequence[RawMessage],
        offsets: Mapping[TopicPartition, int],
        metadata: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        """Produces ``outputs`` and commits ``offsets`` in one Kafka transaction, with this
        member's group metadata, so a member fenced by a rebalance cannot commit; each
        offset carries its ``metadata`` string (timed steps: the commit sequence).

        On failure the transaction is aborted and the error raised (a
        :class:`~flows.errors.FencedError` when even the abort failed); the session is
        marked for reset either way.
        """
        producer = self.producer
        started = time.perf_counter()
        try:
            producer.begin_transaction()
            if outputs:
                producer.produce(outputs)
            producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata(), metadata)
            producer.commit_transaction()
        except FlowsError as error:
            self.needs_reset = True
            if not isinstance(error, FencedError):
                try:
                    producer.abort_transaction()
                except FlowsError as abort_error:
                    raise KafkaFencedError(
                        f"cannot abort the transaction of {self.step.name!r}: {abort_error}"
                    ) from error
            raise
        self.metrics.observe("kafka_commit_seconds", time.perf_counter() - started, **self.labels)

    def count(self, consumed: int, result: BatchResult) -> None:
        metrics, labels = self.metrics, self.labels
        metrics.increment("records_consumed", consumed, **labels)
        metrics.increment("records_produced", len(result.outputs) - result.dead_lettered, **labels)
        if result.filtered:
            metrics.increment("records_filtered", result.filtered, **labels)
        if result.dead_lettered:
            metrics.increment("records_dead_lettered", result.dead_lettered, **labels)
        if result.skipped:
            metrics.increment("records_skipped", result.skipped, **labels)

    def close(self) -> None:
        """Leaves the group (a last rebalance hands the partitions over) and flushes."""
        for what, release in (("consumer", self.consumer.close), ("producer", self.producer.close)):
            try:
                release()
            except FlowsError as error:  # a fenced or fatal client has nothing to hand over
                log.warning("closing the %s of %s: %s", what, self.step.name, error)
