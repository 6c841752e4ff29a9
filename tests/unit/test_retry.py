"""The worker loop's retries: bounded attempts and time, prompt shutdown, per-flow settings,
and when a worker counts as settled and idle (``--until-idle``)."""

from __future__ import annotations

import threading
import time

import pytest

from flows import STR, App, Map, Topic
from flows.engine import EngineConfig, RetryPolicy, Worker
from flows.engine.session import Session
from flows.errors import BrokerUnavailableError, FlowFailedError
from flows.ports import NullMetrics, TopicPartition
from flows.steps import Step
from flows.testing import InMemoryBroker, ManualClock

SOURCE = Topic("in", value_format=STR, partitions=2)
SINK = Topic("out", value_format=STR)


def _step(**options: object) -> Step:
    flow = Map(name="m", source=SOURCE, sink=SINK, fn=lambda r: r.value, **options)  # type: ignore[arg-type]
    return App("retry", [flow]).steps[0]


def _broker(clock: ManualClock | None = None) -> InMemoryBroker:
    broker = InMemoryBroker(clock)
    broker.create_topic("in", 2)
    broker.create_topic("out", 1)
    return broker


class Flaky(Worker):
    """A worker whose batches fail ``failures`` times with a transient error."""

    def __init__(self, failures: int, retry: RetryPolicy, clock: ManualClock | None = None):
        super().__init__(_step(), _broker(clock), EngineConfig(), retry=retry, clock=clock)
        self.failures = failures
        self.calls = 0

    def _batch(self) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            raise BrokerUnavailableError("broker down")
        self.stop()
        return True


def test_a_transient_failure_is_retried_until_it_passes() -> None:
    worker = Flaky(3, RetryPolicy(attempts=5, initial=0.001, maximum=0.01))
    worker.run()
    assert worker.calls == 4 and worker.failure is None


def test_attempts_are_bounded() -> None:
    worker = Flaky(100, RetryPolicy(attempts=3, initial=0.001, maximum=0.01))
    worker.run()
    assert worker.calls == 4
    assert isinstance(worker.failure, FlowFailedError)
    assert "broker down" in str(worker.failure)


def test_total_time_is_bounded_on_the_injected_clock() -> None:
    clock = ManualClock()
    worker = Flaky(10**6, RetryPolicy(attempts=10**6, initial=1, maximum=1, total=30), clock)
    with pytest.raises(FlowFailedError):
        while True:
            worker.turn()
            clock.advance(0.5)
    assert 30 <= clock.monotonic() <= 32
    assert 30 <= worker.calls <= 64


def test_a_turn_backing_off_does_nothing_until_its_time() -> None:
    clock = ManualClock()
    worker = Flaky(1, RetryPolicy(attempts=5, initial=10, maximum=10), clock)
    assert worker.turn() is False and worker.retry_at is not None
    calls = worker.calls
    assert worker.turn() is False and worker.calls == calls  # still backing off
    clock.advance(10)
    assert worker.turn() is True and worker.calls == calls + 1


def test_shutdown_interrupts_a_backoff_promptly() -> None:
    worker = Flaky(10**6, RetryPolicy(attempts=10**6, initial=60, maximum=60))
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 5
    while worker.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    worker.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 1


def test_a_flow_sets_its_own_bounds() -> None:
    step = _step(retry_attempts=2, retry_seconds=7.5)
    worker = Worker(step, _broker(), EngineConfig())
    assert (worker.retry.attempts, worker.retry.total) == (2, 7.5)
    default = Worker(_step(), _broker(), EngineConfig(retry_attempts=4))
    assert default.retry.attempts == 4


def test_backoff_grows_with_jitter_and_stays_bounded() -> None:
    policy = RetryPolicy(initial=0.2, maximum=5.0)
    delays = [policy.delay(n) for n in range(1, 20) for _ in range(20)]
    assert all(0 <= d <= 5.0 for d in delays)
    assert max(policy.delay(1) for _ in range(100)) <= 0.2
    assert len({round(d, 6) for d in delays}) > 100  # jittered, not a fixed ladder


