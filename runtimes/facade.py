"""The runtimes of a process, started in a fixed order and stopped in reverse.

Order: the Kafka admin (broker reachable, topics created), PostgreSQL (tables created), the
HTTP server, then the workers. If one fails to start, those already started are stopped in
reverse order and the error is raised. SIGINT/SIGTERM let every worker commit its in-flight
batch, then stop everything in reverse order; a stuck stop is bounded by
``shutdown_timeout``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Protocol

from flows.app import App
from flows.engine import Worker
from flows.errors import FlowFailedError
from flows.ports import Metrics, StateStore
from flows.steps import Step
from runtimes.config import Settings
from runtimes.kafka import Admin, KafkaBroker

log = logging.getLogger("flows")


class Runtime(Protocol):
    """Something with a lifecycle that the facade starts and stops."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class AdminRuntime:
    """Checks the broker answers and creates the topics the selected steps touch."""

    name = "kafka-admin"

    def __init__(self, settings: Settings, app: App, steps: Sequence[Step]) -> None:
        self.settings = settings
        self.app = app
        self.steps = steps

    def start(self) -> None:
        admin = Admin(self.settings.admin_config(), timeout=self.settings.startup_timeout)
        admin.check()
        topics = {t.name: t for s in self.steps for t in (*s.sources, *s.sinks)}
        created = admin.ensure_topics(topics.values())
        if created:
            log.info("created topics %s", ", ".join(created))

    def stop(self) -> None:
        pass


class DatabaseRuntime:
    """Opens the state store and creates the tables of the selected steps."""

    name = "postgres"

    def __init__(self, store: StateStore, steps: Sequence[Step]) -> None:
        self.store = store
        self.steps = steps

    def start(self) -> None:
        ping = getattr(self.store, "ping", None)
        if ping is not None:
            ping()
        for step in self.steps:
            step.prepare(self.store)

    def stop(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


class WorkersRuntime:
    """One worker thread per step; each commits its in-flight batch before it stops."""

    name = "workers"

    def __init__(
        self, steps: Sequence[Step], settings: Settings, store: StateStore | None, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.last_activity = time.monotonic()
        broker, config = KafkaBroker(settings), settings.engine_config()
        self.workers = [
            Worker(step, broker, config, store=store, metrics=metrics, on_activity=self._active)
            for step in steps
        ]

    def _active(self) -> None:
        self.last_activity = time.monotonic()

    def start(self) -> None:
        for worker in self.workers:
            worker.open()
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        for worker in self.workers:
            if not worker.join(max(0.0, deadline - time.monotonic())):
                log.error(
                    "%s did not stop within %.0f s",
                    worker.step.name,
                    self.settings.shutdown_timeout,
                )
        for worker in self.workers:
            worker.close()

    def failure(self) -> BaseException | None:
        return next((w.failure for w in self.workers if w.failure is not None), None)

    def idle_for(self) -> float:
        """Seconds every worker has been idle (see :meth:`Worker.idle_since`): settled,
        neither in a batch nor in a retry, and caught up with what its consumer has seen.
        A run that joined a group whose killed member still holds partitions, or that waits
        on a slow commit or a failing database, does not pass for idle."""
        session = self.settings.session_timeout_ms / 1000 + 2
        since = [w.idle_since(session) for w in self.workers]
        now = time.monotonic()
        if any(s is None for s in since):
            self.last_activity = now
            return 0.0
        quiet = max([self.last_activity, *(s for s in since if s is not None)])
        return now - quiet


class Facade:
    """Starts runtimes in order, runs until a signal, a failure or idleness, stops in reverse."""

    def __init__(
        self, runtimes: Sequence[Runtime], workers: WorkersRuntime, settings: Settings
    ) -> None:
        self.runtimes = list(runtimes)
        self.workers = workers
        self.settings = settings
        self.stop_requested = threading.Event()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s: committing in-flight batches, then stopping", signal.Signals(signum).name
        )
        self.stop_requested.set()

    def run(self) -> None:
        """Runs to the end; raises :class:`FlowFailedError` when a flow failed."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        started: list[Runtime] = []
        try:
            for runtime in self.runtimes:
                log.info("starting %s", runtime.name)
                try:
                    runtime.start()
                except BaseException:
                    log.error("%s failed to start; stopping what started", runtime.name)
                    raise
                started.append(runtime)
                if self.stop_requested.is_set():
                    return
            self._wait()
        finally:
            for runtime in reversed(started):
                log.info("stopping %s", runtime.name)
                try:
                    runtime.stop()
                except Exception as error:
                    log.error("stopping %s failed: %s", runtime.name, error)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        failure = self.workers.failure()
        if failure is not None:
            raise FlowFailedError(str(failure)) from failure

    def _wait(self) -> None:
        idle = self.settings.until_idle
        while not self.stop_requested.wait(0.2):
            if self.workers.failure() is not None:
                return
            if idle is not None and self.workers.idle_for() >= idle:
                log.info("idle for %.1f s: stopping", idle)
                return
