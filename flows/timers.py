"""Per-key timers of stateful flows: :func:`schedule_timer`, :func:`cancel_timer`, :class:`Timer`.

A stateful flow with ``on_timer=fn(key, state, timer) -> (outputs, new_state)`` may, inside
its ``fn`` (or inside ``on_timer``), schedule and cancel timers of the key it is applying::

    def watch(record, state):
        if record.value["event"] == "added_to_cart":
            schedule_timer("abandoned", after=timedelta(minutes=30))
        elif record.value["event"] == "checkout":
            cancel_timer("abandoned")
        return None, record.value

A timer is named within its key: scheduling a name again moves it. It falls due by the
partition's **stream time** (``clock="event"``, the default: deterministic, replayable) or by
the **wall clock** (``clock="wall"``). When due, ``on_timer`` runs with the key's state and its
outputs and new state are committed like a record's, exactly once: timers live in PostgreSQL
and are deleted in the transaction that stores their outputs.

The functions act on the key being applied, known from a context variable the engine sets
around each call; called anywhere else they raise :class:`TimerError`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from flows.errors import FlowsError

__all__ = ["Clock", "Timer", "TimerError", "cancel_timer", "schedule_timer"]

Clock = Literal["event", "wall"]


class TimerError(FlowsError):
    """A timer was scheduled or cancelled outside a stateful function, or with bad values."""


@dataclass(frozen=True)
class Timer:
    """A timer as ``on_timer`` sees it: its name, when it fell due (ms since the epoch, by
    its clock) and the ``data`` it was scheduled with."""

    name: str
    due: int
    clock: Clock = "event"
    data: Any = None


@dataclass
class TimerScope:
    """The timers one call of a user function scheduled and cancelled, for one key.

    ``now`` is the time ``after=`` counts from: the record's timestamp (event clock) or the
    wall clock, both in ms; ``scheduled`` maps names to timers, ``cancelled`` holds names.
    """

    flow: str
    event_now: int
    wall_now: int
    scheduled: dict[str, Timer]
    cancelled: set[str]


_scope: contextvars.ContextVar[TimerScope | None] = contextvars.ContextVar(
    "flows_timer_scope", default=None
)


@contextlib.contextmanager
def timer_scope(scope: TimerScope) -> Iterator[TimerScope]:
    """Makes ``scope`` the target of :func:`schedule_timer` and :func:`cancel_timer`."""
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def _current(what: str) -> TimerScope:
    scope = _scope.get()
    if scope is None:
        raise TimerError(
            f"{what} works only inside the fn or on_timer of a stateful flow that has "
            f"on_timer=...; it acts on the key being applied"
        )
    return scope


def schedule_timer(
    name: str,
    at: int | datetime | None = None,
    *,
    after: timedelta | None = None,
    clock: Clock = "event",
    data: Any = None,
) -> Timer:
    """Schedules (or moves) the current key's timer ``name``.

    Give ``at`` (ms since the epoch, or an aware datetime) or ``after`` (from the record's
    timestamp for ``clock="event"``, from now for ``clock="wall"``). ``data`` must fit the
    flow's state format (JSON by default); ``on_timer`` gets it back.
    """
    scope = _current("schedule_timer")
    if clock not in ("event", "wall"):
        raise TimerError(f"clock must be 'event' or 'wall', not {clock!r}")
    if not isinstance(name, str) or not name:
        raise TimerError(f"a timer needs a non-empty name, got {name!r}")
    if (at is None) == (after is None):
        raise TimerError("give exactly one of at=... (a time) or after=... (a timedelta)")
    if after is not None:
        if not isinstance(after, timedelta):
            raise TimerError(f"after must be a timedelta, got {after!r}")
        base = scope.event_now if clock == "event" else scope.wall_now
        due = base + after // timedelta(milliseconds=1)
    else:
        from flows.steps.timed import event_millis

        try:
            due = event_millis(at)
        except (TypeError, ValueError) as error:
            raise TimerError(f"timer {name!r}: {error}") from error
    timer = Timer(name, due, clock, data)
    scope.scheduled[name] = timer
    scope.cancelled.discard(name)
    return timer


def cancel_timer(name: str) -> None:
    """Cancels the current key's timer ``name`` (nothing happens if there is none)."""
    scope = _current("cancel_timer")
    scope.scheduled.pop(name, None)
    scope.cancelled.add(name)