def test_an_assignment_is_settled_when_complete_or_stable() -> None:
    clock = ManualClock()
    broker = _broker(clock)
    a = Worker(_step(), broker, EngineConfig(instance_id="a"), clock=clock)
    assert not a.settled(10)  # never assigned
    a.turn()
    assert a.assignment == {("in", 0), ("in", 1)} and a.settled(10)  # holds everything
    b = Worker(_step(), broker, EngineConfig(instance_id="b"), clock=clock)
    b.turn()  # joins: a must give one partition up first
    a.turn()
    b.turn()
    assert len(a.assignment) == len(b.assignment) == 1
    assert not b.settled(10)  # another member (maybe a dead one) holds a partition
    clock.advance(11)
    assert b.settled(10)  # no change for a session timeout: the holder is alive


def test_a_busy_a_retrying_or_a_lagging_worker_is_not_idle() -> None:
    worker = Worker(_step(), _broker(), EngineConfig())
    worker.turn()
    assert worker.idle_since(10) == worker.quiet_since
    worker.busy = True  # in a batch (a slow commit) or waiting to retry
    assert worker.idle_since(10) is None
    worker.busy, worker.lagging = False, True  # records past its position it cannot read yet
    assert worker.idle_since(10) is None


def test_an_open_transaction_upstream_keeps_a_worker_lagging() -> None:
    broker = _broker()
    worker = Worker(_step(), broker, EngineConfig())
    worker.turn()
    upstream = broker.producer("upstream", "upstream")
    upstream.init_transactions()
    upstream.begin_transaction()
    from flows.records import RawMessage

    upstream.produce([RawMessage("in", b"k", b"v")])
    assert worker.turn() is False and worker.lagging  # read_committed: held back
    upstream.commit_transaction()
    assert worker.turn() is True
    assert worker.turn() is False and not worker.lagging  # the marker is read past too


class _Positions:
    """The consumer calls the lag check makes, over given positions and watermarks."""

    def __init__(self, position: int | None, high: int | None, committed: int) -> None:
        self._position, self._high, self._committed = position, high, committed

    def position(self, _tp: TopicPartition) -> int | None:
        return self._position

    def watermarks(self, _tp: TopicPartition, cached: bool) -> tuple[int, int] | None:
        assert cached, "the lag check never asks the broker for watermarks"
        return None if self._high is None else (0, self._high)

    def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, self._committed)


@pytest.mark.parametrize(
    ("position", "high", "committed", "lags"),
    [
        (10, 10, -1, False),  # read to the end (markers included)
        (8, 10, -1, True),  # an open transaction holds records back
        (None, None, -1, False),  # no fetch answered yet
        (None, 10, 10, False),  # nothing read since assigned, committed at the end
        (None, 10, 4, True),  # nothing read since assigned, records past the commit
        (None, 10, -1, True),  # never committed, reading from the earliest
    ],
)
def test_lag_compares_the_position_or_the_start_with_the_high_watermark(
    position: int | None, high: int | None, committed: int, lags: bool
) -> None:
    worker = Worker(_step(), _broker(), EngineConfig())
    consumer = _Positions(position, high, committed)
    producer = _broker().producer(None, "p")
    session = Session(worker.step, consumer, producer, NullMetrics(), worker.labels)  # type: ignore[arg-type]
    session.assignment = {("in", 0)}
    assert worker._lags(session) is lags


def test_a_stateful_worker_with_nothing_owed_or_to_read_stays_quiet() -> None:
    """Idleness (``--until-idle``) needs turns without work to leave ``quiet_since`` alone."""
    from flows import JSON, StatefulMap
    from flows.testing import InMemoryStateStore

    clock = ManualClock()
    count = StatefulMap(
        name="count", source=SOURCE, sink=SINK, fn=lambda r, s: (r.value, s), state_format=JSON
    )
    step = App("quiet", [count]).steps[0]
    store = InMemoryStateStore()
    worker = Worker(step, _broker(clock), EngineConfig(), store=store, clock=clock)
    assert worker.turn() is False
    quiet = worker.quiet_since
    clock.advance(5)
    assert worker.turn() is False
    assert worker.quiet_since == quiet and worker.idle_since(10) == quiet
