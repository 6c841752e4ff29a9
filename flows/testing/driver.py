"""Test a flow without a broker or a database: the engine's own loop, in memory.

:class:`TestDriver` pipes records into an app's input topics and reads its output topics,
state and materialised rows, deterministically. Each step runs in the very worker loop the
Kafka runtime runs (:class:`flows.engine.Worker`: batches, watermarks, pending outputs,
re-emission, fencing, retries), over :class:`InMemoryBroker` and
:class:`InMemoryStateStore`, which follow the contracts of Kafka and PostgreSQL (contract
suites run both), and a :class:`ManualClock`::

    driver = TestDriver(app)
    driver.pipe("word-count-input", "the cat and the hat")
    assert [r.value for r in driver.read("word-count-output")] == ["1", "1", "1", "2", "1"]

Schema Registry formats (:mod:`flows.schema_registry`) need no registry either: the driver
binds them to confluent-kafka's in-memory registry (``mock://``), a fresh one per driver, or
to the binder given as ``registry`` (a test that reads outputs with confluent-kafka's own
deserializers passes ``runtimes.registry.mock_binder()`` and uses its ``client``).

Flows with ``encrypt=True`` need state keys, as in production: ``TestDriver(app,
state_keys=StateKeys.generate("k1"))`` (or the text of ``FLOWS_STATE_KEYS``); the store then
holds ciphertext, and :meth:`TestDriver.state` decrypts.

Faults (:mod:`flows.testing.faults`) break the protocol at named points, so recovery can be
tested in milliseconds::

    driver.faults.inject("between_commits", flow="count")
    driver.pipe("word-count-input", "the cat")  # killed after PostgreSQL committed; the
    # replacement re-emits the stored outputs, and each output is read exactly once
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from flows.app import App
from flows.encoding import decode
from flows.encryption import StateKeys
from flows.engine import EngineConfig, RetryPolicy, Worker
from flows.ports import MetricName
from flows.records import Headers, RawMessage, RawRecord, Record
from flows.schema_registry import FormatBinder
from flows.steps import StatefulStep, Step
from flows.testing.broker import InMemoryBroker
from flows.testing.clock import ManualClock
from flows.testing.faults import Faults, FaultyBroker, FaultyStore, WorkerCrash
from flows.testing.reading import (
    decoded_history,
    decoded_rows,
    decoded_states,
    decoded_timers,
    decoded_windows,
    materialised_table,
    stateful_step,
    window_step,
)
from flows.testing.store import InMemoryStateStore
from flows.timers import Timer
from flows.topics import Topic

_COUNTED: dict[str, str] = {
    "records_filtered": "filtered",
    "records_dead_lettered": "dead_lettered",
    "records_skipped": "skipped",
    "records_late": "late",
}


class _Counts:
    """The metrics port, keeping the counts a test asks for."""

    def __init__(self) -> None:
        #: late records are counted once a windowed flow has seen one
        self.counts = dict.fromkeys(("filtered", "dead_lettered", "skipped"), 0)

    def increment(self, name: MetricName, value: float = 1, /, **labels: str) -> None:
        if name in _COUNTED:
            counted = _COUNTED[name]
            self.counts[counted] = self.counts.get(counted, 0) + int(value)

    def observe(self, name: MetricName, value: float, /, **labels: str) -> None:
        pass

    def gauge(self, name: MetricName, value: float, /, **labels: str) -> None:
        pass


class TestDriver:
    """Runs an app's flows in memory: pipe records in, read outputs, state and rows out.

    Every ``pipe`` runs the flows until nothing is left to consume, in batches of at most
    ``batch_size`` records per step, as the Kafka runtime would. A retry's backoff moves
    :attr:`clock` instead of sleeping.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: App,
        flows: Iterable[str] = (),
        batch_size: int = 500,
        clock: ManualClock | None = None,
        registry: FormatBinder | None = None,
        state_keys: StateKeys | str | None = None,
    ) -> None:
        if registry is None and app.compiled.registry_formats:
            registry = _mock_binder()
        #: what bound the app's Schema Registry formats (None when it has none)
        self.registry = registry
        if isinstance(state_keys, str):
            state_keys = StateKeys.parse(state_keys, "state_keys")
        self.app = app.bind(registry, state_keys=state_keys)
        self.steps = self.app.select(flows)
        self.batch_size = batch_size
        self.clock = clock or ManualClock()
        self.broker = InMemoryBroker(self.clock)
        self.store = InMemoryStateStore(now=self.clock.time)
        self.faults = Faults()
        self.faults.take_over = self._take_over
        self._ports = FaultyBroker(self.broker, self.faults), FaultyStore(self.store, self.faults)
        self._config = EngineConfig(
            batch_size=batch_size, stateful_batch_size=batch_size, batch_linger=0.0
        )
        self._metrics = _Counts()
        self._instances = itertools.count(1)
        for topic in self.app.topics.values():
            self.broker.create_topic(topic.name, topic.partitions)
        for step in self.steps:
            self.faults.name(step.group_id, step.name)
            step.prepare(self.store)
        #: the workers, one per step, more while a test takes a step over
        self.workers = [self._worker(step) for step in self.steps]
        #: every worker that was killed (a fault) or fenced out, and replaced
        self.replaced: list[Worker] = []
        self._read_positions: dict[tuple[str, int], int] = {}

    @property
    def counts(self) -> dict[str, int]:
        """Records filtered, dead-lettered and skipped so far, over every step."""
        return self._metrics.counts

    def _worker(self, step: Step, instance_id: str | None = None) -> Worker:
        config = dataclasses.replace(
            self._config, instance_id=instance_id or f"test-{next(self._instances)}"
        )
        broker, store = self._ports
        return Worker(
            step,
            broker,
            config,
            store=store,
            metrics=self._metrics,
            clock=self.clock,
            retry=RetryPolicy(attempts=10, rng=random.Random(0)),
        )

    def run(self) -> None:
        """Runs every worker, turn by turn, until none has anything left to do; waits out
        retries on the clock. Raises what stops a worker (``FlowFailedError``, ...).

        A rebalance still waiting for a member's poll (a member joined after the others
        polled) is progress too: the workers turn again until the group has settled."""
        unsettled = 0
        while True:
            progressed = False
            for worker in list(self.workers):
                try:
                    while worker.turn():
                        progressed = True
                except WorkerCrash:
                    self._restart(worker)
                    progressed = True
            if progressed:
                unsettled = 0
                continue
            if not self.broker.settled() and unsettled < 3:
                unsettled += 1  # bounded: a member in backoff settles after its retry
                continue
            unsettled = 0
            waiting = [w.retry_at for w in self.workers if w.retry_at is not None]
            if not waiting:
                return
            self.clock.advance(max(0.0, min(waiting) - self.clock.monotonic()))

    def _restart(self, dead: Worker) -> None:
        """A killed worker's process restarts: the group evicts the dead member (its
        session timed out) and a worker with the same instance id takes its place."""
        self._evict(dead)
        dead.abandon()
        self.replaced.append(dead)
        self.workers[self.workers.index(dead)] = self._worker(dead.step, dead.config.instance_id)

    def _evict(self, worker: Worker) -> None:
        session = worker.session
        member = getattr(session.consumer, "member_id", None) if session else None
        if member is not None:
            self.broker.evict(worker.step.group_id, member)

    def _take_over(self, group_id: str) -> None:
        """The ``rebalance_mid_batch`` fault: the step's worker in a batch is evicted, as if
        paused past its session timeout, and a new worker takes its partitions and catches
        up, before the paused one goes on."""
        paused = next(w for w in self.workers if w.step.group_id == group_id and w.busy)
        self._evict(paused)
        successor = self._worker(paused.step)
        self.workers.append(successor)
        while successor.turn():
            pass

    def crash(self, flow: str | None = None) -> None:
        """Kills the workers of ``flow``'s steps (all when None) where they stand, and
        restarts them, as ``kill -9`` and a restart of the process would."""
        for worker in [w for w in self.workers if flow is None or w.step.flow == flow]:
            self._restart(worker)

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

    def advance(self, by: float | timedelta) -> None:
        """Moves the wall clock forward by ``by`` (seconds or a timedelta), then runs the
        workers: what time makes due (windows of quiet partitions closing by
        ``close_after_idle``) comes out as it would in production, without sleeping."""
        self.clock.advance(by)
        self.run()

    def windows(self, flow: str, key: Any) -> list[dict[str, Any]]:
        """The open (and retained) windows of ``key`` in windowed flow ``flow``, in order of
        partition and start: ``start``, ``end``, ``value`` (the aggregate), ``pending``."""
        step = window_step(self.app.name, self.steps, flow)
        return decoded_windows(self.store, step, key)

    def pipe_many(self, topic: str, values: Iterable[Any], key: Any = None) -> None:
        """Produces many records (same key), then runs the flows once."""
        fmt = self.topic(topic)
        for value in values:
            self.broker.append(
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
        record = self.broker.append(RawMessage(topic, key, value, headers, timestamp), partition)
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
        messages = route.messages(body, lowered, int(self.clock.time() * 1000))
        for message in messages:
            self.broker.append(message)
        self.run()
        return len(messages)

    # --- reading -------------------------------------------------------------------------

    def read(self, topic: str) -> list[Record[Any, Any]]:
        """Records of ``topic`` not read before, decoded, in partition then offset order, as
        a ``read_committed`` consumer sees them (an aborted transaction's never)."""
        found: list[Record[Any, Any]] = []
        spec = self.topic(topic)
        for partition in range(self.broker.partitions(topic)):
            tp = (topic, partition)
            raws, self._read_positions[tp] = self.broker.read(
                tp, self._read_positions.get(tp, 0), 1 << 62
            )
            found.extend(decode(spec, raw) for raw in raws)
        return found

    def read_all(self, topic: str) -> list[RawRecord]:
        """Every committed record of ``topic`` as bytes, in the order they were written."""
        return self.broker.committed_records(topic)

    def state(self, flow: str, key: Any) -> Any:
        """The stored state of ``key`` in stateful flow ``flow``, decoded, or ``None``
        (also for a key whose TTL ran out)."""
        return self.states(flow).get(key)

    def states(self, flow: str) -> dict[Any, Any]:
        """Every stored state of stateful flow ``flow``, decoded, by decoded key."""
        step = self._stateful(flow)
        return decoded_states(self.store, step, int(self.clock.time() * 1000))

    def history(self, flow: str, key: Any) -> list[dict[str, Any]]:
        """The kept changes of ``key`` in stateful flow ``flow`` (``history=True``), oldest
        first, decoded as ``GET /state/<flow>/<key>/history`` shows them: ``previous`` and
        ``value`` (None: absent, a deletion), ``topic``, ``partition``, ``offset``,
        ``timestamp`` of the input record and ``committed_at`` (an aware datetime, by
        :attr:`clock`)."""
        return decoded_history(self.store, self._stateful(flow), flow, key)

    def timers(self, flow: str, key: Any) -> list[Timer]:
        """The timers of ``key`` in stateful flow ``flow`` still to fire, in order of due."""
        return decoded_timers(self.store, self._stateful(flow), key)

    def rows(self, flow: str) -> list[dict[str, Any]]:
        """The rows materialised by ``flow``, ordered by primary key."""
        return decoded_rows(self.store, materialised_table(self.app.name, self.steps, flow))

    def _stateful(self, flow: str) -> StatefulStep:
        return stateful_step(self.app.name, self.steps, flow)


def _mock_binder() -> FormatBinder:
    """A binder to a fresh in-memory registry, from ``runtimes.registry``.

    Imported here, when an app has registry formats, and not at the top: the binder is
    confluent-kafka's serializers, and the core (this driver included) imports no driver
    library, so apps without registry formats are tested with nothing of confluent-kafka
    loaded (``tests/unit/test_pure_core.py``)."""
    registry = importlib.import_module("runtimes.registry")
    binder: FormatBinder = registry.mock_binder()
    return binder


__all__ = ["TestDriver"]
