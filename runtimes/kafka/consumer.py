"""The broker port's consumer over confluent-kafka (:class:`flows.broker.Consumer`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from flows.broker import RebalanceListener, TopicPartition
from flows.errors import BrokerError, FlowsError, KafkaFencedError
from flows.records import RawRecord
from runtimes.kafka.commits import BackgroundCommits
from runtimes.kafka.errors import GENERATION_CODES, translate
from runtimes.kafka.records import to_raw

log = logging.getLogger("flows.kafka")


class KafkaConsumer:
    """A ``read_committed`` group member that commits by hand.

    ``timeout`` bounds each request that asks the broker (committed offsets, watermarks,
    metadata); a poll waits ``timeout`` of its own.
    """

    def __init__(self, config: dict[str, Any], timeout: float) -> None:
        self.name = str(config.get("client.id", config.get("group.id", "?")))
        self.timeout = timeout
        self._commits = BackgroundCommits(self.name, self._held)
        self._consumer = Consumer({**config, "on_commit": self._commits.done})
        self._commits.consumer = self._consumer
        self._listener: RebalanceListener | None = None
        self._topics: tuple[str, ...] = ()

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._listener, self._topics = listener, tuple(topics)
        self._consumer.subscribe(
            list(topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _held(self) -> list[TopicPartition]:
        return [(p.topic, p.partition) for p in self._consumer.assignment()]

    # rebalance callbacks run inside consume(), in the polling thread; what they raise comes
    # out of consume()

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        assert self._listener is not None
        try:
            starts = self._listener.assigned([(p.topic, p.partition) for p in partitions])
        except BaseException:
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)  # never consume from an unknown position
            raise
        consumer.incremental_assign(
            [
                KafkaTopicPartition(p.topic, p.partition, starts[(p.topic, p.partition)])
                if (p.topic, p.partition) in starts
                else p
                for p in partitions
            ]
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        # offsets still queued for the background go now, while the partitions are ours
        self._commit_now(self._commits.take([(p.topic, p.partition) for p in partitions]))
        self._on_lost(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        assert self._listener is not None
        revoked = [(p.topic, p.partition) for p in partitions]
        self._commits.take(revoked)  # lost: another member owns them, commits would fail
        self._listener.revoked(revoked)
        if partitions:
            consumer.incremental_unassign(partitions)

    def _commit_now(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commits queued offsets synchronously, on revocation and close; a failure only
        means their records are processed again, so it is logged, not raised."""
        if not offsets:
            return
        try:
            self._consumer.commit(
                offsets=[KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as error:
            log.info("%s: queued offsets not committed (%s): processed again", self.name, error)

    def poll(self, max_records: int, timeout: float) -> list[RawRecord]:
        """Records of the poll; a consume error is raised after the fetched records'
        partitions are rewound to their first offset, so nothing is skipped."""
        self._commits.send()  # offsets that waited for the commit in flight (none fetched yet)
        try:
            # librdkafka's consume() waits out its timeout until it has max_records: a
            # batch would always wait the whole linger. What is fetched goes at once; when
            # nothing is, the wait is for the first record only, then the queue is drained.
            messages = self._consumer.consume(max_records, 0)
            if not messages and timeout > 0:
                messages = self._consumer.consume(1, timeout)
                if messages and max_records > 1:
                    messages.extend(self._consumer.consume(max_records - 1, 0))
        except KafkaException as error:
            raise translate(error, f"consuming {list(self._topics)}") from error
        records = [to_raw(m) for m in messages if m.error() is None]
        if len(records) != len(messages):
            failure = next(
                (
                    e
                    for m in messages
                    if (e := m.error()) is not None and e.code() != KafkaError._PARTITION_EOF
                ),
                None,
            )
            if failure is not None:
                del messages
                firsts: dict[TopicPartition, int] = {}
                for raw in records:
                    firsts.setdefault((raw.topic, raw.partition), raw.offset)
                for tp, offset in firsts.items():
                    with contextlib.suppress(FlowsError):  # revoked: its new owner reads it
                        self.seek(tp, offset)
                failed = KafkaException(failure)
                raise translate(failed, f"consuming {list(self._topics)}") from failed
        # librdkafka frees a fetched record (and, with its last record, the fetch buffer)
        # only when its Message goes: not held through the batch, they are memory twice
        del messages
        return records

    def seek(self, partition: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(KafkaTopicPartition(partition[0], partition[1], offset))
        except KafkaException as error:
            raise translate(error, f"seeking {partition[0]}[{partition[1]}]") from error

    def position(self, partition: TopicPartition) -> int | None:
        try:
            (found,) = self._consumer.position([KafkaTopicPartition(*partition)])
        except KafkaException as error:
            raise translate(error, f"the position of {partition[0]}[{partition[1]}]") from error
        return found.offset if found.offset >= 0 else None

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        try:
            found = self._consumer.committed(
                [KafkaTopicPartition(t, p) for t, p in partitions], timeout=self.timeout
            )
        except KafkaException as error:
            raise translate(error, f"reading the committed offsets of {self.name}") from error
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else -1 for tp in found}

    def committed_metadata(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        """librdkafka gives None for a partition without a committed offset, and for one
        committed without metadata (a plain commit); both read ""."""
        try:
            found = self._consumer.committed(
                [KafkaTopicPartition(t, p) for t, p in partitions], timeout=self.timeout
            )
        except KafkaException as error:
            raise translate(error, f"reading the committed metadata of {self.name}") from error
        return {(tp.topic, tp.partition): tp.metadata or "" for tp in found}

    def watermarks(self, partition: TopicPartition, cached: bool) -> tuple[int, int] | None:
        tp = KafkaTopicPartition(*partition)
        try:
            if cached:
                marks = self._consumer.get_watermark_offsets(tp, cached=True)
            else:
                marks = self._consumer.get_watermark_offsets(tp, timeout=self.timeout)
        except KafkaException as error:
            raise translate(error, f"the watermarks of {partition[0]}[{partition[1]}]") from error
        if marks is None or marks[1] < 0:
            return None
        return int(marks[0]), int(marks[1])

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            self._consumer.commit(
                offsets=[KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            code = kafka_error.code() if isinstance(kafka_error, KafkaError) else None
            if code == KafkaError._NO_OFFSET:
                return
            if code in GENERATION_CODES:
                raise KafkaFencedError(
                    f"{self.name} is no longer in the group's generation: {kafka_error}"
                ) from error
            raise translate(error, f"committing offsets of {self.name}") from error

    def commit_async(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._commits.add(offsets)

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def partition_count(self, topics: Sequence[str]) -> int:
        try:
            metadata = self._consumer.list_topics(timeout=self.timeout)
        except KafkaException as error:
            raise translate(error, f"reading the partitions of {list(topics)}") from error
        return sum(len(metadata.topics[t].partitions) for t in topics if t in metadata.topics)

    def close(self) -> None:
        try:
            self._commit_now(self._commits.take_all())
            self._consumer.close()  # waits for the commit in flight
        except (KafkaException, RuntimeError) as error:
            raise BrokerError(f"closing the consumer {self.name}: {error}") from error
