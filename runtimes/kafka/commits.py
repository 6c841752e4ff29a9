"""Offsets committed in the background, one request at a time
(:meth:`flows.broker.Consumer.commit_async` over confluent-kafka).

A synchronous commit costs a round trip to the group coordinator per batch (about 6 ms on
Kafka 4.1, whose coordinator batches its writes for up to 5 ms): at a trickle, batches are
small and that round trip was most of an at-least-once step's latency. Sending every batch's
commit at once without waiting would pile requests up at the coordinator, which answers a
connection's requests one at a time, so its heartbeats wait behind them (measured: the
member's session timed out). Here at most one commit is in flight; offsets given meanwhile
wait, each partition's latest replacing what it had queued, and go when the one in flight is
answered. Nothing is committed before its batch's outputs are acknowledged (the caller's
order), so a commit that is late, lost or refused only means records processed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from flows.broker import TopicPartition
from flows.errors import TransientError
from runtimes.kafka.errors import GENERATION_CODES, translate

log = logging.getLogger("flows.kafka")

#: how long offsets whose commit failed in a way that passes wait before they go again,
#: unless newer offsets of the same consumer go first
RETRY_AFTER_S = 0.5


class BackgroundCommits:
    """The queue of offsets a consumer commits without waiting for the broker.

    Runs in the consumer's polling thread: :meth:`done` is confluent-kafka's ``on_commit``
    callback, which librdkafka serves inside ``consume()`` and ``close()``.
    """

    def __init__(
        self,
        name: str,
        assignment: Callable[[], Collection[TopicPartition]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self.consumer: Consumer | None = None
        #: the partitions the consumer holds now: a failed commit is retried for those only
        self._assignment = assignment
        self._queued: dict[TopicPartition, int] = {}
        self._in_flight = 0
        self._retry_at = 0.0
        self._failure: KafkaError | None = None

    def add(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Queues ``offsets`` and sends the queue unless a commit is in flight; raises a
        failure of an earlier commit that does not pass by itself."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise translate(KafkaException(failure), f"committing offsets of {self.name}")
        self._queued.update(offsets)
        self._retry_at = 0.0
        self.send()

    def send(self) -> None:
        """Sends what is queued, unless a commit is in flight or a failed one waits."""
        if not self._queued or self._in_flight or self._clock() < self._retry_at:
            return
        assert self.consumer is not None
        queued, self._queued = self._queued, {}
        try:
            self.consumer.commit(
                offsets=[KafkaTopicPartition(t, p, o) for (t, p), o in queued.items()],
                asynchronous=True,
            )
        except KafkaException as error:
            self._requeue(queued)
            raise translate(error, f"committing offsets of {self.name}") from error
        self._in_flight += 1

    def done(self, error: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        """A background commit was answered (``on_commit``; librdkafka calls it for these
        asynchronous commits only)."""
        self._in_flight = max(0, self._in_flight - 1)
        failed = {
            (p.topic, p.partition): p.offset
            for p in partitions
            if p.error is not None or error is not None
        }
        reason = error or next((p.error for p in partitions if p.error is not None), None)
        if reason is None or reason.code() == KafkaError._NO_OFFSET:
            return
        passes = isinstance(translate(KafkaException(reason), "committing"), TransientError)
        if passes or reason.code() in GENERATION_CODES:
            # The group moved or its coordinator did: the offsets of partitions still held
            # go again (with the member's new generation), unless newer ones went first.
            log.info("%s: offsets not committed yet (%s); retrying", self.name, reason.str())
            held = set(self._assignment())
            self._requeue({tp: o for tp, o in failed.items() if tp in held})
            self._retry_at = self._clock() + RETRY_AFTER_S
        else:
            log.warning("%s: committing offsets failed: %s", self.name, reason.str())
            self._failure = reason

    def take(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Removes and returns the queued offsets of ``partitions`` (revoked or lost)."""
        return {tp: self._queued.pop(tp) for tp in partitions if tp in self._queued}

    def take_all(self) -> dict[TopicPartition, int]:
        queued, self._queued = self._queued, {}
        return queued

    def _requeue(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self._queued.setdefault(tp, offset)  # a newer offset queued meanwhile wins
