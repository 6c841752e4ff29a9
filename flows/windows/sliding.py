"""Applying a record to the sliding windows of its key, without keeping the records.

Semantics (:class:`~flows.windows.kinds.Sliding`): the windows of a key are, for every
accepted record at ``t``, its left window ``[t - size, t]`` and, when not empty, its right
window ``[t + 1, t + 1 + size]``; each aggregates the records in it, in arrival order; a
window is emitted when stream time reaches ``end + 1 + grace``. A record is folded into every
such window that contains it and is still open, and is late when none is open.

Emitted windows are exactly the windows that existed while open, with the records they
accepted while open. Precisely, with ``F(s)`` the records whose timestamp lies in
``[s, s + size]`` and which arrived while stream time was below ``s + size + 1 + grace``: the
window at ``s`` is emitted, with the aggregate of ``F(s)``, when ``F(s)`` is not empty and
either a record of ``F(s)`` lies on its end (it is that record's left window) or a record
lies at ``s - 1`` (it is that record's right window). In the absence of late data this is
the set of windows and aggregates Kafka Streams' ``KStreamSlidingWindowAggregate`` produces.

How, without the records: as in Kafka Streams, a window that appears after some of its
records arrived (an out-of-order record's left and right windows) copies its aggregate from
an existing window that holds exactly the same records. The key's rows always include such
a window, *provided* they include windows that have closed: so closed sliding windows stay in
state with ``pending=False`` (emitted, and still folding records, only as a copy source) until
:func:`~flows.windows.state.retain_until`. Each row's ``first``/``last`` (its smallest and
largest record timestamp) identify the records it holds: a row holds every accepted record
between its ``first`` and ``last``. If the rows passed in do not contain the copy source
that the invariant promises, :class:`WindowStateError` says so instead of guessing.

Where flows differs from Kafka Streams, both deliberately: Kafka copies from windows that
have stopped accepting records, so a window created after a late-ish record can miss it;
here copy sources keep folding after they close, so a window's aggregate is always that of
its records. And Kafka's early-record special case (``ts < size``) is not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from flows.errors import StateError
from flows.windows.kinds import Sliding
from flows.windows.state import WindowState, is_closed

__all__ = ["WindowStateError", "apply_sliding"]

A = TypeVar("A")
R = TypeVar("R")


class WindowStateError(StateError):
    """A key's window rows contradict the invariants of the rows this package produces
    (rows missing or altered between calls); the message names the gap."""


def apply_sliding(
    kind: Sliding,
    windows: Sequence[WindowState[A]],
    ts: int,
    record: R,
    stream_time: int | None,
    grace: int,
    initial: Callable[[], A],
    fn: Callable[[R, A], A],
) -> tuple[list[WindowState[A]], list[WindowState[A]]] | None:
    """``(upserted, changed)`` for the record, or ``None`` if it is late.

    ``windows`` are all of the key's rows (open and retained closed ones), none of them due.
    ``upserted`` are the rows to write, in order of start; ``changed`` the pending ones among
    them, whose current aggregates an ``emit="update"`` flow outputs.
    """
    size = kind.size_ms
    rows = {window.start: window for window in windows}
    known = {window.first for window in windows} | {window.last for window in windows}

    def is_open(start: int) -> bool:
        return not is_closed(stream_time, start + size + 1 + grace)

    containing = [w for w in windows if w.start <= ts <= w.end]
    # Windows that contain the record but have no row yet: its own left window, and the right
    # window of the record just before it (empty until now). Any other record's right window
    # that contains ts also contains that previous record, so it has a row already.
    fresh = [] if ts - size in rows else [ts - size]
    before = [t for t in known if t < ts]
    if before:
        previous_right = max(before) + 1
        if previous_right + size >= ts and previous_right not in rows:
            fresh.append(previous_right)
    fresh = sorted(set(fresh))
    if not any(w.pending for w in containing) and not any(is_open(s) for s in fresh):
        return None

    upserted: list[WindowState[A]] = []
    for start in fresh:
        source = _source(windows, known, start, start + size)
        base = initial() if source is None else source.value
        first = ts if source is None else min(source.first, ts)
        last = ts if source is None else max(source.last, ts)
        upserted.append(
            WindowState(start, start + size, fn(record, base), first, last, is_open(start))
        )
    right = ts + 1
    if right not in rows:
        # The record's own right window holds the records after it, if any arrived already.
        source = _source(windows, known, right, right + size)
        if source is not None:
            upserted.append(
                WindowState(
                    right, right + size, source.value, source.first, source.last, is_open(right)
                )
            )
    for window in containing:
        upserted.append(
            replace(
                window,
                value=fn(record, window.value),
                first=min(window.first, ts),
                last=max(window.last, ts),
            )
        )
    upserted.sort(key=lambda w: w.start)
    return upserted, [w for w in upserted if w.pending]


def _source(
    windows: Sequence[WindowState[A]], known: set[int], low: int, high: int
) -> WindowState[A] | None:
    """The row holding exactly the records with timestamps in ``[low, high]``; ``None`` when
    there are none."""
    inside = [t for t in known if low <= t <= high]
    if not inside:
        return None
    first, last = min(inside), max(inside)
    for window in windows:
        if window.first == first and window.last == last:
            return window
    raise WindowStateError(
        f"no sliding window row holds exactly the records between {first} and {last} "
        f"(needed for a window over [{low}, {high}]): pass every row of the key, including "
        f"closed ones kept until their retention time"
    )
