"""The small interfaces between the pure core and the runtimes that do I/O.

Each port has an in-memory implementation in :mod:`flows.testing` and a real one in
``runtimes/``; one contract test suite runs against both (``tests/contract``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from flows.records import RawMessage
from flows.tables import TableShape

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """Outputs of the input range ``[first_offset, next_offset)`` of one partition."""

    topic: str
    partition: int
    first_offset: int
    next_offset: int
    outputs: tuple[RawMessage, ...]


@dataclass(slots=True)
class StateCommit:
    """Everything one batch changes in the database, applied in one transaction.

    ``watermarks`` maps each input partition to ``(read, new)``: the commit succeeds only
    if every stored watermark still equals ``read`` (else :class:`~flows.errors.FencedError`),
    and leaves ``new``. ``kafka_committed`` lets the store forget pending outputs that Kafka
    already committed.
    """

    group: str
    watermarks: dict[TopicPartition, tuple[int, int]]
    table: str | None = None
    states: Mapping[bytes, bytes | None] = field(default_factory=dict)
    pending: Sequence[PendingBatch] = ()
    kafka_committed: Mapping[TopicPartition, int] = field(default_factory=dict)
    shape: TableShape | None = None
    rows: Sequence[dict[str, Any]] = ()


class StateStore(Protocol):
    """Per-key state, offset watermarks and pending outputs (see ``GUARANTEES`` in README)."""

    def ensure_table(self, table: str) -> None:
        """Creates the state table ``table`` when missing."""

    def ensure_rows_table(self, shape: TableShape) -> None:
        """Creates the materialised table of ``shape`` when missing."""

    def watermark(self, group: str, topic: str, partition: int, start: int) -> int:
        """The stored watermark; inserts ``start`` when there is none and returns it."""

    def load(self, table: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored states of ``keys``; absent keys are left out."""

    def commit(self, commit: StateCommit) -> None:
        """Applies ``commit`` atomically; raises ``FencedError`` if a watermark moved."""

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int
    ) -> list[PendingBatch]:
        """Pending batches with ``first_offset >= from_offset``, in offset order."""

    def get(self, table: str, key: bytes) -> bytes | None:
        """One state, for queries."""


class Clock(Protocol):
    """Time, injected so tests control it."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


MetricName = Literal[
    # counters, labels flow/topic
    "records_consumed",
    "records_produced",
    "records_filtered",
    "records_dead_lettered",
    "records_skipped",
    "retries",
    "rebalances",
    "state_cache_hits",
    "state_cache_misses",
    # histograms, label flow
    "batch_size",
    "batch_seconds",
    "db_commit_seconds",
    "kafka_commit_seconds",
    # gauges, labels flow/topic/partition
    "consumer_lag",
    "committed_offset",
]


class Metrics(Protocol):
    """Where runtimes report what they do; the Prometheus adapter is in ``runtimes``."""

    def increment(self, name: MetricName, value: float = 1, /, **labels: str) -> None: ...

    def observe(self, name: MetricName, value: float, /, **labels: str) -> None: ...

    def gauge(self, name: MetricName, value: float, /, **labels: str) -> None: ...


class NullMetrics:
    """Discards everything."""

    def increment(self, name: MetricName, value: float = 1, /, **labels: str) -> None:
        pass

    def observe(self, name: MetricName, value: float, /, **labels: str) -> None:
        pass

    def gauge(self, name: MetricName, value: float, /, **labels: str) -> None:
        pass
