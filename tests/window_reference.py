"""An independent, brute-force simulation of the window semantics, to test flows.windows against.

Written from the definitions, not from the implementation: it keeps every record, decides
lateness by looking at all windows a timestamp could be in, and computes every final result
by folding the accepted records from scratch. Slow on purpose; only for tests.

Input: records ``(key, ts, value)`` of one partition in offset order. Output: the final
results ``{(key, start, end): aggregate}`` (after the stream ends and every window closed)
and the set of indices of late records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rec = tuple[Any, int, Any]
Finals = dict[tuple[Any, int, int], Any]


def _stream_times(records: list[Rec]) -> list[int | None]:
    """The stream time before each record: the largest earlier timestamp, None for the first."""
    out: list[int | None] = []
    st: int | None = None
    for _, ts, _ in records:
        out.append(st)
        st = ts if st is None else max(st, ts)
    return out


def _closed(st: int | None, close: int) -> bool:
    return st is not None and st >= close


def hopping(
    records: list[Rec],
    size: int,
    hop: int,
    grace: int,
    initial: Callable[[], Any],
    fn: Callable[[Any, Any], Any],
) -> tuple[Finals, set[int]]:
    """Tumbling is hopping with ``hop == size``. Windows ``[s, s+size)``, ``s % hop == 0``."""
    before = _stream_times(records)
    members: dict[tuple[Any, int], list[int]] = {}
    late: set[int] = set()
    for i, (key, ts, _) in enumerate(records):
        starts = [s for s in range(ts - size + 1, ts + 1) if s % hop == 0]
        open_starts = [s for s in starts if not _closed(before[i], s + size + grace)]
        if not open_starts:
            late.add(i)
        for s in open_starts:
            members.setdefault((key, s), []).append(i)
    finals: Finals = {}
    for (key, s), idx in members.items():
        acc = initial()
        for i in idx:
            acc = fn(records[i][2], acc)
        finals[(key, s, s + size)] = acc
    return finals, late


def session(
    records: list[Rec],
    gap: int,
    grace: int,
    initial: Callable[[], Any],
    fn: Callable[[Any, Any], Any],
) -> tuple[Finals, set[int]]:
    """Sessions as lists of record indices; a session is final once stream time reached
    ``last + gap + grace``, and final sessions are never joined again."""
    before = _stream_times(records)
    sessions: dict[Any, list[list[int]]] = {}
    late: set[int] = set()

    def bounds(s: list[int]) -> tuple[int, int]:
        times = [records[i][1] for i in s]
        return min(times), max(times)

    final: list[tuple[Any, list[int]]] = []
    for i, (key, ts, _) in enumerate(records):
        st = before[i]
        still_open = []
        for s in sessions.get(key, []):
            if _closed(st, bounds(s)[1] + gap + grace):
                final.append((key, s))
            else:
                still_open.append(s)
        reach = [s for s in still_open if bounds(s)[0] - gap <= ts <= bounds(s)[1] + gap]
        if not reach and _closed(st, ts + gap + grace):
            late.add(i)
            sessions[key] = still_open
            continue
        merged = [j for s in reach for j in s] + [i]
        sessions[key] = [s for s in still_open if s not in reach] + [merged]
    for key, ss in sessions.items():
        final.extend((key, s) for s in ss)
    finals: Finals = {}
    for key, s in final:
        acc = initial()
        for i in sorted(s):
            acc = fn(records[i][2], acc)
        start, end = bounds(s)
        finals[(key, start, end)] = acc
    return finals, late


def sliding(
    records: list[Rec],
    size: int,
    grace: int,
    initial: Callable[[], Any],
    fn: Callable[[Any, Any], Any],
) -> tuple[Finals, set[int]]:
    """Kafka-style sliding windows ``[s, s+size]``, closing at ``s + size + 1 + grace``.

    Candidate starts are ``t - size`` and ``t + 1`` for the accepted timestamps ``t`` of the
    key. A record is late when every candidate window containing it (counting its own) has
    closed. A window's records ``F(s)`` are those in it that arrived while it was open; it is
    emitted when ``F(s)`` is not empty and it is a left window of a record of ``F(s)`` (a
    record on its end) or the right window of an accepted record (one at ``s - 1``).
    """
    before = _stream_times(records)
    accepted: list[int] = []
    late: set[int] = set()

    def close(s: int) -> int:
        return s + size + 1 + grace

    for i, (key, ts, _) in enumerate(records):
        times = [records[j][1] for j in accepted if records[j][0] == key] + [ts]
        candidates = {t - size for t in times} | {t + 1 for t in times}
        mine = [s for s in candidates if s <= ts <= s + size]
        if all(_closed(before[i], close(s)) for s in mine):
            late.add(i)
        else:
            accepted.append(i)
    finals: Finals = {}
    for key in {records[j][0] for j in accepted}:
        own = [j for j in accepted if records[j][0] == key]
        stamps = {records[j][1] for j in own}
        for s in {t - size for t in stamps} | {t + 1 for t in stamps}:
            f = [
                j
                for j in own
                if s <= records[j][1] <= s + size and not _closed(before[j], close(s))
            ]
            if not f:
                continue
            if not (any(records[j][1] == s + size for j in f) or (s - 1) in stamps):
                continue
            acc = initial()
            for j in f:
                acc = fn(records[j][2], acc)
            finals[(key, s, s + size)] = acc
    return finals, late
