"""Test a flow, its faults and its clock without a broker or a database.

:class:`TestDriver` runs an app's flows in the engine's own worker loop over
:class:`InMemoryBroker` and :class:`InMemoryStateStore`, with a :class:`ManualClock`;
:mod:`flows.testing.faults` breaks the protocol at named points.
"""

from flows.testing.broker import InMemoryBroker
from flows.testing.clock import ManualClock
from flows.testing.driver import TestDriver
from flows.testing.faults import FaultPoint, Faults, WorkerCrash
from flows.testing.store import InMemoryStateStore

__all__ = [
    "FaultPoint",
    "Faults",
    "InMemoryBroker",
    "InMemoryStateStore",
    "ManualClock",
    "TestDriver",
    "WorkerCrash",
]
