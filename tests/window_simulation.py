"""An independent, step-by-step simulation of a windowed flow's output, to compare real runs with.

Written from the contract in issue 13 (and nothing in ``flows.windows``): it replays one input
partition's records in offset order and says, in order, which window results the flow must
write to its sink and which records it must dead-letter as late. Where
``tests/window_reference.py`` gives only the final *set* of results, this gives the
*sequence*, which is what a sink partition holds.

Per input partition, stream time ``st`` starts as ``None``; for each record in offset order:

1. ``ts`` is the record's timestamp (int ms).
2. The record is **late** when every window it would fall into has closed by the stream time
   *before* it (close time ``<= st``). Tumbling and hopping: the windows ``[s, s + size)``
   containing ``ts``, closing at ``s + size + grace``. Session: no open session of its key is
   in reach (``start - gap <= ts <= end + gap``) and ``ts + gap + grace <= st``. A late
   record yields one dead-letter record and changes nothing else (``st`` stays).
3. Otherwise it is folded into each open window containing it. Tumbling: ``s = ts - ts %
   size``; hopping: every ``s`` with ``s % hop == 0`` and ``s <= ts < s + size`` whose window
   has not closed; session: every open session of its key in reach merges with the record
   into one (start = min, end = max of the timestamps; the aggregate is ``fn`` folded over all
   its records in offset order from ``initial()``), or a new session ``[ts, ts]`` starts.
   With ``emit="update"`` the changed windows' aggregates are output now, in order of start.
4. ``st = max(st, ts)``.
5. Every window of the partition (any key) whose close time ``<= st`` is emitted (with
   ``emit="final"``) in order of ``(close time, key, start)`` and forgotten. Close time:
   tumbling and hopping ``end + grace`` (``end = start + size``, exclusive), session ``end +
   gap + grace`` (``end`` = its last timestamp, inclusive).

At the end of the input (the run closes what is left through ``close_after_idle``), every
remaining window is emitted as if ``st`` had jumped past every close time, again in order of
``(close time, key, start)``.

Outputs go to the sink keyed by the window key, so a sink partition with the same number of
partitions as the source, fed by keys produced with Kafka's default partitioner, holds
exactly one input partition's sequence.

Assumption beyond the contract's letter: with ``emit="update"`` a window that closes is
forgotten without another output (its last update already carried its final aggregate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class TumblingWindows:
    """``[s, s + size)`` with ``s = ts - ts % size``."""

    size: int


@dataclass(frozen=True)
class HoppingWindows:
    """Every ``[s, s + size)`` with ``s % hop == 0`` and ``s <= ts < s + size``."""

    size: int
    hop: int


@dataclass(frozen=True)
class SessionWindows:
    """Sessions of a key: a record joins every session with ``start - gap <= ts <= end + gap``."""

    gap: int


Kind = TumblingWindows | HoppingWindows | SessionWindows


@dataclass(frozen=True)
class Incoming:
    """One input record as the simulation sees it.

    ``value`` is the decoded value the user functions see (``record.value``); ``raw`` the
    bytes that a dead-letter record must carry unchanged.
    """

    offset: int
    key: bytes
    timestamp: int
    value: Any = None
    raw: bytes = b""


@dataclass(frozen=True)
class Spec:
    """A windowed flow, in plain integers: what the simulation needs of a ``Window``.

    ``fn(record, acc)`` receives the :class:`Incoming` record (its ``.value`` and ``.key`` as a
    flows record has them).
    """

    kind: Kind
    initial: Callable[[], Any]
    fn: Callable[[Incoming, Any], Any]
    grace: int = 0
    emit: Literal["final", "update"] = "final"


@dataclass(frozen=True)
class Emitted:
    """One window result: the sink record's key and its value ``{"start", "end", "value"}``."""

    key: bytes
    start: int
    end: int
    value: Any

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "value": self.value}


@dataclass
class Outcome:
    """What one input partition makes: sink results and late records, each in order."""

    emitted: list[Emitted] = field(default_factory=list)
    late: list[Incoming] = field(default_factory=list)


@dataclass
class _Open:
    """An open window of one key: its bounds and the records folded into it, in offset order."""

    start: int
    end: int  # exclusive for tumbling/hopping, the last timestamp for sessions
    records: list[Incoming]


def _close_time(spec: Spec, window: _Open) -> int:
    if isinstance(spec.kind, SessionWindows):
        return window.end + spec.kind.gap + spec.grace
    return window.end + spec.grace


