"""The facade starts runtimes in order, stops them in reverse, and reports failures."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from flows.errors import FlowFailedError
from runtimes.config import Settings
from runtimes.facade import Facade


class Recorder:
    def __init__(self, name: str, events: list[str], fail: bool = False) -> None:
        self.name = name
        self.events = events
        self.fail = fail

    def start(self) -> None:
        self.events.append(f"start {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")


class FakeWorkers(Recorder):
    """Stands in for WorkersRuntime: idle at once, or failed."""

    def __init__(self, events: list[str], failure: BaseException | None = None) -> None:
        super().__init__("workers", events)
        self._failure = failure

    def failure(self) -> BaseException | None:
        return self._failure

    def idle_for(self) -> float:
        return 1e9


def _facade(runtimes: list[Recorder], workers: FakeWorkers, **settings: Any) -> Facade:
    return Facade(
        [*runtimes, workers],
        workers,  # type: ignore[arg-type]
        Settings.from_sources(environ={}, **settings),
    )


def test_starts_in_order_and_stops_in_reverse() -> None:
    events: list[str] = []
    workers = FakeWorkers(events)
    _facade([Recorder("admin", events), Recorder("db", events)], workers, until_idle=0.0).run()
    assert events == [
        "start admin",
        "start db",
        "start workers",
        "stop workers",
        "stop db",
        "stop admin",
    ]


def test_a_failed_start_stops_what_started_in_reverse() -> None:
    events: list[str] = []
    facade = _facade(
        [Recorder("admin", events), Recorder("db", events, fail=True)],
        FakeWorkers(events),
        until_idle=0.0,
    )
    with pytest.raises(RuntimeError, match="db cannot start"):
        facade.run()
    assert events == ["start admin", "start db", "stop admin"]


def test_a_failed_worker_stops_everything_and_raises() -> None:
    events: list[str] = []
    facade = _facade([Recorder("admin", events)], FakeWorkers(events, ValueError("broken")))
    with pytest.raises(FlowFailedError, match="broken"):
        facade.run()
    assert events[-2:] == ["stop workers", "stop admin"]


def test_sigterm_stops_in_reverse() -> None:
    events: list[str] = []

    class Busy(FakeWorkers):
        def idle_for(self) -> float:
            return 0.0

    workers = Busy(events)
    facade = _facade([Recorder("admin", events)], workers, until_idle=60.0)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    facade.run()
    assert events == ["start admin", "start workers", "stop workers", "stop admin"]
    assert signal.getsignal(signal.SIGTERM) is not facade._on_signal  # restored
