"""The per-key window state machine: one record in, the key's changed rows and outputs out.

:class:`Windowing` binds a window kind, a grace and the user's functions, validated once;
:meth:`Windowing.apply` applies one record to one key's rows and :meth:`Windowing.close`
closes a key's rows by stream time. Both are pure: no I/O, no clock, no mutation of their
arguments, and the same inputs give the same outputs.

How the engine drives it, per partition and in offset order (stream time is the
partition's, persisted with its watermark):

1. For a record of key ``k`` at ``ts``: ``step = windowing.apply(rows[k], ts, record,
   stream_time)`` with the stream time *before* the record; then ``stream_time =
   max(stream_time, ts)``. ``step.closed`` are final results that were due before the record
   (emit them first); if ``step.late``, dead-letter the record (nothing else changed);
   otherwise write ``step.upserted``, delete ``step.removed``, and for ``emit="update"``
   output ``step.changed``.
2. Whenever stream time has moved (after a record, or on a tick), ``windowing.close(rows[k],
   stream_time)`` for every key with a window whose close time has come, and emit
   ``closing.emitted``. Because ``apply`` closes the due windows of its own key first, final
   results do not depend on when ``close`` runs; the *order* of outputs across keys does,
   which is the engine's to fix (see ``TIME.md``: closing after each record gives the same
   output for every batch size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Generic, TypeVar

from flows.windows.fixed import apply_fixed
from flows.windows.kinds import (
    Hopping,
    Session,
    Sliding,
    Tumbling,
    WindowConfigError,
    WindowKind,
    to_millis,
)
from flows.windows.sessions import apply_session
from flows.windows.sliding import apply_sliding
from flows.windows.state import Closing, WindowState, close, close_time

__all__ = ["Step", "Windowing"]

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Step(Generic[A]):
    """What one record does to its key's windows.

    - ``closed``: final results that the stream time *before* the record had made due and
      that were still pending (normally empty, when the engine closes after every record), in
      order of start; emit them before anything else of this record.
    - ``late``: the record is late for all its windows; then ``upserted``, ``removed`` and
      ``changed`` are empty and only ``closed`` may have changed state.
    - ``upserted``: rows to write (created, updated or merged), in order of start.
    - ``removed``: starts of rows to delete (closed windows; sessions merged into another).
    - ``changed``: the pending windows whose aggregate the record created or changed, in
      order of start: what ``emit="update"`` outputs.
    - ``windows``: all of the key's rows afterwards, in order of start.
    """

    closed: tuple[WindowState[A], ...]
    late: bool
    upserted: tuple[WindowState[A], ...]
    removed: tuple[int, ...]
    changed: tuple[WindowState[A], ...]
    windows: tuple[WindowState[A], ...]


@dataclass(frozen=True)
class Windowing(Generic[R, A]):
    """A window kind with its grace and aggregation, ready to apply records.

    ``initial()`` makes a new window's aggregate, ``fn(record, acc)`` folds a record into one,
    and ``merge(earlier, later)`` combines two sessions' aggregates (required for
    :class:`Session`, ignored otherwise; see :mod:`flows.windows.sessions` for why). ``grace``
    is a non-negative whole number of milliseconds as a :class:`timedelta`. Invalid
    arguments raise :class:`WindowConfigError` here, never later.
    """

    kind: WindowKind
    initial: Callable[[], A]
    fn: Callable[[R, A], A]
    grace: timedelta = timedelta(0)
    merge: Callable[[A, A], A] | None = None
    grace_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Tumbling | Hopping | Sliding | Session):
            raise WindowConfigError(
                f"window must be Tumbling, Hopping, Sliding or Session, got {self.kind!r}"
            )
        object.__setattr__(self, "grace_ms", to_millis(self.grace, "grace", allow_zero=True))
        if isinstance(self.kind, Session) and self.merge is None:
            raise WindowConfigError(
                "Session windows need merge=fn(acc_a, acc_b) to combine the aggregates of two "
                "sessions that a record joins (for a count, merge=operator.add)"
            )

    def close_time(self, window: WindowState[A]) -> int:
        """The stream time at which ``window``'s result becomes final and due."""
        return close_time(self.kind, window, self.grace_ms)

    def close(self, windows: Sequence[WindowState[A]], stream_time: int | None) -> Closing[A]:
        """Closes the windows of one key that ``stream_time`` has reached; see
        :func:`flows.windows.state.close`."""
        return close(self.kind, windows, stream_time, self.grace_ms)

    def apply(
        self, windows: Sequence[WindowState[A]], ts: int, record: R, stream_time: int | None
    ) -> Step[A]:
        """Applies a record at ``ts`` to the rows of its key.

        ``windows`` must be every row of the key as this class last returned them (sliding
        windows include their closed, retained rows); ``stream_time`` is the partition's
        stream time before this record (``None`` before its first). The record is late for a
        window when ``stream_time`` has reached that window's close time, and late for all
        its windows when no window that contains it is open; otherwise it is folded into
        each of its open windows.
        """
        closing = self.close(windows, stream_time)
        rows = closing.windows
        kind, grace = self.kind, self.grace_ms
        removed = set(closing.removed)
        if isinstance(kind, Sliding):
            applied = apply_sliding(
                kind, rows, ts, record, stream_time, grace, self.initial, self.fn
            )
            if applied is None:
                return self._late(closing)
            upserted, changed = applied
        elif isinstance(kind, Session):
            assert self.merge is not None  # checked in __post_init__
            joined = apply_session(
                kind, rows, ts, record, stream_time, grace, self.initial, self.fn, self.merge
            )
            if joined is None:
                return self._late(closing)
            session, merged = joined
            removed.update(w.start for w in merged if w.start != session.start)
            upserted = changed = [session]
        else:
            fixed = apply_fixed(kind, rows, ts, record, stream_time, grace, self.initial, self.fn)
            if fixed is None:
                return self._late(closing)
            upserted = changed = fixed
        written = {w.start: w for w in closing.upserted}
        written.update((w.start, w) for w in upserted)
        after = {w.start: w for w in rows if w.start not in removed}
        after.update((w.start, w) for w in upserted)
        removed.difference_update(after)
        return Step(
            closed=closing.emitted,
            late=False,
            upserted=tuple(written[s] for s in sorted(written)),
            removed=tuple(sorted(removed)),
            changed=tuple(changed),
            windows=tuple(after[s] for s in sorted(after)),
        )

    def _late(self, closing: Closing[A]) -> Step[A]:
        return Step(
            closed=closing.emitted,
            late=True,
            upserted=closing.upserted,
            removed=closing.removed,
            changed=(),
            windows=closing.windows,
        )
