"""The broker port's contract, run against the in-memory broker and against Kafka.

Every test takes the parametrized ``world`` fixture and runs once per implementation
(``memory`` needs nothing; ``kafka`` is marked ``integration`` and uses the real broker, with
topics and groups of its own). What the worker loop relies on is here: key placement,
``read_committed`` visibility, offsets committed with a transaction (and the metadata
committed with them), fencing of a stale producer and of an evicted member, and cooperative
rebalances. A gap in the fake would be ``xfail(strict=True)`` on the ``memory`` param.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from flows.broker import Broker, Consumer, Producer, TopicPartition
from flows.errors import BrokerError, KafkaFencedError
from flows.partitioning import partition_for
from flows.records import RawMessage, RawRecord
from flows.testing import InMemoryBroker
from runtimes.config import Settings
from runtimes.kafka import KafkaBroker
from runtimes.kafka.consumer import KafkaConsumer

#: long enough for Kafka's group joins; the in-memory broker answers at once
PATIENCE_S = 60.0


@dataclass
class World:
    """One broker implementation, and what the tests need around it."""

    broker: Broker
    create_topic: Callable[[int], str]
    #: makes a member evicted from its group, as a process paused past its session timeout
    evict: Callable[[Consumer], None]


@dataclass
class Listener:
    """Records the rebalance callbacks; ``starts`` says where assigned partitions begin."""

    starts: dict[TopicPartition, int] = field(default_factory=dict)
    owned: set[TopicPartition] = field(default_factory=set)
    events: list[tuple[str, tuple[TopicPartition, ...]]] = field(default_factory=list)

    def assigned(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        self.owned.update(partitions)
        self.events.append(("assigned", tuple(partitions)))
        return {tp: self.starts[tp] for tp in partitions if tp in self.starts}

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self.owned.difference_update(partitions)
        self.events.append(("revoked", tuple(partitions)))


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _poll_until(
    consumers: Sequence[Consumer], done: Callable[[list[RawRecord]], bool], what: str
) -> list[RawRecord]:
    """Polls every consumer until ``done(what was read)``; returns what was read."""
    found: list[RawRecord] = []
    deadline = time.monotonic() + PATIENCE_S
    while True:
        for consumer in consumers:
            found.extend(consumer.poll(500, 0.1))
        if done(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "memory":
        memory = InMemoryBroker()

        def create_memory(partitions: int) -> str:
            name = _name("topic")
            memory.create_topic(name, partitions)
            return name

        def evict_memory(zombie: Consumer) -> None:
            member = getattr(zombie, "member_id", None)
            assert isinstance(member, str)
            memory.evict(getattr(zombie, "group_id", ""), member)

        yield World(memory, create_memory, evict_memory)
        return
    topic_factory = request.getfixturevalue("topic_factory")
    bootstrap: str = request.getfixturevalue("bootstrap_servers")
    settings = Settings(bootstrap_servers=bootstrap, session_timeout_ms=6000)

    def create_kafka(partitions: int) -> str:
        name: str = topic_factory("contract", partitions=partitions)
        return name

    def evict_kafka(_zombie: Consumer) -> None:
        """Nothing to do: the zombie stops polling, and the group evicts it after
        ``max.poll.interval.ms``; the test waits for the takeover, the event itself."""

    yield World(_QuickEviction(settings), create_kafka, evict_kafka)


class _QuickEviction(KafkaBroker):
    """Kafka clients whose members are evicted 7 s after their last poll, not 60 s."""

    def consumer(self, group_id: str, client_id: str) -> KafkaConsumer:
        config = {
            **self.settings.consumer_config(group_id),
            "client.id": client_id,
            "max.poll.interval.ms": 7000,
        }
        return KafkaConsumer(config, timeout=self.settings.startup_timeout)


def _consumer(world: World, group: str, topics: Sequence[str], listener: Listener) -> Consumer:
    consumer = world.broker.consumer(group, f"{group}.{uuid.uuid4().hex[:6]}")
    consumer.subscribe(topics, listener)
    return consumer


def _transactional(world: World, tid: str) -> Producer:
    producer = world.broker.producer(tid, tid)
    producer.init_transactions()
    return producer


def _messages(topic: str, keys: Sequence[str]) -> list[RawMessage]:
    return [RawMessage(topic, k.encode(), f"v-{k}".encode()) for k in keys]


KEYS = [f"key-{i}" for i in range(30)]


def test_keys_are_placed_by_murmur2_and_read_in_offset_order(world: World) -> None:
    topic = world.create_topic(3)
    producer = world.broker.producer(None, _name("plain"))
    producer.produce(_messages(topic, KEYS))
    producer.flush()
    listener = Listener()
    consumer = _consumer(world, _name("group"), [topic], listener)
    read = _poll_until([consumer], lambda got: len(got) >= len(KEYS), "the records")
    try:
        assert sorted(r.key for r in read if r.key) == sorted(k.encode() for k in KEYS)
        for record in read:
            assert record.key is not None
            assert record.partition == partition_for(record.key, 3)
        for p in range(3):
            offsets = [r.offset for r in read if r.partition == p]
            assert offsets == sorted(offsets)
    finally:
        consumer.close()


def test_read_committed_hides_aborted_records_and_waits_for_open_ones(world: World) -> None:
    topic = world.create_topic(1)
    producer = _transactional(world, _name("txn"))
    producer.begin_transaction()
    producer.produce(_messages(topic, ["aborted"]))
    producer.flush()  # written to the log before the abort, not purged from the queue
    producer.abort_transaction()
    producer.begin_transaction()
    producer.produce(_messages(topic, ["open"]))
    producer.flush()
    listener = Listener()
    consumer = _consumer(world, _name("group"), [topic], listener)
    try:
        _poll_until([consumer], lambda _: bool(listener.owned), "an assignment")
        held = _poll_until([consumer], lambda _: True, "a poll")
        assert held == []  # the open transaction holds the partition back
        producer.commit_transaction()
        read = _poll_until([consumer], lambda got: len(got) >= 1, "the committed record")
        assert [r.key for r in read] == [b"open"]
        assert read[0].offset == 2  # the aborted record and its marker took offsets 0, 1
        marks = consumer.watermarks((topic, 0), cached=False)
        assert marks is not None and marks[1] == 4  # and the commit's marker offset 3
        assert consumer.position((topic, 0)) in (3, 4)  # past the record, maybe the marker
    finally:
        consumer.close()


def test_offsets_sent_to_a_transaction_commit_with_it(world: World) -> None:
    source, sink = world.create_topic(1), world.create_topic(1)
    group = _name("group")
    listener = Listener()
    consumer = _consumer(world, group, [source], listener)
    producer = _transactional(world, _name("txn"))
    try:
        _poll_until([consumer], lambda _: bool(listener.owned), "an assignment")
        producer.begin_transaction()
        producer.produce(_messages(sink, ["a"]))
        producer.send_offsets_to_transaction({(source, 0): 7}, consumer.group_metadata())
        producer.abort_transaction()
        assert consumer.committed([(source, 0)]) == {(source, 0): -1}
        producer.begin_transaction()
        producer.produce(_messages(sink, ["b"]))
        producer.send_offsets_to_transaction({(source, 0): 5}, consumer.group_metadata())
        producer.commit_transaction()
        assert consumer.committed([(source, 0)]) == {(source, 0): 5}
    finally:
        consumer.close()


def test_metadata_committed_with_a_transaction_is_read_by_a_new_member(world: World) -> None:
    source, sink = world.create_topic(3), world.create_topic(1)
    group = _name("group")
    every = [(source, p) for p in range(3)]
    listener = Listener()
    consumer = _consumer(world, group, [source], listener)
    producer = _transactional(world, _name("txn"))
    try:
        _poll_until([consumer], lambda _: len(listener.owned) == 3, "an assignment")
        producer.begin_transaction()
        producer.produce(_messages(sink, ["tick"]))
        producer.send_offsets_to_transaction(
            {(source, 0): 5, (source, 1): 3},
            consumer.group_metadata(),
            {(source, 0): "seq=1 é✓"},  # partition 1 left out: ""
        )
        producer.commit_transaction()
    finally:
        consumer.close()
    # a restarted worker: a fresh client of the group, which has not even joined it yet
    fresh = world.broker.consumer(group, f"{group}.fresh")
    try:
        assert fresh.committed_metadata(every) == {
            (source, 0): "seq=1 é✓",
            (source, 1): "",
            (source, 2): "",  # never committed
        }
        assert fresh.committed(every) == {(source, 0): 5, (source, 1): 3, (source, 2): -1}
    finally:
        fresh.close()


def test_an_aborted_transactions_metadata_never_shows_and_every_commit_replaces_it(
    world: World,
) -> None:
    source, sink = world.create_topic(1), world.create_topic(1)
    tp = (source, 0)
    group = _name("group")
    listener = Listener()
    consumer = _consumer(world, group, [source], listener)
    producer = _transactional(world, _name("txn"))
    try:
        _poll_until([consumer], lambda _: bool(listener.owned), "an assignment")
        producer.begin_transaction()
        producer.produce(_messages(sink, ["first"]))
        producer.send_offsets_to_transaction({tp: 5}, consumer.group_metadata(), {tp: "seq=1"})
        producer.commit_transaction()
        producer.begin_transaction()
        producer.produce(_messages(sink, ["aborted"]))
        producer.send_offsets_to_transaction({tp: 9}, consumer.group_metadata(), {tp: "seq=2"})
        producer.abort_transaction()
        assert consumer.committed_metadata([tp]) == {tp: "seq=1"}  # the previous one stays
        assert consumer.committed([tp]) == {tp: 5}
        # offsets committed without metadata replace the partition's metadata with ""
        producer.begin_transaction()
        producer.produce(_messages(sink, ["plain"]))
        producer.send_offsets_to_transaction({tp: 10}, consumer.group_metadata())
        producer.commit_transaction()
        assert consumer.committed_metadata([tp]) == {tp: ""}
        assert consumer.committed([tp]) == {tp: 10}
        producer.begin_transaction()
        producer.send_offsets_to_transaction({tp: 11}, consumer.group_metadata(), {tp: "seq=3"})
        producer.commit_transaction()  # a tick without outputs
        assert consumer.committed_metadata([tp]) == {tp: "seq=3"}
        consumer.commit({tp: 12})
        assert consumer.committed_metadata([tp]) == {tp: ""}
        assert consumer.committed([tp]) == {tp: 12}
    finally:
        consumer.close()


def test_metadata_longer_than_the_broker_accepts_is_refused_for_good(world: World) -> None:
    """Kafka's ``offset.metadata.max.bytes`` is 4096 by default (the test broker's too),
    counted in UTF-16 units; confluent-kafka's C terminator takes one of them."""
    source = world.create_topic(1)
    tp = (source, 0)
    listener = Listener()
    consumer = _consumer(world, _name("group"), [source], listener)
    producer = _transactional(world, _name("txn"))
    try:
        _poll_until([consumer], lambda _: bool(listener.owned), "an assignment")
        producer.begin_transaction()
        longest = "✓" * 4095  # 12,285 bytes of UTF-8: the broker counts characters
        producer.send_offsets_to_transaction({tp: 5}, consumer.group_metadata(), {tp: longest})
        producer.commit_transaction()
        for refused in ("y" * 4096, "seq=1\0tail"):
            producer.begin_transaction()
            with pytest.raises(BrokerError):  # not a TransientError: a retry cannot help
                producer.send_offsets_to_transaction(
                    {tp: 9}, consumer.group_metadata(), {tp: refused}
                )
            producer.abort_transaction()
        assert consumer.committed_metadata([tp]) == {tp: longest}
        assert consumer.committed([tp]) == {tp: 5}
    finally:
        consumer.close()


