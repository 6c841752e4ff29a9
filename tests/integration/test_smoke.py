"""Smoke tests of the services themselves: if these fail, nothing else can pass.

(a) an idempotent producer and a consumer group move 10,000 keyed messages exactly once;
(b) the broker's transactions work: a committed transaction is visible to a read_committed
    consumer, an aborted one is not, though it is in the log;
(c) PostgreSQL (>= 15) answers SQLAlchemy Core through psycopg 3, in the test's own schema.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

pytestmark = pytest.mark.integration

TopicFactory = Callable[..., str]
UniqueFn = Callable[[str], str]

CONSUME_TIMEOUT_S = 60.0


def _delivery_counter() -> tuple[dict[str, int], Callable[[KafkaError | None, object], None]]:
    counts = {"ok": 0, "failed": 0}

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        counts["failed" if err is not None else "ok"] += 1

    return counts, on_delivery


def _key(msg: Message) -> bytes:
    key = msg.key()
    assert isinstance(key, bytes)
    return key


def _value(msg: Message) -> bytes:
    value = msg.value()
    assert isinstance(value, bytes)
    return value


def _partition(msg: Message) -> int:
    partition = msg.partition()
    assert partition is not None
    return partition


def _drain(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    isolation_level: str,
    end_offsets: dict[int, int],
) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of ``topic`` from the start up to ``end_offsets``.

    Reads each partition until the consumer reports its end at or past the given offset
    (for read_committed, the end is the last stable offset, which reaches the log end only
    once every transaction's marker is written).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"drain-{topic}-{isolation_level}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation_level,
        }
    )
    out: list[tuple[bytes, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        pending = {p for p in range(partitions) if end_offsets.get(p, 0) > 0}
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{isolation_level}: partitions {pending} never reached the end")
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    offset = msg.offset()
                    if offset is not None and offset >= end_offsets.get(_partition(msg), 0):
                        pending.discard(_partition(msg))
                    continue
                out.append((_key(msg), _value(msg)))
    finally:
        consumer.close()
    return out


def _end_offsets(
    bootstrap_servers: str, topic: str, partitions: int, expected_total: int
) -> dict[int, int]:
    """The log end offset (high watermark) of every partition, once they add up as expected.

    The transaction coordinator writes the commit/abort markers after it answers the
    producer, so the end offsets can lag a moment behind ``commit``/``abort_transaction``.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"wm-{topic}"})
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    try:
        while True:
            ends = {
                p: consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10, cached=False
                )[1]
                for p in range(partitions)
            }
            if sum(ends.values()) >= expected_total or time.monotonic() > deadline:
                return ends
            time.sleep(0.1)
    finally:
        consumer.close()


def test_idempotent_producer_and_group_consumer_move_every_message_once(
    bootstrap_servers: str, topic_factory: TopicFactory, group_id: str
) -> None:
    total, partitions = 10_000, 3
    topic = topic_factory("smoke-eos", partitions=partitions)

    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "linger.ms": 5}
    )
    counts, on_delivery = _delivery_counter()
    for i in range(total):
        producer.produce(topic, key=f"k-{i}", value=f"v-{i}", on_delivery=on_delivery)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert counts == {"ok": total, "failed": 0}

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    seen: Counter[bytes] = Counter()
    values: dict[bytes, bytes] = {}
    per_partition: Counter[int] = Counter()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while sum(seen.values()) < total and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                seen[_key(msg)] += 1
                values[_key(msg)] = _value(msg)
                per_partition[_partition(msg)] += 1
        # Nothing more may come.
        for msg in consumer.consume(num_messages=1000, timeout=1.0):
            if msg.error() is None:
                seen[_key(msg)] += 1
        consumer.commit(asynchronous=False)
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()

    expected_keys = {f"k-{i}".encode() for i in range(total)}
    assert set(seen) == expected_keys
    assert [k for k, n in seen.items() if n != 1] == []
    assert all(values[f"k-{i}".encode()] == f"v-{i}".encode() for i in range(total))
    assert sorted(per_partition) == list(range(partitions))
    assert all(tp.error is None for tp in committed)
    assert {tp.partition: tp.offset for tp in committed} == dict(per_partition)
    assert sum(tp.offset for tp in committed) == total


def test_transactions_commit_and_abort(
    bootstrap_servers: str, topic_factory: TopicFactory, unique: UniqueFn
) -> None:
    committed_n, aborted_m, partitions = 50, 30, 2
    topic = topic_factory("smoke-txn", partitions=partitions)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "transactional.id": unique("smoke-txn"),
            "transaction.timeout.ms": 60_000,
        }
    )
    counts, on_delivery = _delivery_counter()
    producer.init_transactions(60)

    producer.begin_transaction()
    for i in range(committed_n):
        producer.produce(
            topic,
            key=f"c-{i}",
            value=b"committed",
            partition=i % partitions,
            on_delivery=on_delivery,
        )
    producer.commit_transaction(60)

    producer.begin_transaction()
    for i in range(aborted_m):
        producer.produce(
            topic, b"aborted", f"a-{i}", partition=i % partitions, on_delivery=on_delivery
        )
    # Written to the log before the abort, so that the abort has something to hide.
    assert producer.flush(30) == 0
    producer.abort_transaction(60)
    assert counts == {"ok": committed_n + aborted_m, "failed": 0}

    # The data, plus one commit marker and one abort marker in each partition.
    expected_end = committed_n + aborted_m + 2 * partitions
    ends = _end_offsets(bootstrap_servers, topic, partitions, expected_end)
    assert sum(ends.values()) == expected_end

    read_committed = _drain(bootstrap_servers, topic, partitions, "read_committed", ends)
    assert sorted(k for k, _ in read_committed) == sorted(
        f"c-{i}".encode() for i in range(committed_n)
    )
    assert {v for _, v in read_committed} == {b"committed"}

    read_uncommitted = _drain(bootstrap_servers, topic, partitions, "read_uncommitted", ends)
    assert len(read_uncommitted) == committed_n + aborted_m
    assert Counter(v for _, v in read_uncommitted) == {
        b"committed": committed_n,
        b"aborted": aborted_m,
    }


def test_postgres_roundtrip_in_own_schema(engine: sa.Engine, db_schema: str) -> None:
    assert engine.dialect.driver == "psycopg"
    metadata = sa.MetaData(schema=db_schema)
    items = sa.Table(
        "items",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.Text, nullable=False, unique=True),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.JSON, nullable=True),
    )
    with engine.begin() as conn:
        version = conn.execute(sa.text("SHOW server_version_num")).scalar_one()
        assert int(version) >= 150000
        metadata.create_all(conn)
        conn.execute(
            sa.insert(items),
            [{"id": i, "key": f"k{i}", "total": i * 10, "doc": {"i": i}} for i in range(100)],
        )
    with engine.begin() as conn:
        conn.execute(sa.update(items).where(items.c.id < 10).values(total=items.c.total + 1))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(items).order_by(items.c.id)).all()
        in_schema = conn.execute(
            sa.text(
                "SELECT count(*) FROM information_schema.tables"
                " WHERE table_schema = :s AND table_name = 'items'"
            ),
            {"s": db_schema},
        ).scalar_one()
    assert len(rows) == 100
    assert rows[3].key == "k3"
    assert rows[3].total == 31
    assert rows[50].total == 500
    assert rows[7].doc == {"i": 7}
    assert in_schema == 1
