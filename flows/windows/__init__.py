"""Event-time windows: the pure semantics (no I/O) that the engine's window step calls.

- :mod:`flows.windows.kinds`: :class:`Tumbling`, :class:`Hopping`, :class:`Sliding`,
  :class:`Session`, with their bounds and close times in one table.
- :mod:`flows.windows.state`: the per-key rows (:class:`WindowState`) and closing by stream
  time (:func:`close`).
- :mod:`flows.windows.machine`: :class:`Windowing`, which applies one record to one key's
  rows (:class:`Step`) and closes them, and how the engine drives it.
- :mod:`flows.windows.fixed`, :mod:`~flows.windows.sessions`, :mod:`~flows.windows.sliding`:
  each kind's record rule; the session merge decision and the sliding semantics are written
  down there.

:mod:`flows` exports the four kinds; the :class:`~flows.wiring.Window` configuration uses
them, compiled into :class:`flows.steps.window.WindowStep`, which drives :class:`Windowing`.
"""

from __future__ import annotations

from flows.windows.kinds import (
    Hopping,
    Session,
    Sliding,
    Tumbling,
    WindowConfigError,
    WindowKind,
    to_millis,
)
from flows.windows.machine import Step, Windowing
from flows.windows.sliding import WindowStateError
from flows.windows.state import Closing, WindowState, close, close_time, retain_until

__all__ = [
    "Closing",
    "Hopping",
    "Session",
    "Sliding",
    "Step",
    "Tumbling",
    "WindowConfigError",
    "WindowKind",
    "WindowState",
    "WindowStateError",
    "Windowing",
    "close",
    "close_time",
    "retain_until",
    "to_millis",
]
