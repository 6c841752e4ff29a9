"""A batch that fails after consume() is consumed again: no offset moves over it.

The worker is driven with stand-ins for the confluent-kafka consumer and producer (the
collaborators not under test) and the in-memory state store (which follows the contract of
the PostgreSQL one), so the loop's own bookkeeping is what is tested.
"""

from __future__ import annotations

from typing import Any

from flows import JSON, STR, App, StatefulMap, Topic
from flows.errors import DatabaseUnavailableError
from flows.testing import InMemoryStateStore
from runtimes.config import Settings
from runtimes.worker import RetryPolicy, Worker, _Partition

WORDS = Topic("words", key_format=STR, value_format=STR, partitions=1)
COUNTS = Topic("counts", key_format=STR, value_format=STR, partitions=1)


def count(record: Any, state: int | None) -> tuple[str, int]:
    total = (state or 0) + 1
    return str(total), total


APP = App(
    "rewind", [StatefulMap(name="count", source=WORDS, sink=COUNTS, fn=count, state_format=JSON)]
)


class Message:
    def __init__(self, offset: int, key: bytes) -> None:
        self._offset, self._key = offset, key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "words"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return b"w"

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1)


class Consumer:
    """Serves a partition log from its position; seek moves the position."""

    def __init__(self, log: list[bytes]) -> None:
        self.log = log
        self.position = 0
        self.seeks: list[int] = []

    def consume(self, size: int, _timeout: float) -> list[Message]:
        batch = [Message(o, k) for o, k in enumerate(self.log)][self.position :][:size]
        self.position += len(batch)
        return batch

    def seek(self, tp: Any) -> None:
        self.seeks.append(tp.offset)
        self.position = tp.offset

    def consumer_group_metadata(self) -> object:
        return object()

    def get_watermark_offsets(self, *_args: Any, **_kwargs: Any) -> tuple[int, int]:
        return (0, len(self.log))


class Producer:
    def __init__(self) -> None:
        self.committed: list[list[tuple[bytes, bytes]]] = []
        self._open: list[tuple[bytes, bytes]] = []

    def begin_transaction(self) -> None:
        self._open = []

    def produce(self, _topic: str, value: bytes, key: bytes, *_args: Any) -> None:
        self._open.append((key, value))

    def poll(self, _timeout: float) -> int:
        return 0

    def send_offsets_to_transaction(self, *_args: Any) -> None:
        pass

    def commit_transaction(self, *_args: Any) -> None:
        self.committed.append(self._open)


class FlakyStore(InMemoryStateStore):
    """Loses its connection on the second load."""

    loads = 0

    def load(self, table: str, keys: Any) -> dict[bytes, bytes]:
        self.loads += 1
        if self.loads == 2:
            raise DatabaseUnavailableError("PostgreSQL is unavailable")
        return super().load(table, keys)


def run_over(
    log: list[bytes], settings: Settings, store: InMemoryStateStore
) -> tuple[Worker, Consumer, Producer]:
    """Runs the count step's worker over the words of ``log`` until all are consumed."""
    step = APP.steps[0]
    worker = Worker(
        step, settings, store=store, retry=RetryPolicy(attempts=5, initial=0.001, maximum=0.001)
    )
    worker.consumer = consumer = Consumer(log)  # type: ignore[assignment]
    worker.producer = producer = Producer()  # type: ignore[assignment]
    worker.owned[("words", 0)] = _Partition(
        watermark=store.watermark(step.group_id, "words", 0, 0), committed=0
    )
    worker.on_activity = lambda: worker.stop() if consumer.position >= len(log) else None
    worker._run()
    return worker, consumer, producer


def test_a_failed_state_load_rewinds_to_the_watermark() -> None:
    step = APP.steps[0]
    store = FlakyStore()
    store.ensure_table(step.table)
    settings = Settings.from_sources(environ={}, stateful_batch_size=3, state_cache=False)
    log = [b"a", b"b", b"a", b"c", b"a", b"b", b"a"]
    worker, consumer, producer = run_over(log, settings, store)
    assert worker.failure is None
    assert consumer.seeks == [3], "the failed batch (offsets 3..5) is consumed again from W=3"
    outputs = [(k, v) for batch in producer.committed for k, v in batch]
    assert [v for k, v in outputs if k == b"a"] == [b"1", b"2", b"3", b"4"]
    assert store.watermarks[(step.group_id, "words", 0)] == len(log)
    assert store.load(step.table, [b"a", b"b", b"c"]) == {b"a": b"4", b"b": b"2", b"c": b"1"}


def test_a_stateful_step_batches_by_its_own_size() -> None:
    """``stateful_batch_size`` sets a stateful step's batches; ``batch_size`` does not."""
    step = APP.steps[0]
    store = InMemoryStateStore()
    store.ensure_table(step.table)
    settings = Settings.from_sources(environ={}, batch_size=100, stateful_batch_size=2)
    worker, _, producer = run_over([b"a", b"b", b"a", b"c", b"a"], settings, store)
    assert worker.failure is None
    assert [len(batch) for batch in producer.committed] == [2, 2, 1]
    assert [v for batch in producer.committed for k, v in batch if k == b"a"] == [
        b"1",
        b"2",
        b"3",
    ]
