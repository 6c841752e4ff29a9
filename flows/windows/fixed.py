"""Applying a record to the tumbling or hopping windows of its key.

The windows of a timestamp follow from the kind alone (:meth:`Tumbling.starts`,
:meth:`Hopping.starts`), so a record needs no other state than the rows of the windows it
falls into: an open window without a row is created from ``initial()``, a closed one is
skipped (its result was final, and its row is gone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from flows.windows.kinds import Hopping, Tumbling
from flows.windows.state import WindowState, is_closed

__all__ = ["apply_fixed"]

A = TypeVar("A")
R = TypeVar("R")


def apply_fixed(
    kind: Tumbling | Hopping,
    windows: Sequence[WindowState[A]],
    ts: int,
    record: R,
    stream_time: int | None,
    grace: int,
    initial: Callable[[], A],
    fn: Callable[[R, A], A],
) -> list[WindowState[A]] | None:
    """The rows the record creates or updates, in order of start; ``None`` if it is late.

    ``windows`` are the key's rows, none of them due (the caller closed those first). The
    record is late when every window containing ``ts`` has closed by ``stream_time``.
    """
    rows = {window.start: window for window in windows}
    size = kind.size_ms
    changed: list[WindowState[A]] = []
    for start in kind.starts(ts):
        if is_closed(stream_time, start + size + grace):
            continue
        row = rows.get(start)
        if row is None:
            changed.append(WindowState(start, start + size, fn(record, initial()), ts, ts))
        else:
            changed.append(
                replace(
                    row,
                    value=fn(record, row.value),
                    first=min(row.first, ts),
                    last=max(row.last, ts),
                )
            )
    return changed or None