def test_a_newer_producer_with_the_same_id_fences_the_older(world: World) -> None:
    topic = world.create_topic(1)
    tid = _name("txn")
    old = _transactional(world, tid)
    old.begin_transaction()
    old.produce(_messages(topic, ["zombie"]))
    old.flush()
    new = _transactional(world, tid)  # aborts the old producer's open transaction
    with pytest.raises(KafkaFencedError):
        old.commit_transaction()
    new.begin_transaction()
    new.produce(_messages(topic, ["fresh"]))
    new.commit_transaction()
    listener = Listener()
    consumer = _consumer(world, _name("group"), [topic], listener)
    try:
        read = _poll_until([consumer], lambda got: len(got) >= 1, "the fresh record")
        assert [r.key for r in read] == [b"fresh"]
    finally:
        consumer.close()


def test_a_member_that_starts_at_given_offsets_reads_from_there(world: World) -> None:
    topic = world.create_topic(1)
    producer = world.broker.producer(None, _name("plain"))
    producer.produce(_messages(topic, KEYS[:10]))
    producer.flush()
    listener = Listener(starts={(topic, 0): 6})
    consumer = _consumer(world, _name("group"), [topic], listener)
    try:
        read = _poll_until([consumer], lambda got: len(got) >= 4, "the records from offset 6")
        assert [r.offset for r in read] == [6, 7, 8, 9]
        consumer.seek((topic, 0), 8)
        again = _poll_until([consumer], lambda got: len(got) >= 2, "the records from offset 8")
        assert [r.offset for r in again] == [8, 9]
        assert consumer.position((topic, 0)) == 10
    finally:
        consumer.close()


