"""Faults injected at named points of the exactly-once protocol, through the ports.

The engine knows nothing of them: :class:`TestDriver` hands its workers a state store and a
broker that wrap the in-memory ones and fail where a test asked. Each fault fires for the
step named ``flow`` (a flow's own step carries its name; the re-key step of a flow with a
state key is ``<flow>.rekey``), ``times`` times, then passes.

The points, in the order a stateful batch meets them:

* ``db_commit``: the PostgreSQL transaction fails (nothing applied);
* ``rebalance_mid_batch``: just before the PostgreSQL transaction, the worker is evicted
  from its group (as a process paused past its session timeout) and a new worker takes its
  partitions and processes them; then the paused one goes on, a zombie, and its commit is
  refused (the watermark moved);
* ``between_commits``: the worker dies after PostgreSQL committed and before Kafka did;
* ``kafka_commit``: the Kafka transaction fails (a broker outage, say) and is aborted;
* ``crash_in_kafka_commit``: the worker dies inside the Kafka commit, its transaction open.

A worker that dies raises :class:`WorkerCrash` to the driver, which drops it without a word
to the broker and starts a replacement with the same instance id (so the replacement's
producer fences the dead one's and aborts its open transaction), as a restarted process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from flows.errors import BrokerUnavailableError, DatabaseUnavailableError
from flows.ports import (
    BYTES_COLUMNS,
    PartitionTime,
    PendingBatch,
    StateColumns,
    StateCommit,
    StateStore,
    TopicPartition,
    WindowRow,
)
from flows.records import RawMessage
from flows.tables import TableShape
from flows.testing.broker import InMemoryBroker
from flows.testing.clients import InMemoryConsumer, InMemoryProducer

FaultPoint = Literal[
    "db_commit", "rebalance_mid_batch", "between_commits", "kafka_commit", "crash_in_kafka_commit"
]


class WorkerCrash(BaseException):
    """A simulated kill of a worker's process; nothing in the engine catches it."""


@dataclass
class _Fault:
    point: FaultPoint
    flow: str
    times: int
    fired: int = 0


class Faults:
    """What to break, and a log of what broke (``fired``: point and flow, in order)."""

    def __init__(self) -> None:
        self._armed: list[_Fault] = []
        self.fired: list[tuple[FaultPoint, str]] = []
        #: set by the driver: evicts a step's worker and lets a new one take over
        self.take_over: Callable[[str], None] = lambda group: None
        self._groups: dict[str, str] = {}

    def inject(self, point: FaultPoint, flow: str, times: int = 1) -> None:
        """Arms a fault at ``point`` for the step named ``flow``, for ``times`` batches."""
        self._armed.append(_Fault(point, flow, times))

    def name(self, group_id: str, step: str) -> None:
        """Tells which step runs as consumer group ``group_id``."""
        self._groups[group_id] = step

    def group_of(self, client_id: str) -> str:
        """The group of a client the engine named ``<group>.<instance id>``."""
        found = [g for g in self._groups if client_id.startswith(f"{g}.")]
        return max(found, key=len) if found else client_id

    def due(self, point: FaultPoint, group_id: str) -> bool:
        """Whether a fault fires here now (and counts it)."""
        step = self._groups.get(group_id)
        for fault in self._armed:
            if fault.point == point and fault.flow == step and fault.fired < fault.times:
                fault.fired += 1
                self.fired.append((point, step))
                return True
        return False


class FaultyStore:
    """The in-memory store, failing where :class:`Faults` says (the state store port)."""

    def __init__(self, inner: StateStore, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def ensure_table(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        self.inner.ensure_table(table, columns)

    def ensure_rows_table(self, shape: TableShape) -> None:
        self.inner.ensure_rows_table(shape)

    def ensure_history_table(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        self.inner.ensure_history_table(table, columns)

    def watermark(self, group: str, topic: str, partition: int, start: int) -> int:
        return self.inner.watermark(group, topic, partition, start)

    def load(self, table: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self.inner.load(table, keys)

    def get(self, table: str, key: bytes) -> bytes | None:
        return self.inner.get(table, key)

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int, after_seq: int = -1
    ) -> list[PendingBatch]:
        return self.inner.pending(group, topic, partition, from_offset, after_seq)

    def ensure_window_table(self, table: str) -> None:
        self.inner.ensure_window_table(table)

    def partition_time(self, group: str, topic: str, partition: int) -> PartitionTime:
        return self.inner.partition_time(group, topic, partition)

    def load_windows(
        self,
        table: str,
        partition: int,
        keys: Sequence[bytes],
        due_by: int | None,
        wall_due_by: int | None = None,
    ) -> list[WindowRow]:
        return self.inner.load_windows(table, partition, keys, due_by, wall_due_by)

    def next_due(self, table: str, partition: int, wall: bool = False) -> int | None:
        return self.inner.next_due(table, partition, wall)

    def windows(self, table: str, key: bytes) -> list[WindowRow]:
        return self.inner.windows(table, key)

    def commit(self, commit: StateCommit) -> None:
        faults = self.faults
        if faults.due("db_commit", commit.group):
            raise DatabaseUnavailableError("injected fault: the PostgreSQL commit failed")
        if faults.due("rebalance_mid_batch", commit.group):
            faults.take_over(commit.group)
        self.inner.commit(commit)
        if faults.due("between_commits", commit.group):
            raise WorkerCrash("injected fault: killed between the PostgreSQL and Kafka commits")


class FaultyProducer:
    """An in-memory producer failing where :class:`Faults` says (the producer port)."""

    def __init__(self, inner: InMemoryProducer, group_id: str, faults: Faults) -> None:
        self.inner = inner
        self.group_id = group_id
        self.faults = faults

    def init_transactions(self) -> None:
        self.inner.init_transactions()

    def produce(self, messages: Sequence[RawMessage]) -> None:
        self.inner.produce(messages)

    def flush(self) -> None:
        self.inner.flush()

    def begin_transaction(self) -> None:
        self.inner.begin_transaction()

    def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int],
        group_metadata: object,
        metadata: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        self.inner.send_offsets_to_transaction(offsets, group_metadata, metadata)

    def commit_transaction(self) -> None:
        if self.faults.due("kafka_commit", self.group_id):
            raise BrokerUnavailableError("injected fault: the Kafka commit failed")
        if self.faults.due("crash_in_kafka_commit", self.group_id):
            raise WorkerCrash("injected fault: killed inside the Kafka commit")
        self.inner.commit_transaction()

    def abort_transaction(self) -> None:
        self.inner.abort_transaction()

    def close(self) -> None:
        self.inner.close()


class FaultyBroker:
    """The in-memory broker's clients, the producers failing where :class:`Faults` says."""

    def __init__(self, inner: InMemoryBroker, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def consumer(self, group_id: str, client_id: str) -> InMemoryConsumer:
        return self.inner.consumer(group_id, client_id)

    def producer(self, transactional_id: str | None, client_id: str) -> FaultyProducer:
        producer = self.inner.producer(transactional_id, client_id)
        return FaultyProducer(producer, self.faults.group_of(client_id), self.faults)


__all__ = ["FaultPoint", "Faults", "WorkerCrash"]
