"""A throughput run: the records/s a system reads a case's input at, its CPU and memory.

How one throughput run is measured:

1. The case's input is produced once per harness run (seeded) into a fresh topic, before
   any system starts; every system reads the same topic with its own consumer group and
   writes its own fresh output topic (or table).
2. The system starts as a child process. The window opens when its consumer group is
   stable with partitions assigned (consumption starts there; the first output is the
   fallback) and closes when the output is complete: the output topic's last stable
   offset stops at or past the expected count and a read_committed count confirms it
   (so exactly-once outputs count only once committed), or, for a table, when its rows
   and the sum of their ``seq`` equal what the input implies. Window results are then
   checked one by one against what the input implies (outside the window): every
   ``(key, start)`` once, with the right count; a run that differs fails.
3. ``records/s`` = input records / window; CPU = the child's user+system seconds in the
   window; peak RSS = the child's ``VmHWM`` (whole life). The child then gets SIGTERM.

The keyspace case is a throughput run of the same count over a keyspace of its variant's
size (:func:`bench.runs.keyspace_records`). :func:`run` is what :class:`bench.harness.Harness`
calls for every case but the latency and failover ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import data
from bench.measure import Child
from bench.runs import SCALE, Result

if TYPE_CHECKING:
    from bench.harness import Harness


def run(h: Harness, result: Result, log: Path) -> None:
    scale = SCALE.get(result.system, 1.0)
    prepared = h.prepare(result.case, scale, result.variant)
    if scale != 1.0:
        result.notes.append(
            f"reads the first {scale:.0%} of the input ({prepared.records:,} records)"
        )
    result.input_records = prepared.records
    result.outputs_expected = prepared.outputs
    child, watched, table = h.start(result, log, prepared.topic, None)
    sink = h.names(result)[1]
    try:
        if result.case == "materialise":
            expect = prepared.expect
            assert expect is not None

            def progress() -> tuple[int, ...]:
                return h.db.table_progress(table)

            def complete(value: tuple[int, ...]) -> bool:
                return value == (expect.rows, expect.seq_sum)

            def started(value: tuple[int, ...]) -> bool:
                return value[0] > 0

            _watch(h, result, child, watched, progress, complete, started, exact=True)
            result.outputs_seen = progress()[0]
        else:
            # the example's table holds each word's last count: they add up to the words
            tabled = result.variant == "eos-table"

            def progress() -> tuple[int, ...]:
                if tabled:
                    return (
                        h.broker.end_offsets(sink),
                        h.db.column_sum(table, "count"),
                    )
                return (h.broker.end_offsets(sink),)

            def complete(value: tuple[int, ...]) -> bool:
                return value[0] >= prepared.outputs and (not tabled or value[1] == prepared.outputs)

            def started(value: tuple[int, ...]) -> bool:
                return h.broker.end_offsets(sink, committed=False) > 0

            read: list[tuple[bytes | None, bytes]] = []

            def count() -> int:
                if prepared.windows is None:
                    return h.broker.count(sink)
                read[:] = h.broker.read(sink)  # kept for the check below
                return len(read)

            _watch(h, result, child, watched, progress, complete, started, exact=False, count=count)
            if prepared.windows is not None:
                if result.status == "ok":
                    _check_windows(result, read, prepared.windows)
                else:  # what was missing, for the error (the run failed anyway)
                    found = Result(result.case, result.variant, result.system)
                    _check_windows(found, list(h.broker.read(sink)), prepared.windows)
                    result.error = f"{found.error or 'the results were right'}\n{result.error}"
    finally:
        end = child.stop()
        result.exit_code = end.code
        result.cpu_total_s = round(end.cpu_total_s, 2)
        result.peak_rss_mb = round(child.peak_rss_mb(), 1) or None
    if result.status != "ok" and not result.error:
        result.error = child.tail()
    if result.wall_s:
        result.records_per_s = round(result.input_records / result.wall_s, 1)
        if result.cpu_s is not None:
            result.cpu_s_per_million = round(result.cpu_s / result.input_records * 1e6, 2)


def _check_windows(
    result: Result, read: list[tuple[bytes | None, bytes]], expect: data.WindowExpectation
) -> None:
    """Fails ``result`` unless ``read`` holds each expected window result once, right.

    A result is the window's key and a JSON ``{"start", "end", "value"}`` (the shape both
    flows and Quix Streams give), ``value`` the window's count.
    """
    seen: dict[tuple[str, int], int] = {}
    duplicates, malformed = 0, 0
    for key, value in read:
        try:
            doc = json.loads(value)
            window = ((key or b"").decode(), int(doc["start"]))
            counted = int(doc["value"])
            if int(doc["end"]) != window[1] + data.WINDOW_MS:
                raise ValueError(doc)
        except (ValueError, KeyError, TypeError):
            malformed += 1
            continue
        duplicates += window in seen
        seen[window] = counted
    wanted = expect.counts
    missing = [w for w in wanted if w not in seen]
    unexpected = [w for w in seen if w not in wanted]
    wrong = [w for w, n in seen.items() if w in wanted and wanted[w] != n]
    result.outputs_seen = len(read)
    if duplicates or malformed or missing or unexpected or wrong:
        result.status = "failed"
        example = (missing or unexpected or wrong)[:3]
        result.error = (
            f"wrong window results: {len(read):,} read, {len(wanted):,} expected; "
            f"{duplicates:,} duplicates, {malformed:,} malformed, {len(missing):,} missing, "
            f"{len(unexpected):,} unexpected, {len(wrong):,} with a wrong count "
            f"(for example {example})"
        )
    else:
        result.notes.append(
            f"all {len(wanted):,} window results checked: each once, the right count"
        )


def _watch(
    h: Harness,
    result: Result,
    child: Child,
    group: str,
    progress: Callable[[], tuple[int, ...]],
    complete: Callable[[tuple[int, ...]], bool],
    started: Callable[[tuple[int, ...]], bool],
    exact: bool,
    count: Callable[[], int] | None = None,
    settle: float = 2.5,
) -> None:
    """Polls until complete; fills wall_s and cpu_s (or status and error)."""
    begin = time.monotonic()
    deadline = begin + h.o.timeout
    window_start: tuple[float, float] | None = None
    last: tuple[int, ...] | None = None
    changed = (begin, 0.0)
    while True:
        now, cpu = time.monotonic(), child.cpu()
        value = progress()
        if value[0] < 0:  # the broker could not tell this time
            time.sleep(0.05)
            continue
        if window_start is None and (h.broker.group_active(group) or started(value)):
            window_start = (now, cpu)
        if value != last:
            last, changed = value, (now, cpu)
        if complete(value) and window_start is not None:
            if exact:
                break
            if now - changed[0] >= settle:  # stopped moving: count what is committed
                seen = count() if count is not None else value[0]
                result.outputs_seen = seen
                if seen >= result.outputs_expected:
                    break
                changed = (time.monotonic(), changed[1])
        code = child.poll()
        if code is not None:
            result.status = "failed"
            result.error = (
                f"{result.system} exited with {code} before the output was "
                f"complete ({value} of {result.outputs_expected}):\n{child.tail()}"
            )
            return
        if now > deadline:
            result.status = "timeout"
            result.error = (
                f"not complete after {h.o.timeout:.0f} s ({value} of "
                f"{result.outputs_expected} expected):\n{child.tail()}"
            )
            return
        time.sleep(0.05)
    assert window_start is not None
    result.wall_s = round(changed[0] - window_start[0], 3)
    result.cpu_s = round(changed[1] - window_start[1], 2)
    if not exact:
        result.outputs_seen = max(result.outputs_seen, 0)
