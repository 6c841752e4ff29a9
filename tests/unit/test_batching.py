"""Where a batch ends (:meth:`flows.engine.Worker._poll`): when it is full, when nothing
more is coming, or after ``batch_linger``.

The in-memory consumer hands out every record it has at once; Kafka's hands out what its
fetches brought, a part of a backlog at a time. ``FetchingConsumer`` does the same here, and
its empty polls wait out their timeout on the manual clock, as a real one would block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flows import JSON, STR, App, Map, StatefulMap, Topic
from flows.engine import EngineConfig, Worker
from flows.records import RawMessage, RawRecord
from flows.testing import InMemoryBroker, ManualClock
from flows.testing.clients import InMemoryConsumer
from tests.unit.test_engine import CountingStore

WORDS = Topic("words", key_format=STR, value_format=STR, partitions=1)
COUNTS = Topic("counts", key_format=STR, value_format=STR, partitions=1)
LINES = Topic("lines", value_format=STR, partitions=2)
COPIES = Topic("copies", value_format=STR, partitions=2)


def count(record: Any, state: int | None) -> tuple[str, int]:
    total = (state or 0) + 1
    return str(total), total


COUNTING = App(
    "batching",
    [StatefulMap(name="count", source=WORDS, sink=COUNTS, fn=count, state_format=JSON)],
)
COPYING = App("copying", [Map(name="copy", source=LINES, sink=COPIES, fn=lambda r: r.value)])


class FetchingConsumer(InMemoryConsumer):
    """Hands out at most ``fetch`` records a poll, as a Kafka consumer hands out what its
    fetches brought so far; an empty poll waits its whole timeout on the clock.
    ``before_poll`` runs first (records arriving while a batch waits, a member joining)."""

    def __init__(self, broker: FetchingBroker, group_id: str, client_id: str) -> None:
        super().__init__(broker, group_id, client_id)
        self.clock = broker.manual_clock
        self.fetch = broker.fetch
        self.before_poll: Callable[[], None] | None = None
        #: how many records each poll handed out
        self.polls: list[int] = []

    def poll(self, max_records: int, timeout: float) -> list[RawRecord]:
        if self.before_poll is not None:
            self.before_poll()
        records = super().poll(min(max_records, self.fetch), timeout)
        self.polls.append(len(records))
        if not records:
            self.clock.advance(timeout)
        return records


class FetchingBroker(InMemoryBroker):
    def __init__(self, fetch: int = 1_000_000) -> None:
        self.fetch = fetch
        self.manual_clock = ManualClock()
        super().__init__(self.manual_clock)
        self.consumers: list[FetchingConsumer] = []

    def consumer(self, group_id: str, client_id: str) -> FetchingConsumer:
        consumer = FetchingConsumer(self, group_id, client_id)
        self.consumers.append(consumer)
        return consumer


def _counting(
    size: int, linger: float, fetch: int = 1_000_000
) -> tuple[FetchingBroker, CountingStore, Worker]:
    broker = FetchingBroker(fetch)
    for topic in COUNTING.topics.values():
        broker.create_topic(topic.name, topic.partitions)
    store = CountingStore()
    step = COUNTING.steps[0]
    store.ensure_table(step.table)  # type: ignore[attr-defined]
    config = EngineConfig(stateful_batch_size=size, batch_linger=linger)
    worker = Worker(step, broker, config, store=store, clock=broker.manual_clock)
    worker.open()
    return broker, store, worker


def _words(broker: InMemoryBroker, n: int) -> None:
    for i in range(n):
        broker.append(RawMessage("words", f"w{i % 3}".encode(), b"w"))


def _drain(worker: Worker) -> None:
    while worker.turn():
        pass


def test_a_batch_fills_up_while_the_broker_holds_more() -> None:
    """A backlog comes a fetch at a time; a batch takes fetches until it is full, so a
    stateful step pays one commit per ``stateful_batch_size`` records, not per fetch."""
    broker, store, worker = _counting(size=10, linger=0.1, fetch=3)
    _words(broker, 25)
    for _ in range(3):
        assert worker.turn()
    assert store.commits == [10, 10, 5]
    assert broker.manual_clock.monotonic() == 0.0, "a backlog never waits for the linger"


def test_a_batch_goes_when_nothing_more_is_coming() -> None:
    """Four records and nothing behind them: the batch closes with them at once instead of
    polling on for the linger, so a trickle is not delayed."""
    broker, store, worker = _counting(size=1000, linger=5.0)
    _words(broker, 4)
    assert worker.turn()
    assert store.commits == [4]
    assert broker.consumers[-1].polls[-1] == 4, "no poll after the four"
    assert broker.manual_clock.monotonic() == 0.0


def test_a_batch_waits_at_most_the_linger_for_more() -> None:
    """Records keep arriving, one per poll, each poll a quarter of the linger after the
    last: the batch closes when the linger is over, not when it is full."""
    broker, store, worker = _counting(size=1000, linger=1.0, fetch=1)

    def arrive() -> None:
        _words(broker, 1)
        broker.manual_clock.advance(0.25)

    broker.consumers[-1].before_poll = arrive
    _words(broker, 1)  # one ahead of the consumer all along
    assert worker.turn()
    assert store.commits == [5], "the first record, then four more within the linger"
    assert broker.manual_clock.monotonic() == 1.25


def test_records_of_partitions_revoked_while_a_batch_fills_are_not_processed() -> None:
    """A member joins while the batch is topped up: the partitions it takes are revoked
    in that poll, and their records, read but not processed, are neither processed nor
    committed here; the new owner reads them from the committed offset."""
    broker = FetchingBroker(fetch=5)  # the first poll reads both partitions
    for topic in COPYING.topics.values():
        broker.create_topic(topic.name, topic.partitions)
    step = COPYING.steps[0]
    worker = Worker(step, broker, EngineConfig(batch_size=100), clock=broker.manual_clock)
    worker.open()
    assert not worker.turn()  # joins the group, takes both partitions
    for partition in (0, 1):
        for i in range(4):
            broker.append(RawMessage("lines", None, f"p{partition}-{i}".encode()), partition)
    consumer = broker.consumers[-1]

    def join_before_the_top_up() -> None:
        if len(consumer.polls) == 2:  # after the empty poll and the batch's first
            broker.join(step.group_id, ["lines"])

    consumer.before_poll = join_before_the_top_up
    assert worker.turn()
    assert consumer.polls[1] == 5, "the first poll of the batch read both partitions"
    assert len(consumer.polls) > 2, "the batch was topped up"
    revoked = {tp for event in broker.rebalances if event[2] == "revoked" for tp in event[3]}
    assert revoked, "the joining member took a partition"
    kept = {tp for tp in [("lines", 0), ("lines", 1)] if tp not in revoked}
    copied = [(r.value or b"").decode() for r in broker.committed_records("copies")]
    assert copied, "the batch of the partition kept was processed"
    assert all(("lines", int(value[1])) in kept for value in copied)
    for tp in revoked:
        assert broker.committed(step.group_id, tp) == -1
