"""Applying a record to the session windows of its key: join, merge, or start a session.

Decision on merging. Sessions merge their aggregates with a user-supplied
``merge(earlier, later)``, as Kafka Streams' ``SessionWindows`` require a ``Merger``. The
alternative, re-folding the records of both sessions, would need every record of every open
session kept in state (unbounded for a busy key); merging without either is impossible for a
general ``fn``. So :class:`~flows.windows.Windowing` refuses a :class:`Session` without
``merge``. ``merge`` must agree with ``fn``: merging the aggregates of two sets of records
should give what folding all of them would, for the result to be independent of how records
happened to arrive (for a count, ``merge = operator.add``).

Closed sessions are final: their result has been emitted and their row deleted, so a record
never joins or revives one. It joins the *open* sessions within reach; when there are none,
it starts a session ``[ts, ts]``, unless that session would already be closed, in which case
the record is late. (Two emitted sessions of a key can therefore be less than ``gap`` apart
when the later one began after the earlier closed; Kafka Streams would instead merge with the
retained closed session and emit the merged one again, which is not exactly once.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from flows.windows.kinds import Session
from flows.windows.state import WindowState, is_closed

__all__ = ["apply_session"]

A = TypeVar("A")
R = TypeVar("R")


def apply_session(
    kind: Session,
    windows: Sequence[WindowState[A]],
    ts: int,
    record: R,
    stream_time: int | None,
    grace: int,
    initial: Callable[[], A],
    fn: Callable[[R, A], A],
    merge: Callable[[A, A], A],
) -> tuple[WindowState[A], list[WindowState[A]]] | None:
    """The session the record ends up in and the rows it replaces; ``None`` if it is late.

    ``windows`` are the key's open sessions, none of them due. The sessions within reach
    (``start - gap <= ts <= end + gap``) are merged in order of start, ``merge(acc, next)``,
    and the record is folded last; with none in reach the record starts a session from
    ``initial()``. A merged session is never late: its close time is at least that of a
    session that was open.
    """
    gap = kind.gap_ms
    reach = sorted(
        (w for w in windows if w.start - gap <= ts <= w.end + gap), key=lambda w: w.start
    )
    if not reach:
        if is_closed(stream_time, ts + gap + grace):
            return None
        return WindowState(ts, ts, fn(record, initial()), ts, ts), []
    acc = reach[0].value
    for other in reach[1:]:
        acc = merge(acc, other.value)
    start = min(reach[0].start, ts)
    end = max(ts, *(w.end for w in reach))
    return WindowState(start, end, fn(record, acc), start, end), reach
