"""The worker's retry loop: bounded attempts and time, prompt shutdown, per-flow settings."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from flows import STR, App, Map, Topic
from flows.errors import BrokerUnavailableError, FlowFailedError
from runtimes.config import Settings
from runtimes.worker import RetryPolicy, Worker

SOURCE = Topic("in", value_format=STR)
SINK = Topic("out", value_format=STR)


def _step(**options: object):  # type: ignore[no-untyped-def]
    app = App("retry", [Map(name="m", source=SOURCE, sink=SINK, fn=lambda r: r.value, **options)])  # type: ignore[arg-type]
    return app.steps[0]


class Flaky(Worker):
    """A worker whose batches fail ``failures`` times with a transient error."""

    def __init__(self, failures: int, **kwargs: object) -> None:
        super().__init__(_step(), Settings.from_sources(environ={}), **kwargs)  # type: ignore[arg-type]
        self.failures = failures
        self.calls = 0

    def _batch(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise BrokerUnavailableError("broker down")
        self.stop()


def test_a_transient_failure_is_retried_until_it_passes() -> None:
    worker = Flaky(3, retry=RetryPolicy(attempts=5, initial=0.001, maximum=0.01))
    worker._run()
    assert worker.calls == 4 and worker.failure is None


def test_attempts_are_bounded() -> None:
    worker = Flaky(100, retry=RetryPolicy(attempts=3, initial=0.001, maximum=0.01))
    worker._run()
    assert worker.calls == 4
    assert isinstance(worker.failure, FlowFailedError)
    assert "broker down" in str(worker.failure)


def test_total_time_is_bounded() -> None:
    worker = Flaky(10**6, retry=RetryPolicy(attempts=10**6, initial=0.01, maximum=0.01, total=0.2))
    started = time.monotonic()
    worker._run()
    assert isinstance(worker.failure, FlowFailedError)
    assert time.monotonic() - started < 2


def test_shutdown_interrupts_a_backoff_promptly() -> None:
    worker = Flaky(10**6, retry=RetryPolicy(attempts=10**6, initial=60, maximum=60))
    thread = threading.Thread(target=worker._run)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    worker.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 1


def test_a_flow_sets_its_own_bounds() -> None:
    step = _step(retry_attempts=2, retry_seconds=7.5)
    worker = Worker(step, Settings.from_sources(environ={}))
    assert (worker.retry.attempts, worker.retry.total) == (2, 7.5)
    default = Worker(_step(), Settings.from_sources(environ={"FLOWS_RETRY_ATTEMPTS": "4"}))
    assert default.retry.attempts == 4


def test_backoff_grows_with_jitter_and_stays_bounded() -> None:
    policy = RetryPolicy(initial=0.2, maximum=5.0)
    delays = [policy.delay(n) for n in range(1, 20) for _ in range(20)]
    assert all(0 <= d <= 5.0 for d in delays)
    assert max(policy.delay(1) for _ in range(100)) <= 0.2
    assert len({round(d, 6) for d in delays}) > 100  # jittered, not a fixed ladder


def test_an_assignment_is_settled_when_complete_or_stable() -> None:
    worker = Worker(_step(), Settings.from_sources(environ={}))
    assert not worker.settled(10)  # never assigned
    worker.assigned_once.set()
    worker.source_partitions = 2
    worker.assignment = {("in", 0)}
    worker.last_rebalance = time.monotonic()
    assert not worker.settled(10)  # another member (maybe a dead one) holds a partition
    worker.last_rebalance -= 11
    assert worker.settled(10)  # no change for a session timeout: the holder is alive
    worker.last_rebalance = time.monotonic()
    worker.assignment = {("in", 0), ("in", 1)}
    assert worker.settled(10)  # holds everything


def _settled_worker() -> Worker:
    worker = Worker(_step(), Settings.from_sources(environ={}))
    worker.assigned_once.set()
    worker.source_partitions = 1
    worker.assignment = {("in", 0)}
    return worker


def test_a_busy_a_retrying_or_a_lagging_worker_is_not_idle() -> None:
    worker = _settled_worker()
    assert worker.idle_since(10) == worker.quiet_since
    worker.busy = True  # in a batch (a slow commit) or waiting to retry
    assert worker.idle_since(10) is None
    worker.busy, worker.lagging = False, True  # records past its position it cannot read yet
    assert worker.idle_since(10) is None


class _Positions:
    """The two consumer calls the lag check makes, over given positions and watermarks."""

    def __init__(self, position: int, high: int, committed: int = -1001) -> None:
        self._position, self._high, self._committed = position, high, committed

    def position(self, partitions: list[Any]) -> list[Any]:
        return [TopicPartition(p.topic, p.partition, self._position) for p in partitions]

    def get_watermark_offsets(self, _tp: Any, cached: bool = False) -> tuple[int, int]:
        assert cached, "the lag check never asks the broker for watermarks"
        return (0, self._high)

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        return [TopicPartition(p.topic, p.partition, self._committed) for p in partitions]


@pytest.mark.parametrize(
    ("position", "high", "committed", "lags"),
    [
        (10, 10, -1001, False),  # read to the end (markers included)
        (8, 10, -1001, True),  # an open transaction holds records back
        (-1001, -1001, -1001, False),  # no fetch answered yet
        (-1001, 10, 10, False),  # nothing read since assigned, committed at the end
        (-1001, 10, 4, True),  # nothing read since assigned, records past the commit
        (-1001, 10, -1001, True),  # never committed, reading from the earliest
    ],
)
def test_lag_compares_the_position_or_the_start_with_the_high_watermark(
    position: int, high: int, committed: int, lags: bool
) -> None:
    worker = _settled_worker()
    consumer = _Positions(position, high, committed)
    assert worker._lags(consumer) is lags  # type: ignore[arg-type]
