"""Kafka and PostgreSQL from the harness's side: topics, producing inputs, watching outputs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


class Broker:
    """Admin operations plus cheap probes of a topic's committed end and a group's state."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        # read_committed: get_watermark_offsets() then answers the last stable offset, so
        # an open transaction's records are not counted before they commit.
        self._committed = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "bench-probe",
                "isolation.level": "read_committed",
            }
        )
        self._uncommitted = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "bench-probe",
                "isolation.level": "read_uncommitted",
            }
        )
        self.partitions: dict[str, int] = {}

    def close(self) -> None:
        self._committed.close()
        self._uncommitted.close()

    def create_topics(self, names: Iterable[str], partitions: int) -> None:
        names = [n for n in names if n not in self.existing()]
        if not names:
            return
        futures = self.admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
            operation_timeout=30,
        )
        for future in futures.values():
            future.result(timeout=60)
        deadline = time.monotonic() + 30
        while set(names) - set(self.existing()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {names} did not appear within 30 s")
            time.sleep(0.1)
        for n in names:
            self.partitions[n] = partitions
        while any(self.end_offsets(n) < 0 for n in names):  # leaders elected
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {names} have no leaders after 30 s")
            time.sleep(0.1)

    def existing(self) -> set[str]:
        return set(self.admin.list_topics(timeout=20).topics)

    def delete_topics(self, names: Iterable[str]) -> None:
        present = [n for n in names if n in self.existing()]
        if present:
            for future in self.admin.delete_topics(present, operation_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    future.result(timeout=60)

    def delete_groups(self, groups: Iterable[str]) -> None:
        groups = list(groups)
        if groups:
            for future in self.admin.delete_consumer_groups(groups, request_timeout=20).values():
                with contextlib.suppress(KafkaException):
                    future.result(timeout=30)

    def _parts(self, topic: str) -> int:
        if topic not in self.partitions:
            md = self.admin.list_topics(topic, timeout=20).topics[topic]
            self.partitions[topic] = len(md.partitions)
        return self.partitions[topic]

    def end_offsets(self, topic: str, committed: bool = True) -> int:
        """Sum of the partitions' end offsets (LSO when ``committed``); markers included.

        -1 when the broker cannot tell yet (a new topic's leaders are still being elected).
        """
        consumer = self._committed if committed else self._uncommitted
        total = 0
        try:
            for p in range(self._parts(topic)):
                total += consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10, cached=False
                )[1]
        except KafkaException:
            return -1
        return total

    def partition_ends(self, topic: str) -> dict[int, int]:
        """Each partition's last stable offset (what a read_committed reader reads up to)."""
        return {
            p: self._committed.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10, cached=False
            )[1]
            for p in range(self._parts(topic))
        }

    def group_offsets(self, group: str, topic: str) -> int:
        """The sum of ``group``'s committed offsets on ``topic`` (0 for a partition with
        none); -1 when the broker cannot tell this time."""
        request = [
            ConsumerGroupTopicPartitions(
                group, [TopicPartition(topic, p) for p in range(self._parts(topic))]
            )
        ]
        try:
            found = self.admin.list_consumer_group_offsets(request, request_timeout=10)
            listed = found[group].result()
        except KafkaException:
            return -1
        return sum(max(tp.offset, 0) for tp in listed.topic_partitions or [])

    def group_members(self, group: str) -> int | None:
        """How many members ``group`` has (0 for an empty or unknown group); ``None`` when
        the broker cannot tell this time. A killed member counts until its session ends."""
        try:
            description = self.admin.describe_consumer_groups([group], request_timeout=5)[
                group
            ].result()
        except KafkaException:
            return None
        return len(description.members)

    def count(self, topic: str, timeout: float = 120.0) -> int:
        """Records (not transaction markers) readable with read_committed, up to the LSO."""
        return sum(1 for _ in self.read(topic, timeout))

    def read(self, topic: str, timeout: float = 120.0) -> Iterator[tuple[bytes | None, bytes]]:
        """``(key, value)`` of every record readable with read_committed, up to the LSO.

        Stops early, without an error, once ``timeout`` has passed.
        """
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "bench-count",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.max.bytes": 52428800,
            }
        )
        try:
            parts = self._parts(topic)
            ends = {
                p: self._committed.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10, cached=False
                )[1]
                for p in range(parts)
            }
            consumer.assign([TopicPartition(topic, p, 0) for p in range(parts)])
            remaining = {p for p, end in ends.items() if end > 0}
            deadline = time.monotonic() + timeout
            while remaining and time.monotonic() < deadline:
                for message in consumer.consume(10000, 0.5):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            remaining.discard(message.partition())
                        continue
                    yield message.key(), message.value() or b""
                    if message.offset() + 1 >= ends[message.partition()]:  # type: ignore
                        remaining.discard(message.partition())
        finally:
            consumer.close()

    def group_active(self, group: str) -> bool:
        """The group is stable and some member holds partitions: consumption starts now."""
        try:
            description = self.admin.describe_consumer_groups([group], request_timeout=5)[
                group
            ].result()
        except KafkaException:
            return False
        if str(description.state).rsplit(".", 1)[-1] != "STABLE":
            return False
        return any(
            m.assignment is not None and m.assignment.topic_partitions for m in description.members
        )


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produces every record (idempotent, acks=all); returns how many. Raises on failure."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "queue.buffering.max.kbytes": 524288,
        }
    )
    errors: list[Any] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(error)

    count = 0
    send = producer.produce
    for key, value in records:
        while True:
            try:
                send(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10000 == 0:
            producer.poll(0)
    if producer.flush(120) or errors:
        raise RuntimeError(f"producing {topic}: {len(errors)} failed deliveries {errors[:2]}")
    return count


class Database:
    """An autocommit psycopg connection that reconnects when the server went away."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None

    def execute(self, sql: str) -> Any:
        import psycopg

        for attempt in range(3):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                return self._conn.execute(sql)
            except psycopg.OperationalError:
                self.close()
                if attempt == 2:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def table_progress(self, table: str) -> tuple[int, int]:
        """(rows, sum of seq) of a materialised table; (0, 0) while it does not exist."""
        import psycopg

        try:
            row = self.execute(f'SELECT count(*), coalesce(sum(seq), 0) FROM "{table}"').fetchone()
        except psycopg.errors.UndefinedTable:
            return 0, 0
        return int(row[0]), int(row[1])

    def column_sum(self, table: str, column: str) -> int:
        """The sum of ``column`` in ``table``; 0 while the table does not exist."""
        import psycopg

        try:
            row = self.execute(f'SELECT coalesce(sum("{column}"), 0) FROM "{table}"').fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0])

    def drop_tables(self, tables: Iterable[str]) -> None:
        for table in tables:
            self.execute(f'DROP TABLE IF EXISTS "{table}"')

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
