"""The four window kinds: which windows a timestamp falls into, and when a window closes.

All times are integer milliseconds since the epoch; the kinds take :class:`datetime.timedelta`
and convert once, validating on construction (a bad value raises
:class:`WindowConfigError`, a :class:`~flows.errors.ConfigError`, whose message says what to
change). The kinds are frozen and hashable, so a configuration can hold and compare them.

A window is identified within its key by its ``start``. ``end`` follows each kind's
convention, spelled out on the class: **exclusive** for :class:`Tumbling` and
:class:`Hopping`, **inclusive** for :class:`Sliding` and :class:`Session`. The close time
(the stream time from which a record can no longer change the window and its final result
is due) is:

=============  ===============================  ===========================
kind           window                           close time
=============  ===============================  ===========================
Tumbling       ``[start, start + size)``        ``end + grace``
Hopping        ``[start, start + size)``        ``end + grace``
Sliding        ``[start, start + size]``        ``end + 1 + grace``
Session        ``[first ts, last ts]``          ``end + gap + grace``
=============  ===============================  ===========================

Sliding's ``+ 1`` is the issue's ``end + grace`` applied to a window whose end is inclusive:
``end + 1`` is its first instant that no record can fall into. It is also exactly Kafka
Streams' rule, which drops a record for a sliding window when ``end < stream time - grace``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from flows.errors import ConfigError

__all__ = [
    "Hopping",
    "Session",
    "Sliding",
    "Tumbling",
    "WindowConfigError",
    "WindowKind",
    "to_millis",
]


class WindowConfigError(ConfigError):
    """A window kind, grace or merge function is invalid; the message says what to fix."""


_MS = timedelta(milliseconds=1)


def to_millis(value: object, what: str, *, allow_zero: bool = False) -> int:
    """``value`` (a :class:`timedelta`) in whole milliseconds, or :class:`WindowConfigError`.

    ``what`` names the field in the message, e.g. ``"Tumbling(size=...)"``. Zero is refused
    unless ``allow_zero`` (a grace of zero is fine, a window of size zero is not); negative
    values are always refused.
    """
    if not isinstance(value, timedelta):
        raise WindowConfigError(
            f"{what} must be a datetime.timedelta, got {type(value).__name__} {value!r}; "
            f"write e.g. timedelta(minutes=1)"
        )
    if value % _MS:
        raise WindowConfigError(
            f"{what} must be a whole number of milliseconds, got {value!r}; "
            f"windows count time in integer milliseconds, so round it"
        )
    ms = value // _MS
    if ms < 0 or (ms == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "positive"
        raise WindowConfigError(f"{what} must be {bound}, got {value!r}")
    return ms


@dataclass(frozen=True)
class Tumbling:
    """Fixed, non-overlapping windows ``[s, s + size)`` with ``s = ts - ts % size``.

    Every timestamp is in exactly one window. ``end = start + size`` is exclusive; the close
    time is ``end + grace``.
    """

    size: timedelta
    size_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_ms", to_millis(self.size, "Tumbling(size=...)"))

    def starts(self, ts: int) -> list[int]:
        """The start of the one window that contains ``ts``."""
        return [ts - ts % self.size_ms]


@dataclass(frozen=True)
class Hopping:
    """Overlapping windows of ``size`` every ``hop``: every ``[s, s + size)`` with
    ``s % hop == 0`` and ``s <= ts < s + size``.

    A timestamp is in ``ceil(size / hop)`` or ``floor(size / hop)`` windows (``size`` need not
    be a multiple of ``hop``). ``end = start + size`` is exclusive; the close time is
    ``end + grace``. ``hop == size`` is a tumbling window; ``hop > size`` is refused (it would
    leave gaps that no window covers).
    """

    size: timedelta
    hop: timedelta
    size_ms: int = field(init=False, repr=False, compare=False)
    hop_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = to_millis(self.size, "Hopping(size=...)")
        hop = to_millis(self.hop, "Hopping(hop=...)")
        if hop > size:
            raise WindowConfigError(
                f"Hopping(size={self.size!r}, hop={self.hop!r}): hop must not exceed size, "
                f"or some timestamps would fall into no window; make hop smaller or size larger"
            )
        object.__setattr__(self, "size_ms", size)
        object.__setattr__(self, "hop_ms", hop)

    def starts(self, ts: int) -> list[int]:
        """The starts of every window that contains ``ts``, ascending."""
        last = ts - ts % self.hop_ms
        first = last
        while first - self.hop_ms > ts - self.size_ms:
            first -= self.hop_ms
        return list(range(first, last + 1, self.hop_ms))


@dataclass(frozen=True)
class Sliding:
    """Kafka Streams' ``SlidingWindows`` with a maximum time difference of ``size``.

    A window ``[start, start + size]`` is closed on **both** ends: it holds the records of its
    key with ``start <= ts <= end``, so two records are in a common window exactly when their
    timestamps differ by at most ``size``. Of the infinitely many such intervals only the ones
    where the set of records changes are materialised, as in Kafka Streams: for every accepted
    record at ``t``,

    - its **left window** ``[t - size, t]`` (the record at the right edge), and
    - its **right window** ``[t + 1, t + 1 + size]``, when it holds at least one record.

    A left and a right window with the same start are the same window. Aggregates are those
    of the records the window holds, folded in arrival (offset) order. Windows may start
    before the epoch: Kafka Streams' special case for records with ``ts < size`` (squashed into
    ``[0, size]``) is not reproduced. The close time is ``end + 1 + grace``.
    """

    size: timedelta
    size_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_ms", to_millis(self.size, "Sliding(size=...)"))


@dataclass(frozen=True)
class Session:
    """Per-key sessions of activity separated by more than ``gap`` of inactivity.

    A session's ``start`` and ``end`` are the timestamps of its first and last record (both
    inclusive). A record at ``ts`` joins, and so merges, every open session of its key with
    ``start - gap <= ts <= end + gap``; the close time is ``end + gap + grace``.
    """

    gap: timedelta
    gap_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gap_ms", to_millis(self.gap, "Session(gap=...)"))


WindowKind = Tumbling | Hopping | Sliding | Session
