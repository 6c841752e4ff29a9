"""The window step: event-time windows of one source partition, record by record.

A :class:`WindowStep` is what the compiler makes of a :class:`~flows.wiring.Window`. The
engine's :class:`~flows.engine.windowed.WindowBatch` loads a partition's rows into a
:class:`PartitionWindows`, hands it the partition's records (:meth:`WindowStep.fold`) or a
new stream time (:meth:`WindowStep.advance`, a tick), and commits what it changed. The rules,
per partition and in offset order, so that the outputs depend on nothing but the records:

1. a record's timestamp is taken (``timestamp(record)`` or the Kafka timestamp);
2. :meth:`~flows.windows.Windowing.apply` with the stream time *before* it: a record late for
   all its windows is dead-lettered as :class:`~flows.errors.LateRecord`; otherwise it is
   folded, and ``emit="update"`` outputs its windows' aggregates;
3. stream time becomes ``max(stream time, ts)``;
4. every window of the partition whose close time stream time has reached is emitted, in order
   of ``(close time, key, start)``, and deleted (sliding rows stay as copy sources until their
   retention ends, see :mod:`flows.windows.sliding`).

A failing record (undecodable, a timestamp or user function that raises) follows the flow's
error policy and changes neither state nor stream time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.encoding import decode, decode_part, encode_part
from flows.errors import (
    DecodeError,
    EncodeError,
    FlowFailedError,
    FlowsError,
    LateRecord,
    UserFunctionError,
)
from flows.formats import Format
from flows.ports import StateStore, WindowRow
from flows.records import RawMessage, RawRecord, Record
from flows.steps.base import BatchResult, Step
from flows.steps.timed import Timed, Working, event_millis
from flows.steps.window_codec import AccCodec, Kept, refolding
from flows.topics import Topic
from flows.windows import Hopping, Session, Tumbling, Windowing, WindowState, retain_until

__all__ = ["PartitionWindows", "WindowStep", "windowing_for"]


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
class WindowStep(Step):
    """Aggregates per key and event-time window; the engine loads and stores the rows.

    A :class:`~flows.steps.timed.TimedStep` over :class:`PartitionWindows` (the contract
    with the engine is there).
    """

    windowing: Windowing[Timed, Any] | None = None
    timestamp: Callable[[Record[Any, Any]], Any] | None = None
    emit: str = "final"
    result: Callable[[Any, int, int, Any], Any] | None = None
    state_format: Format[Any] | None = None
    table: str = ""
    #: milliseconds of quiet after which a caught-up partition follows the wall clock
    close_after_idle: int | None = None
    codec: AccCodec | None = None

    def prepare(self, store: StateStore) -> None:
        store.ensure_window_table(self.table)

    @property
    def source(self) -> Topic:
        return self.sources[0]

    @property
    def sink(self) -> Topic:
        return self.sinks[0]

    # --- loading and storing -------------------------------------------------------------

    def timestamps(self, records: Sequence[RawRecord], result: BatchResult) -> list[Timed]:
        """Each record decoded with its timestamp, in offset order; records that fail here
        follow the error policy (into ``result``) and are left out."""
        prepared: list[Timed] = []
        source = self.source
        for raw in records:
            try:
                if raw.key is None:
                    raise ValueError("a windowed flow needs keyed records; this one has none")
                record = decode(source, raw)
                try:
                    ts = event_millis(
                        record.timestamp if self.timestamp is None else self.timestamp(record)
                    )
                except Exception as error:
                    raise UserFunctionError(
                        self.flow, raw.topic, raw.partition, raw.offset, error
                    ) from error
            except (DecodeError, UserFunctionError) as error:
                self._fail(raw, error, result)
                continue
            except ValueError as error:
                wrapped = UserFunctionError(self.flow, raw.topic, raw.partition, raw.offset, error)
                self._fail(raw, wrapped, result)
                continue
            prepared.append(Timed(raw, record, raw, ts))
        return prepared

    def load(
        self, partition: int, stream_time: int | None, wall: int, stored: Sequence[WindowRow]
    ) -> PartitionWindows:
        """The working set of ``partition`` from the rows the store returned."""
        assert self.codec is not None
        table = PartitionWindows(partition, stream_time, wall)
        by_key: dict[bytes, list[WindowState[Any]]] = {}
        for row in stored:
            state = WindowState(
                row.start, row.end, self.codec.decode(row.value), row.first, row.last, row.pending
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
        assert self.codec is not None
        rows = []
        for key, state in table.changed_rows():
            try:
                value = self.codec.encode(state.value)
            except Exception as error:
                raise FlowFailedError(
                    f"flow {self.flow!r}: the aggregate of key {key!r}, window {state.start}, "
                    f"does not fit the state format ({error}); return values the format "
                    f"encodes from fn, or set state_format"
                ) from error
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

    def fold(self, table: PartitionWindows, prepared: Sequence[Timed], result: BatchResult) -> None:
        """Applies ``prepared`` records (from :meth:`timestamps`) in order, closing what each
        one's stream time makes due; outputs and dead letters go to ``result``."""
        windowing = self.windowing
        assert windowing is not None
        outputs = result.outputs
        update = self.emit == "update"
        for item in prepared:
            raw, ts = item.raw, item.ts
            key = raw.key
            assert key is not None
            try:
                step = windowing.apply(table.rows.get(key, ()), ts, item, table.stream_time)
            except FlowsError:
                raise
            except Exception as error:
                failed = UserFunctionError(self.flow, raw.topic, raw.partition, raw.offset, error)
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

    def _message(self, key: bytes, window: WindowState[Any]) -> RawMessage:
        """The output of one window: key, ``{"start", "end", "value"}`` or ``result(...)``,
        the window's bounds in headers, its last instant as timestamp."""
        acc = window.value.acc if isinstance(window.value, Kept) else window.value
        source, sink = self.source, self.sink
        try:
            if self.result is None:
                value: Any = {"start": window.start, "end": window.end, "value": acc}
            else:
                decoded = decode_part(source.key_format, _raw_key(source, key), key, "key")
                value = self.result(decoded, window.start, window.end, acc)
        except (DecodeError, FlowsError):
            raise
        except Exception as error:
            raise FlowFailedError(
                f"flow {self.flow!r}: result(key, start, end, acc) raised for key {key!r}, "
                f"window {window.start}: {error!r}"
            ) from error
        out_key = (
            key
            if sink.key_format is source.key_format
            else encode_part(
                sink.key_format,
                decode_part(source.key_format, _raw_key(source, key), key, "key"),
                sink,
                "key",
            )
        )
        try:
            encoded = encode_part(sink.value_format, value, sink, "value")
        except EncodeError as error:
            raise FlowFailedError(
                f"flow {self.flow!r}: a window result does not encode as {sink.name!r}'s "
                f"format: {error}"
            ) from error
        last = window.end - 1 if self._exclusive else window.end
        headers = (
            ("flows.window.start", str(window.start).encode()),
            ("flows.window.end", str(window.end).encode()),
        )
        return RawMessage(sink.name, out_key, encoded, headers, last)

    @property
    def _exclusive(self) -> bool:
        """Whether window ends are exclusive (tumbling, hopping) or inclusive."""
        assert self.windowing is not None
        return isinstance(self.windowing.kind, Tumbling | Hopping)


def _raw_key(source: Topic, key: bytes) -> RawRecord:
    """A stand-in record for naming a key that fails to decode."""
    return RawRecord(topic=source.name, partition=-1, offset=-1, key=key, value=None)


def _start(window: WindowState[Any]) -> int:
    return window.start


def _emission_order(item: tuple[int, bytes, int, WindowState[Any]]) -> tuple[int, bytes, int]:
    return item[0], item[1], item[2]


def windowing_for(
    kind: Any,
    initial: Callable[[], Any],
    fn: Callable[[Any, Any], Any],
    merge: Callable[[Any, Any], Any] | None,
    grace: Any,
    decode_raw: Callable[[RawRecord], Record[Any, Any]],
) -> tuple[Windowing[Timed, Any], bool]:
    """The machine over :class:`Input` items, and whether it keeps the records of open
    sessions (a :class:`~flows.windows.Session` without ``merge``)."""
    if isinstance(kind, Session) and merge is None:
        init, folded, merged = refolding(initial, fn, decode_raw)
        return Windowing(kind, init, folded, grace, merged), True

    def folded_input(item: Timed, acc: Any) -> Any:
        return fn(item.record, acc)

    return Windowing(kind, initial, folded_input, grace, merge), False
