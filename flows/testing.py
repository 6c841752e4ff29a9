"""Test a flow without a broker or a database.

:class:`TestDriver` pipes records into an app's input topics and reads its output topics,
state and materialised rows, deterministically. It runs the very steps the Kafka runtime
runs (:mod:`flows.compiler`) against :class:`InMemoryBroker` and :class:`InMemoryStateStore`,
which follow the same contracts as their Kafka and PostgreSQL counterparts (a contract test
suite runs both)::

    driver = TestDriver(app)
    driver.pipe("word-count-input", "the cat and the hat")
    assert [r.value for r in driver.read("word-count-output")] == ["1", "1", "1", "2", "1"]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.app import App
from flows.encoding import decode
from flows.errors import WatermarkMovedError
from flows.partitioning import partition_for
from flows.ports import PendingBatch, StateCommit, TopicPartition
from flows.records import Headers, RawMessage, RawRecord, Record
from flows.steps import (
    BatchResult,
    MaterialiseStep,
    RekeyStep,
    StatefulStep,
    StatelessStep,
    Step,
)
from flows.tables import TableShape
from flows.topics import Topic


class InMemoryBroker:
    """Topics as lists of partitions; keys are placed as Kafka's Java clients place them."""

    def __init__(self) -> None:
        self.logs: dict[str, list[list[RawRecord]]] = {}
        self._round_robin: dict[str, itertools.cycle[int]] = {}
        self._clock = itertools.count(1_700_000_000_000)

    def create_topic(self, name: str, partitions: int) -> None:
        if name not in self.logs:
            self.logs[name] = [[] for _ in range(partitions)]
            self._round_robin[name] = itertools.cycle(range(partitions))

    def produce(self, message: RawMessage, partition: int | None = None) -> RawRecord:
        if message.topic not in self.logs:
            raise KeyError(f"topic {message.topic!r} does not exist (auto-creation is off)")
        partitions = self.logs[message.topic]
        if partition is None:
            partition = (
                partition_for(message.key, len(partitions))
                if message.key is not None
                else next(self._round_robin[message.topic])
            )
        log = partitions[partition]
        record = RawRecord(
            topic=message.topic,
            partition=partition,
            offset=len(log),
            key=message.key,
            value=message.value,
            headers=message.headers,
            timestamp=message.timestamp or next(self._clock),
        )
        log.append(record)
        return record

    def partitions(self, topic: str) -> int:
        return len(self.logs[topic])

    def read(self, topic: str, partition: int, offset: int) -> list[RawRecord]:
        return self.logs[topic][partition][offset:]

    def end_offset(self, topic: str, partition: int) -> int:
        return len(self.logs[topic][partition])