def test_two_members_share_the_partitions_and_one_leaving_hands_them_over(world: World) -> None:
    topic = world.create_topic(4)
    group = _name("group")
    a_events, b_events = Listener(), Listener()
    a = _consumer(world, group, [topic], a_events)
    _poll_until([a], lambda _: len(a_events.owned) == 4, "a to own every partition")
    b = _consumer(world, group, [topic], b_events)
    try:
        _poll_until(
            [a, b],
            lambda _: len(a_events.owned) == len(b_events.owned) == 2,
            "the partitions to be shared",
        )
        assert not a_events.owned & b_events.owned
        assert any(kind == "revoked" for kind, _ in a_events.events)  # given up, not stolen
        a.close()
        _poll_until([b], lambda _: len(b_events.owned) == 4, "b to take a's partitions")
    finally:
        b.close()


def test_an_evicted_member_cannot_commit_a_transaction(world: World) -> None:
    topic = world.create_topic(2)
    group = _name("group")
    zombie_events, other_events = Listener(), Listener()
    zombie = _consumer(world, group, [topic], zombie_events)
    _poll_until([zombie], lambda _: len(zombie_events.owned) == 2, "the zombie's assignment")
    metadata = zombie.group_metadata()
    producer = _transactional(world, _name("txn"))
    other = _consumer(world, group, [topic], other_events)
    try:
        world.evict(zombie)
        _poll_until([other], lambda _: len(other_events.owned) == 2, "the takeover")
        producer.begin_transaction()
        with pytest.raises(KafkaFencedError):
            producer.send_offsets_to_transaction({(topic, 0): 1}, metadata)
        producer.abort_transaction()
        assert other.committed([(topic, 0)]) == {(topic, 0): -1}
    finally:
        other.close()


