"""The per-key window rows, close times, and closing by stream time.

A key's window state is a list of :class:`WindowState` rows, one per window start. The engine
stores them per ``(key, start)`` and hands all of a key's rows back on the next record or
tick; the functions here never mutate what they are given and return new rows instead.

Stream time is ``None`` before a partition's first record (nothing has closed yet) and
otherwise the largest timestamp seen so far; a window is **closed** once stream time has
reached its close time (``stream_time >= close``), and then no record changes its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from flows.windows.kinds import Hopping, Sliding, Tumbling, WindowKind

__all__ = ["Closing", "WindowState", "close", "close_time", "is_closed", "retain_until"]

A = TypeVar("A")


@dataclass(frozen=True)
class WindowState(Generic[A]):
    """One window of one key: its bounds, its aggregate, and whether its result is due.

    - ``start``/``end``: the window's bounds in the kind's convention (see
      :mod:`flows.windows.kinds`); ``start`` identifies the row within its key.
    - ``value``: the aggregate of the records the window accepted, in arrival order.
    - ``first``/``last``: the smallest and largest timestamp among those records.
    - ``pending``: the final result has not been emitted yet. Only sliding windows keep rows
      with ``pending=False``: a closed sliding window stays, until :func:`retain_until`, as
      the source that later windows copy their aggregate from (see :mod:`flows.windows.sliding`);
      such a row is never emitted again.
    """

    start: int
    end: int
    value: A
    first: int
    last: int
    pending: bool = True


@dataclass(frozen=True)
class Closing(Generic[A]):
    """What closing a key's windows at a stream time does.

    - ``emitted``: the final results now due, each emitted exactly once, in order of start.
    - ``upserted``: rows to write back (sliding windows that are kept with ``pending=False``).
    - ``removed``: starts of rows to delete (closed windows of every other kind, and sliding
      rows past their retention).
    - ``windows``: the key's rows afterwards, in order of start.
    """

    emitted: tuple[WindowState[A], ...]
    upserted: tuple[WindowState[A], ...]
    removed: tuple[int, ...]
    windows: tuple[WindowState[A], ...]


def close_time(kind: WindowKind, window: WindowState[A], grace: int) -> int:
    """The stream time at which ``window`` closes: from then on its result is final."""
    if isinstance(kind, Tumbling | Hopping):
        return window.end + grace
    if isinstance(kind, Sliding):
        return window.end + 1 + grace
    return window.end + kind.gap_ms + grace


def retain_until(kind: WindowKind, window: WindowState[A], grace: int) -> int:
    """The stream time from which the row of a closed window may be deleted.

    The close time for every kind but :class:`Sliding`, whose closed windows stay ``2 * size +
    1`` longer: a record that is still accepted copies aggregates from windows that start at
    most ``2 * size + 1`` before it, and is accepted only while stream time is below its
    timestamp plus ``size + 1 + grace``.
    """
    if isinstance(kind, Sliding):
        return close_time(kind, window, grace) + 2 * kind.size_ms + 1
    return close_time(kind, window, grace)


def is_closed(stream_time: int | None, close_at: int) -> bool:
    """Whether stream time has reached ``close_at`` (never, before the first record)."""
    return stream_time is not None and stream_time >= close_at


def close(
    kind: WindowKind, windows: Sequence[WindowState[A]], stream_time: int | None, grace: int
) -> Closing[A]:
    """Closes the windows of one key whose close time ``stream_time`` has reached.

    Contract: every window whose close time ``stream_time`` has reached and whose result is
    still pending is in ``emitted`` (in order of start) and pending no more; calling again with
    the same or a later stream time never emits it twice, provided the caller stores
    ``upserted`` and ``removed``. A window whose close time is not reached is untouched.
    """
    emitted: list[WindowState[A]] = []
    upserted: list[WindowState[A]] = []
    removed: list[int] = []
    kept: list[WindowState[A]] = []
    sliding = isinstance(kind, Sliding)
    for window in sorted(windows, key=_start):
        due = window.pending and is_closed(stream_time, close_time(kind, window, grace))
        if due:
            emitted.append(window)
        # Sliding rows outlive their emission as copy sources (see retain_until).
        gone = is_closed(stream_time, retain_until(kind, window, grace)) if sliding else due
        if gone:
            removed.append(window.start)
        elif due:
            done = replace(window, pending=False)
            upserted.append(done)
            kept.append(done)
        else:
            kept.append(window)
    return Closing(tuple(emitted), tuple(upserted), tuple(removed), tuple(kept))


def _start(window: WindowState[A]) -> int:
    return window.start