@dataclass
class InMemoryStateStore:
    """The state store contract (see :class:`flows.ports.StateStore`) in dictionaries."""

    tables: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    watermarks: dict[tuple[str, str, int], int] = field(default_factory=dict)
    pending_batches: dict[tuple[str, str, int, int], PendingBatch] = field(default_factory=dict)
    row_tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    shapes: dict[str, TableShape] = field(default_factory=dict)

    def ensure_table(self, table: str) -> None:
        self.tables.setdefault(table, {})

    def ensure_rows_table(self, shape: TableShape) -> None:
        self.row_tables.setdefault(shape.name, {})
        self.shapes[shape.name] = shape

    def watermark(self, group: str, topic: str, partition: int, start: int) -> int:
        return self.watermarks.setdefault((group, topic, partition), start)

    def load(self, table: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        stored = self.tables.get(table, {})
        return {key: stored[key] for key in keys if key in stored}

    def get(self, table: str, key: bytes) -> bytes | None:
        return self.tables.get(table, {}).get(key)

    def commit(self, commit: StateCommit) -> None:
        for (topic, partition), (read, _) in commit.watermarks.items():
            stored = self.watermarks.get((commit.group, topic, partition))
            if stored != read:
                raise WatermarkMovedError(
                    f"group {commit.group!r}, {topic}[{partition}]: watermark is {stored}, "
                    f"expected {read}; another worker owns this partition"
                )
        if commit.shape is not None:  # all or nothing: check every row before changing any
            for row in commit.rows:
                missing = [c for c in commit.shape.primary_key if c not in row]
                if missing:
                    raise KeyError(f"a row of {commit.shape.name!r} lacks {missing}")
        for (topic, partition), (_, new) in commit.watermarks.items():
            self.watermarks[(commit.group, topic, partition)] = new
        if commit.table is not None:
            table = self.tables.setdefault(commit.table, {})
            for key, value in commit.states.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
        if commit.shape is not None:
            shape = commit.shape
            rows = self.row_tables.setdefault(shape.name, {})
            for row in commit.rows:
                pk = tuple(row[c] for c in shape.primary_key)
                rows[pk] = {**rows.get(pk, {}), **row}
        for (topic, partition), committed in commit.kafka_committed.items():
            for k in [
                k
                for k, b in self.pending_batches.items()
                if k[:3] == (commit.group, topic, partition) and b.next_offset <= committed
            ]:
                del self.pending_batches[k]
        for batch in commit.pending:
            if batch.outputs:  # a batch without outputs has nothing to re-emit
                where = (commit.group, batch.topic, batch.partition, batch.first_offset)
                self.pending_batches[where] = batch

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int
    ) -> list[PendingBatch]:
        found = [
            b
            for (g, t, p, first), b in self.pending_batches.items()
            if (g, t, p) == (group, topic, partition) and first >= from_offset
        ]
        return sorted(found, key=lambda b: b.first_offset)

    # The runtime's extras beyond the port (state queries, `flows reset`, tests), with the
    # same behaviour as runtimes.postgres.PostgresStateStore.

    def scan(
        self, table: str, prefix: bytes, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` states whose key starts with ``prefix`` and sorts after ``after``."""
        if limit <= 0:
            return []
        stored = self.tables.get(table, {})
        keys = sorted(k for k in stored if k.startswith(prefix) and (after is None or k > after))
        return [(k, stored[k]) for k in keys[:limit]]

    def ping(self) -> None:
        """Always answers."""

    def close(self) -> None:
        """Nothing to release."""

    def drop_tables(self, names: Iterable[str]) -> None:
        """Forgets the state or materialised tables ``names``."""
        for name in names:
            self.tables.pop(name, None)
            self.row_tables.pop(name, None)
            self.shapes.pop(name, None)

    def forget_groups(self, groups: Iterable[str]) -> None:
        """Forgets the watermarks and pending outputs of ``groups``."""
        doomed = set(groups)
        for key in [k for k in self.watermarks if k[0] in doomed]:
            del self.watermarks[key]
        for where in [k for k in self.pending_batches if k[0] in doomed]:
            del self.pending_batches[where]

    def rows(self, table_name: str) -> list[dict[str, Any]]:
        """Every row of a materialised table, ordered by primary key."""
        if table_name not in self.row_tables:
            raise KeyError(f"no table {table_name!r}")
        rows = self.row_tables[table_name]
        return [dict(rows[k]) for k in sorted(rows)]


def pending_by_partition(
    records: Sequence[RawRecord], outputs_of: dict[TopicPartition, list[RawMessage]]
) -> list[PendingBatch]:
    """Groups a batch's outputs as one pending batch per input partition."""
    ranges: dict[TopicPartition, list[int]] = {}
    for raw in records:
        bounds = ranges.setdefault((raw.topic, raw.partition), [raw.offset, raw.offset + 1])
        bounds[1] = raw.offset + 1
    return [
        PendingBatch(
            topic, partition, first, next_offset, tuple(outputs_of.get((topic, partition), ()))
        )
        for (topic, partition), (first, next_offset) in ranges.items()
    ]


class TestDriver:
    """Runs an app's flows in memory: pipe records in, read outputs, state and rows out.

    Every ``pipe`` runs the flows until nothing is left to consume, in batches of at most
    ``batch_size`` records per step, as the Kafka runtime would.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, flows: Iterable[str] = (), batch_size: int = 500) -> None:
        self.app = app
        self.steps = app.select(flows)
        self.batch_size = batch_size
        self.broker = InMemoryBroker()
        self.store = InMemoryStateStore()
        for topic in app.topics.values():
            self.broker.create_topic(topic.name, topic.partitions)
        for step in self.steps:
            if isinstance(step, StatefulStep):
                self.store.ensure_table(step.table)
            elif isinstance(step, MaterialiseStep) and step.shape is not None:
                self.store.ensure_rows_table(step.shape)
        self._positions: dict[tuple[str, str, int], int] = {}
        self._read_positions: dict[tuple[str, int], int] = {}
        self.counts = {"filtered": 0, "dead_lettered": 0, "skipped": 0}

    def topic(self, name: str) -> Topic:
        try:
            return self.app.topics[name]
        except KeyError:
            raise KeyError(f"app {self.app.name!r} has no topic {name!r}") from None

    def pipe(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        headers: Headers = (),
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> RawRecord:
        """Produces one record, encoded with the topic's formats, then runs the flows."""
        record = self.pipe_raw(
            topic,
            None if value is None else self.topic(topic).value_format.encode(value),
            None if key is None else self.topic(topic).key_format.encode(key),
            headers,
            timestamp,
            partition,
            run=False,
        )
        self.run()
        return record

    def pipe_many(self, topic: str, values: Iterable[Any], key: Any = None) -> None:
        """Produces many records (same key), then runs the flows once."""
        fmt = self.topic(topic)
        for value in values:
            self.broker.produce(
                RawMessage(
                    topic,
                    None if key is None else fmt.key_format.encode(key),
                    None if value is None else fmt.value_format.encode(value),
                )
            )
        self.run()

    def pipe_raw(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers = (),
        timestamp: int | None = None,
        partition: int | None = None,
        run: bool = True,
    ) -> RawRecord:
        """Produces bytes as they are (to test malformed input), then runs the flows."""
        record = self.broker.produce(RawMessage(topic, key, value, headers, timestamp), partition)
        if run:
            self.run()
        return record

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        """Sends an HTTP ingest request as the HTTP server would; returns how many records
        it produced (raises ``DecodeError``/``UserFunctionError`` where the server answers
        400/422), then runs the flows."""
        route = next((r for r in self.app.routes if r.path == path), None)
        if route is None:
            raise KeyError(f"app {self.app.name!r} has no ingest route {path!r}")
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        messages = route.messages(body, lowered, next(self.broker._clock))
        for message in messages:
            self.broker.produce(message)
        self.run()
        return len(messages)

    def run(self) -> None:
        """Runs every step until all have consumed everything."""
        progressed = True
        while progressed:
            progressed = False
            for step in self.steps:
                while self._run_once(step):
                    progressed = True

    def _run_once(self, step: Step) -> bool:
        batch: list[RawRecord] = []
        for topic in step.source_names:
            for partition in range(self.broker.partitions(topic)):
                position = self._positions.setdefault((step.group_id, topic, partition), 0)
                room = self.batch_size - len(batch)
                batch.extend(self.broker.read(topic, partition, position)[:room])
        if not batch:
            return False
        if isinstance(step, StatelessStep | RekeyStep):
            result = step.process(batch)
        elif isinstance(step, StatefulStep):
            keys = sorted(step.state_keys(batch))
            result = step.fold(batch, self.store.load(step.table, keys))
            self._commit(step, batch, result, table=step.table)
        elif isinstance(step, MaterialiseStep):
            result = step.collect(batch)
            self._commit(step, batch, result, table=None)
        else:  # pragma: no cover - every step kind is handled above
            raise TypeError(step)
        for message in result.outputs:
            self.broker.produce(message)
        for name in self.counts:
            self.counts[name] += getattr(result, name)
        for raw in batch:
            self._positions[(step.group_id, raw.topic, raw.partition)] = raw.offset + 1
        return True

    def _commit(
        self, step: Step, batch: list[RawRecord], result: BatchResult, table: str | None
    ) -> None:
        watermarks: dict[TopicPartition, tuple[int, int]] = {}
        for raw in batch:
            tp = (raw.topic, raw.partition)
            if tp not in watermarks:
                read = self.store.watermark(step.group_id, raw.topic, raw.partition, raw.offset)
                watermarks[tp] = (read, raw.offset + 1)
            else:
                watermarks[tp] = (watermarks[tp][0], raw.offset + 1)
        self.store.commit(
            StateCommit(
                group=step.group_id,
                watermarks=watermarks,
                table=table,
                states=result.states,
                shape=step.shape if isinstance(step, MaterialiseStep) else None,
                rows=list(result.rows.values()),
            )
        )

    # --- reading -------------------------------------------------------------------------

    def read(self, topic: str) -> list[Record[Any, Any]]:
        """Records of ``topic`` not read before, decoded, in partition then offset order."""
        found: list[Record[Any, Any]] = []
        spec = self.topic(topic)
        for partition in range(self.broker.partitions(topic)):
            position = self._read_positions.get((topic, partition), 0)
            raws = self.broker.read(topic, partition, position)
            found.extend(decode(spec, raw) for raw in raws)
            self._read_positions[(topic, partition)] = position + len(raws)
        return found

    def read_all(self, topic: str) -> list[RawRecord]:
        """Every record of ``topic`` as bytes, in timestamp order (production order)."""
        raws = [
            r for p in range(self.broker.partitions(topic)) for r in self.broker.read(topic, p, 0)
        ]
        return sorted(raws, key=lambda r: r.timestamp)

    def state(self, flow: str, key: Any) -> Any:
        """The stored state of ``key`` in stateful flow ``flow``, decoded, or ``None``."""
        step = self._stateful(flow)
        key_format = step.sources[0].key_format
        encoded = self.store.get(step.table, key_format.encode(key))
        return None if encoded is None else step.state_format.decode(encoded)

    def states(self, flow: str) -> dict[Any, Any]:
        step = self._stateful(flow)
        key_format = step.sources[0].key_format
        return {
            key_format.decode(k): step.state_format.decode(v)
            for k, v in self.store.tables.get(step.table, {}).items()
        }

    def rows(self, flow: str) -> list[dict[str, Any]]:
        """The rows materialised by ``flow``, ordered by primary key."""
        step = next(
            (s for s in self.steps if isinstance(s, MaterialiseStep) and s.flow == flow), None
        )
        if step is None or step.shape is None:
            raise KeyError(f"app {self.app.name!r} has no materialise flow {flow!r}")
        rows = self.store.row_tables.get(step.shape.name, {})
        return [rows[k] for k in sorted(rows)]

    def _stateful(self, flow: str) -> StatefulStep:
        for step in self.steps:
            if isinstance(step, StatefulStep) and step.flow == flow:
                return step
        raise KeyError(f"app {self.app.name!r} has no stateful flow {flow!r}")


__all__ = ["InMemoryBroker", "InMemoryStateStore", "TestDriver", "pending_by_partition"]
