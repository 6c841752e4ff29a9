"""The worker loop's bookkeeping over the in-memory broker and store: batch sizes, rewinds
after a failure, what is counted, and how metrics are labelled."""

from __future__ import annotations

from collections import Counter
from typing import Any

from flows import JSON, STR, App, StatefulMap, Topic
from flows.engine import EngineConfig, RetryPolicy, Worker
from flows.errors import DatabaseUnavailableError
from flows.ports import MetricName, StateCommit
from flows.records import RawMessage
from flows.testing import InMemoryBroker, InMemoryStateStore, ManualClock, TestDriver

WORDS = Topic("words", key_format=STR, value_format=STR, partitions=1)
COUNTS = Topic("counts", key_format=STR, value_format=STR, partitions=1)


def count(record: Any, state: int | None) -> tuple[str, int]:
    total = (state or 0) + 1
    return str(total), total


APP = App(
    "engine", [StatefulMap(name="count", source=WORDS, sink=COUNTS, fn=count, state_format=JSON)]
)


class Recorded:
    """The metrics port, keeping every increment with its labels."""

    def __init__(self) -> None:
        self.increments: Counter[tuple[str, str, str]] = Counter()

    def increment(self, name: MetricName, value: float = 1, /, **labels: str) -> None:
        self.increments[(name, labels["flow"], labels["step"])] += int(value)

    def observe(self, name: MetricName, value: float, /, **labels: str) -> None:
        assert set(labels) >= {"flow", "step"}

    def gauge(self, name: MetricName, value: float, /, **labels: str) -> None:
        assert set(labels) >= {"flow", "step", "topic", "partition"}


class CountingStore(InMemoryStateStore):
    """Records how many input records each commit covered: the batch sizes (also
    test_batching's)."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[int] = []

    def commit(self, commit: StateCommit) -> None:
        self.commits.append(sum(n - r for r, n in commit.watermarks.values()))
        super().commit(commit)


def _world(config: EngineConfig) -> tuple[InMemoryBroker, CountingStore, Worker, Recorded]:
    broker = InMemoryBroker(ManualClock())
    for topic in APP.topics.values():
        broker.create_topic(topic.name, topic.partitions)
    store = CountingStore()
    step = APP.steps[0]
    store.ensure_table(step.table)  # type: ignore[attr-defined]
    metrics = Recorded()
    worker = Worker(step, broker, config, store=store, metrics=metrics, clock=ManualClock())
    return broker, store, worker, metrics


def _words(broker: InMemoryBroker, words: str) -> None:
    for word in words.split():
        broker.append(RawMessage("words", word.encode(), b"w"))


def _drain(worker: Worker) -> None:
    while worker.turn():
        pass


def test_a_stateful_step_batches_by_its_own_size() -> None:
    """``stateful_batch_size`` sets a stateful step's batches; ``batch_size`` does not."""
    broker, store, worker, _ = _world(EngineConfig(batch_size=100, stateful_batch_size=2))
    _words(broker, "a b a c a")
    _drain(worker)
    assert store.commits == [2, 2, 1]
    counted = [r.value for r in broker.committed_records("counts") if r.key == b"a"]
    assert counted == [b"1", b"2", b"3"]


def test_a_failed_state_load_rewinds_to_the_watermark() -> None:
    driver = TestDriver(APP, batch_size=3)
    loads = 0
    real_load = driver.store.load

    def flaky_load(table: str, keys: Any) -> dict[bytes, bytes]:
        nonlocal loads
        loads += 1
        if loads == 2:
            raise DatabaseUnavailableError("PostgreSQL is unavailable")
        return real_load(table, keys)

    driver.store.load = flaky_load  # type: ignore[method-assign]
    for word in ["a", "b", "a", "c", "d", "e", "f"]:
        driver.pipe_raw("words", b"w", word.encode(), run=False)
    driver.run()
    assert loads >= 3, "the second load failed and was retried"
    assert [(r.key, r.value) for r in driver.read("counts")] == [
        ("a", "1"),
        ("b", "1"),
        ("a", "2"),
        ("c", "1"),
        ("d", "1"),
        ("e", "1"),
        ("f", "1"),
    ]
    step = APP.steps[0]
    assert driver.store.watermarks[(step.group_id, "words", 0)] == 7


def test_records_below_the_watermark_are_neither_applied_nor_counted() -> None:
    broker, store, worker, metrics = _world(EngineConfig())
    _words(broker, "a b")
    _drain(worker)
    assert worker.session is not None
    worker.session.consumer.seek(("words", 0), 0)  # a fetch from before the watermark
    _words(broker, "c")
    _drain(worker)
    assert store.commits == [2, 1]
    assert metrics.increments[("records_consumed", "count", "count")] == 3


def test_metrics_name_the_flow_and_its_step() -> None:
    rekeyed = StatefulMap(
        name="count",
        source=WORDS,
        sink=COUNTS,
        fn=count,
        state_format=JSON,
        state_key=lambda r: r.value,
    )
    app = App("labels", [rekeyed])
    broker = InMemoryBroker(ManualClock())
    for topic in app.topics.values():
        broker.create_topic(topic.name, topic.partitions)
    store = InMemoryStateStore()
    metrics = Recorded()
    workers = [
        Worker(step, broker, EngineConfig(), store=store, metrics=metrics, retry=RetryPolicy())
        for step in app.steps
    ]
    for step in app.steps:
        if hasattr(step, "table"):
            store.ensure_table(step.table)
    broker.append(RawMessage("words", b"k", b"w"))
    for _ in range(3):
        for worker in workers:
            worker.turn()
    consumed = {k[1:]: v for k, v in metrics.increments.items() if k[0] == "records_consumed"}
    assert consumed == {("count", "count.rekey"): 1, ("count", "count"): 1}
