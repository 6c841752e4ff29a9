"""Sliding and session windows: the per-key window machine, record by record.

:class:`MachineWindowStep` is the :class:`~flows.steps.window.WindowStep` of a
:class:`~flows.windows.Sliding` or :class:`~flows.windows.Session` window: it keeps each
key's rows as :class:`~flows.windows.WindowState` and lets
:meth:`~flows.windows.Windowing.apply` and :meth:`~flows.windows.Windowing.close` decide,
since a session merges rows and a sliding window copies aggregates between them. (Tumbling
and hopping windows, whose bounds follow from their start, take the in-place path of
:mod:`flows.steps.fixed_window`.)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.errors import FlowsError, LateRecord, UserFunctionError
from flows.ports import WindowRow
from flows.records import RawMessage
from flows.steps.base import BatchResult
from flows.steps.timed import Timed, Working
from flows.steps.window import WindowStep
from flows.windows import WindowState, retain_until

__all__ = ["MachineWindowStep", "PartitionWindows"]


@dataclass
class PartitionWindows(Working):
    """The windows of one partition that a batch or tick works on, and what it changed.

    Holds every row of the batch's keys and every row due by the batch's last stream time;
    rows it does not hold are neither touched nor due before the batch ends, which is why
    closing here is the same as closing over the whole table.
    """

    rows: dict[bytes, tuple[WindowState[Any], ...]] = field(default_factory=dict)
    upserted: dict[tuple[bytes, int], WindowState[Any]] = field(default_factory=dict)
    removed: set[tuple[bytes, int]] = field(default_factory=set)
    #: (due, key) of every key with rows; stale entries are skipped when popped
    heap: list[tuple[int, bytes]] = field(default_factory=list)

    def changed_rows(self) -> list[tuple[bytes, WindowState[Any]]]:
        return [(key, row) for (key, _), row in sorted(self.upserted.items(), key=_by_key)]

    def removed_rows(self) -> list[tuple[int, bytes, int]]:
        return [(self.partition, key, start) for key, start in sorted(self.removed)]


def _by_key(item: tuple[tuple[bytes, int], WindowState[Any]]) -> tuple[bytes, int]:
    return item[0]


@dataclass(eq=False)
class MachineWindowStep(WindowStep[PartitionWindows]):
    """A window step driving the per-key window machine (see the module docstring)."""

    def load(
        self, partition: int, stream_time: int | None, wall: int, stored: Sequence[WindowRow]
    ) -> PartitionWindows:
        """The working set of ``partition`` from the rows the store returned."""
        table = PartitionWindows(partition, stream_time, wall)
        by_key: dict[bytes, list[WindowState[Any]]] = {}
        for row in stored:
            state = WindowState(
                row.start, row.end, self.decode_window(row), row.first, row.last, row.pending
            )
            by_key.setdefault(row.key, []).append(state)
        for key, states in by_key.items():
            self._set(table, key, tuple(sorted(states, key=_start)))
        return table

    def changes(
        self, table: PartitionWindows
    ) -> tuple[list[WindowRow], list[tuple[int, bytes, int]]]:
        return self._encoded(table), table.removed_rows()

    def _encoded(self, table: PartitionWindows) -> list[WindowRow]:
        """The rows to upsert, encoded."""
        rows = []
        for key, state in table.changed_rows():
            value = self.encode_window(key, state.start, state.value)
            rows.append(
                WindowRow(
                    table.partition,
                    key,
                    state.start,
                    state.end,
                    state.first,
                    state.last,
                    state.pending,
                    self._due(state),
                    value,
                )
            )
        return rows

    # --- records and ticks ---------------------------------------------------------------

    def apply(
        self, table: PartitionWindows, prepared: Sequence[Timed], result: BatchResult
    ) -> None:
        """Applies ``prepared`` records (from :meth:`timestamps`) in order, closing what each
        one's stream time makes due; outputs and dead letters go to ``result``."""
        windowing = self.windowing
        assert windowing is not None
        outputs = result.outputs
        update = self.emit == "update"
        for item in prepared:
            raw, ts, key = item.raw, item.ts, item.key
            try:
                step = windowing.apply(table.rows.get(key, ()), ts, item, table.stream_time)
            except FlowsError:
                raise
            except Exception as error:
                failed = UserFunctionError.caused_by(
                    self.flow, raw.topic, raw.partition, raw.offset, error
                )
                self._fail(raw, failed, result)
                continue
            if step.closed:  # due before this record; never left over when closing each time
                outputs.extend(self._message(key, w) for w in step.closed)
            if step.late:
                table.late += 1
                self._fail(
                    raw,
                    LateRecord(
                        self.flow, raw.topic, raw.partition, raw.offset, ts, table.stream_time
                    ),
                    result,
                )
                continue
            for start in step.removed:
                self._remove(table, key, start)
            for window in step.upserted:
                table.upserted[(key, window.start)] = window
                table.removed.discard((key, window.start))
            self._set(table, key, step.windows)
            if update:
                outputs.extend(self._message(key, w) for w in step.changed)
            if table.stream_time is None or ts > table.stream_time:
                table.stream_time = ts
                self.close(table, outputs)

    def advance(
        self, table: PartitionWindows, stream_time: int | None, result: BatchResult
    ) -> None:
        """A tick: stream time moves to ``stream_time`` (never back) and what is due closes."""
        if stream_time is None:
            return
        if table.stream_time is None or stream_time > table.stream_time:
            table.stream_time = stream_time
        self.close(table, result.outputs)

    def close(self, table: PartitionWindows, outputs: list[RawMessage]) -> None:
        """Emits every window due by the table's stream time, in ``(close time, key,
        start)`` order, and removes or retains its row."""
        windowing = self.windowing
        assert windowing is not None
        now = table.stream_time
        if now is None:
            return
        heap, keys = table.heap, set()
        while heap and heap[0][0] <= now:
            keys.add(heapq.heappop(heap)[1])
        emitted: list[tuple[int, bytes, int, WindowState[Any]]] = []
        for key in keys:
            rows = table.rows.get(key)
            if not rows:
                continue
            closing = windowing.close(rows, now)
            emitted.extend((windowing.close_time(w), key, w.start, w) for w in closing.emitted)
            for start in closing.removed:
                self._remove(table, key, start)
            for window in closing.upserted:
                table.upserted[(key, window.start)] = window
            self._set(table, key, closing.windows)
        emitted.sort(key=_emission_order)
        outputs.extend(self._message(key, w) for _, key, _, w in emitted)

    # --- helpers -------------------------------------------------------------------------

    def _set(self, table: PartitionWindows, key: bytes, rows: tuple[WindowState[Any], ...]) -> None:
        if rows:
            table.rows[key] = rows
            heapq.heappush(table.heap, (min(self._due(w) for w in rows), key))
        else:
            table.rows.pop(key, None)

    @staticmethod
    def _remove(table: PartitionWindows, key: bytes, start: int) -> None:
        table.upserted.pop((key, start), None)
        table.removed.add((key, start))

    def _due(self, window: WindowState[Any]) -> int:
        windowing = self.windowing
        assert windowing is not None
        if window.pending:
            return windowing.close_time(window)
        return retain_until(windowing.kind, window, windowing.grace_ms)


def _start(window: WindowState[Any]) -> int:
    return window.start


def _emission_order(item: tuple[int, bytes, int, WindowState[Any]]) -> tuple[int, bytes, int]:
    return item[0], item[1], item[2]