def test_a_poll_hands_out_what_came_without_waiting_to_fill_up(world: World) -> None:
    """A poll waits for its first record only, then returns what was fetched: asked for
    1,000 records with a long timeout, it returns the 3 there are at once (librdkafka's
    consume() would wait out the whole timeout for the 997 others)."""
    topic = world.create_topic(1)
    listener = Listener()
    consumer = _consumer(world, _name("group"), [topic], listener)
    try:
        _poll_until([consumer], lambda _: bool(listener.owned), "an assignment")
        producer = world.broker.producer(None, _name("plain"))
        producer.produce(_messages(topic, KEYS[:3]))
        producer.flush()
        started = time.monotonic()
        read = consumer.poll(1000, PATIENCE_S)
        assert [r.offset for r in read] == [0, 1, 2]
        assert time.monotonic() - started < PATIENCE_S / 2
    finally:
        consumer.close()


def test_offsets_committed_in_the_background_land_in_order_and_on_close(world: World) -> None:
    topic = world.create_topic(1)
    group = _name("group")
    tp = (topic, 0)
    listener = Listener()
    consumer = _consumer(world, group, [topic], listener)
    try:
        _poll_until([consumer], lambda _: bool(listener.owned), "an assignment")
        consumer.commit_async({tp: 3})
        consumer.commit_async({tp: 5})  # while the first may be in flight: queued
        _poll_until([consumer], lambda _: consumer.committed([tp]) == {tp: 5}, "offset 5")
        consumer.commit_async({tp: 7})
    finally:
        consumer.close()  # commits what is queued, waits for what is in flight
    reader = _consumer(world, group, [topic], Listener())
    try:
        assert reader.committed([tp]) == {tp: 7}
    finally:
        reader.close()