def _starts(kind: TumblingWindows | HoppingWindows, ts: int) -> list[int]:
    """The starts of the windows containing ``ts``, ascending, written out literally."""
    if isinstance(kind, TumblingWindows):
        return [ts - ts % kind.size]
    starts = []
    s = ts - ts % kind.hop  # the latest start <= ts on the hop grid
    while s > ts - kind.size:  # ts < s + size
        starts.append(s)
        s -= kind.hop
    return sorted(starts)


def _aggregate(spec: Spec, records: Sequence[Incoming]) -> Any:
    acc = spec.initial()
    for record in records:
        acc = spec.fn(record, acc)
    return acc


class PartitionSimulation:
    """The state of one input partition: stream time and every open window of every key."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.stream_time: int | None = None
        #: key -> start -> window (sessions: at most one per start, as they never overlap)
        self.open: dict[bytes, dict[int, _Open]] = {}
        self.outcome = Outcome()
        self._last_offset: int | None = None

    def _closed(self, close: int) -> bool:
        return self.stream_time is not None and close <= self.stream_time

    def feed(self, record: Incoming) -> None:
        """Steps 1 to 5 for one record; records must come in offset order."""
        if self._last_offset is not None and record.offset <= self._last_offset:
            raise ValueError(f"offset {record.offset} after {self._last_offset}")
        self._last_offset = record.offset
        ts = record.timestamp
        changed = (
            self._session(record)
            if isinstance(self.spec.kind, SessionWindows)
            else self._fixed(self.spec.kind, record)
        )
        if changed is None:  # late
            self.outcome.late.append(record)
            return
        if self.spec.emit == "update":
            for window in sorted(changed, key=lambda w: w.start):
                self._emit(record.key, window)
        self.stream_time = ts if self.stream_time is None else max(self.stream_time, ts)
        self._close(self._closed)

    def finish(self) -> Outcome:
        """Closes every remaining window (stream time past every close time)."""
        self._close(lambda close: True)
        return self.outcome

    def _fixed(
        self, kind: TumblingWindows | HoppingWindows, record: Incoming
    ) -> list[_Open] | None:
        """Tumbling and hopping: the windows folded into, or None when the record is late."""
        starts = [
            s
            for s in _starts(kind, record.timestamp)
            if not self._closed(s + kind.size + self.spec.grace)
        ]
        if not starts:
            return None
        mine = self.open.setdefault(record.key, {})
        changed = []
        for s in starts:
            window = mine.setdefault(s, _Open(s, s + kind.size, []))
            window.records.append(record)
            changed.append(window)
        return changed

    def _session(self, record: Incoming) -> list[_Open] | None:
        """Session: the merged or new session, or None when the record is late."""
        assert isinstance(self.spec.kind, SessionWindows)
        gap, ts = self.spec.kind.gap, record.timestamp
        mine = self.open.setdefault(record.key, {})
        reach = [w for w in mine.values() if w.start - gap <= ts <= w.end + gap]
        if not reach and self._closed(ts + gap + self.spec.grace):
            return None
        for window in reach:
            del mine[window.start]
        records = sorted([r for w in reach for r in w.records] + [record], key=lambda r: r.offset)
        times = [r.timestamp for r in records]
        merged = _Open(min(times), max(times), records)
        mine[merged.start] = merged
        return [merged]

    def _close(self, due: Callable[[int], bool]) -> None:
        closing = [
            (_close_time(self.spec, window), key, window.start, window)
            for key, windows in self.open.items()
            for window in windows.values()
            if due(_close_time(self.spec, window))
        ]
        for _, key, start, window in sorted(closing, key=lambda c: (c[0], c[1], c[2])):
            if self.spec.emit == "final":
                self._emit(key, window)
            del self.open[key][start]
            if not self.open[key]:
                del self.open[key]

    def _emit(self, key: bytes, window: _Open) -> None:
        value = _aggregate(self.spec, window.records)
        self.outcome.emitted.append(Emitted(key, window.start, window.end, value))


def simulate_partition(spec: Spec, records: Iterable[Incoming]) -> Outcome:
    """One input partition's sink results and late records, in order."""
    simulation = PartitionSimulation(spec)
    for record in records:
        simulation.feed(record)
    return simulation.finish()


def simulate(spec: Spec, partitions: Mapping[int, Iterable[Incoming]]) -> dict[int, Outcome]:
    """:func:`simulate_partition` for each input partition (they share nothing)."""
    return {p: simulate_partition(spec, records) for p, records in sorted(partitions.items())}


__all__ = [
    "Emitted",
    "HoppingWindows",
    "Incoming",
    "Kind",
    "Outcome",
    "PartitionSimulation",
    "SessionWindows",
    "Spec",
    "TumblingWindows",
    "simulate",
    "simulate_partition",
]
