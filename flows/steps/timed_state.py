"""Stateful flows with timers or a TTL: per-key state and timers that fall due in time.

A stateful flow given ``on_timer``, ``ttl`` or ``timestamp`` compiles to a
:class:`TimedStatefulStep`, run by :class:`~flows.engine.timed.TimedBatch` rather than the
plain stateful batch. Its rows live in a window-shaped table, per ``(partition, key, start)``:

* ``start = 0``: the key's state (in the flow's state format); it falls due ``ttl`` after it
  was last written (by stream time, or the wall clock with ``ttl_clock="wall"``), and then
  the key behaves as absent; the row is not pending, so the store deletes it, in bounded
  batches, in a later commit (:attr:`~flows.ports.StateCommit.expire`);
* ``start = slot(name) > 0``: a timer (its name and data as JSON), due at its time.

With ``encrypt=True`` both kinds of row are encrypted, each bound to its key and slot
(:mod:`flows.encryption`).

Per record, in offset order: stream time moves to the record's timestamp if later, and
every timer due by stream time (or by the batch's wall clock) fires, in order of ``(due,
key)``: ``on_timer(key, state, timer)`` runs, and its outputs and new state count as a
record's (a key idle for its TTL is absent to it, and to the record that comes after).
Then ``fn(record, state)`` runs with :func:`~flows.timers.schedule_timer` and
:func:`~flows.timers.cancel_timer` bound to the record's key, and what it scheduled in the
past fires at once. A state written at stream time ``t`` reads as absent from stream time
``t + ttl`` on.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from flows.encoding import decode, decode_part, encode_outputs
from flows.encryption import state_context, timer_context
from flows.errors import DecodeError, EncodeError, FlowFailedError, FlowsError, UserFunctionError
from flows.ports import BYTES_COLUMNS, StateColumns, StateStore, WindowRow
from flows.records import RawRecord, Record
from flows.steps.base import BatchResult
from flows.steps.stateful import StatefulStep
from flows.steps.timed import NEVER, Timed, Working, event_time, unkeyed
from flows.timers import Timer, TimerScope, timer_scope

__all__ = ["STATE_SLOT", "KeyedState", "TimedStatefulStep", "timer_slot"]

#: the row of a key's state; timers use the slots above it
STATE_SLOT = 0
#: fires per call of :meth:`TimedStatefulStep._close` before it gives up (a timer that keeps
#: rescheduling itself into the past would otherwise loop forever)
MAX_FIRES = 100_000


def timer_slot(name: str) -> int:
    """The row of timer ``name`` within its key: a 62-bit hash, never 0 (the state's)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 2) or 1


@dataclass
class KeyedState(Working):
    """States and timers of one partition's keys that a batch or tick works on."""

    states: dict[bytes, Any] = field(default_factory=dict)
    #: when each state was last written (stream time or wall clock, per ``ttl_clock``)
    touched: dict[bytes, int] = field(default_factory=dict)
    timers: dict[bytes, dict[str, Timer]] = field(default_factory=dict)
    #: (due, wall, key, start) of every row; stale entries are skipped when popped
    heap: list[tuple[int, bool, bytes, int]] = field(default_factory=list)
    upserted: dict[tuple[bytes, int], WindowRow] = field(default_factory=dict)
    removed: set[tuple[bytes, int]] = field(default_factory=set)


@dataclass(eq=False)
class TimedStatefulStep(StatefulStep):
    """A stateful step whose keys have timers, a TTL, or event time (see the module)."""

    timestamp: Callable[[Record[Any, Any]], Any] | None = None
    on_timer: Callable[[Any, Any, Timer], tuple[Any, Any]] | None = None
    ttl: int | None = None
    ttl_wall: bool = False

    @property
    def close_after_idle(self) -> int | None:
        return None

    @property
    def wall_clock(self) -> bool:
        return self.ttl_wall or self.on_timer is not None

    @property
    def whole_keys(self) -> bool:
        return True

    @cached_property
    def columns(self) -> StateColumns:
        """Bytes: the rows live in a window table, whose keys and values are ``bytea``."""
        return BYTES_COLUMNS

    def value_context(self, key: bytes, start: int) -> bytes:
        return state_context(key) if start == STATE_SLOT else timer_context(key, start)

    def prepare(self, store: StateStore) -> None:
        self.require_keys()
        store.ensure_window_table(self.table)

    # --- loading and storing -------------------------------------------------------------

    def timestamps(self, records: Sequence[RawRecord], result: BatchResult) -> list[Timed]:
        prepared: list[Timed] = []
        topics = {topic.name: topic for topic in self.sources}
        for raw in records:
            origin = raw
            try:
                if raw.key is None:
                    raise unkeyed(self.flow, raw)
                if self.envelope_sources is None:
                    record = decode(topics[raw.topic], raw)
                else:
                    record, origin = self._unwrap(raw)
                ts = event_time(self.flow, record, self.timestamp)
            except (DecodeError, UserFunctionError) as error:
                self._fail(origin, error, result)
                continue
            prepared.append(Timed(raw, record, origin, ts, raw.key))
        return prepared

    def load(
        self, partition: int, stream_time: int | None, wall: int, stored: Sequence[WindowRow]
    ) -> KeyedState:
        working = KeyedState(partition, stream_time, wall)
        for row in stored:
            if row.start == STATE_SLOT:
                working.states[row.key] = self.decode_state(row.key, row.value)
                working.touched[row.key] = row.last
            else:
                payload = self.unseal(row.key, row.value, timer_context(row.key, row.start))
                name, data = _timer_payload(payload)
                timer = Timer(name, row.due, "wall" if row.wall else "event", data)
                working.timers.setdefault(row.key, {})[name] = timer
                heapq.heappush(working.heap, (row.due, row.wall, row.key, row.start))
        return working

    def expired(self, row: WindowRow, stream_time: int | None, wall: int) -> bool:
        """Whether a state row's TTL has run out by ``stream_time`` or the ``wall`` clock
        (its row may not be deleted yet: the store deletes such rows in bounded batches)."""
        if row.start != STATE_SLOT or self.ttl is None:
            return False
        if row.wall:
            return row.due <= wall
        return stream_time is not None and row.due <= stream_time

    def _state(self, working: KeyedState, key: bytes) -> Any:
        """The key's state, or None when it has none or its TTL ran out."""
        state = working.states.get(key)
        if state is None or self.ttl is None:
            return state
        now = working.wall if self.ttl_wall else working.stream_time
        if now is not None and working.touched[key] + self.ttl <= now:
            return None  # behaves as absent; its row goes in a bounded expiry
        return state

    def changes(self, working: KeyedState) -> tuple[list[WindowRow], list[tuple[int, bytes, int]]]:
        upserted = [working.upserted[k] for k in sorted(working.upserted)]
        removed = [(working.partition, key, start) for key, start in sorted(working.removed)]
        return upserted, removed

    # --- records and ticks ---------------------------------------------------------------

    def apply(self, working: KeyedState, records: Sequence[Timed], result: BatchResult) -> None:
        self._close(working, result)  # what the wall clock made due before these records
        call = self.call
        assert call is not None
        for item in records:
            key, record = item.key, item.record
            if working.stream_time is None or item.ts > working.stream_time:
                working.stream_time = item.ts
                self._close(working, result)  # what is due by the record's time fires first
            scope = TimerScope(self.flow, item.ts, working.wall, {}, set())
            try:
                with timer_scope(scope):
                    returned, new_state = call(record, self._state(working, key))
                    produced = encode_outputs(
                        self.emits, self.emitters[record.topic], returned, record, item.origin
                    )
            except EncodeError as error:
                self._fail(item.origin, error, result)
                continue
            except FlowsError:
                raise
            except Exception as error:
                failed = UserFunctionError.caused_by(
                    self.flow, record.topic, record.partition, record.offset, error
                )
                self._fail(item.origin, failed, result)
                continue
            if produced:
                result.outputs.extend(produced)
            else:
                result.filtered += 1
            self._apply(working, key, new_state, scope, working.stream_time)
            self._close(working, result)  # a timer the record scheduled in the past

    def advance(self, working: KeyedState, stream_time: int | None, result: BatchResult) -> None:
        if stream_time is not None and (
            working.stream_time is None or stream_time > working.stream_time
        ):
            working.stream_time = stream_time
        self._close(working, result)

    # --- what falls due ------------------------------------------------------------------

    def _close(self, working: KeyedState, result: BatchResult) -> None:
        """Fires every timer due by stream time or the wall clock, in ``(due, key)``
        order, until none is (a timer may schedule another that is due already). States
        whose TTL runs out need nothing here: they read as absent (:meth:`_state`)."""
        for _ in range(MAX_FIRES):
            due = self._pop_due(working)
            if not due:
                return
            for _, _, key, start in sorted(due, key=_firing_order):
                self._fire(working, key, start, result)
        raise FlowFailedError(
            f"flow {self.flow!r}: {MAX_FIRES} timers fell due at once in partition "
            f"{working.partition}; does on_timer keep scheduling a timer in the past?"
        )

    def _pop_due(self, working: KeyedState) -> list[tuple[int, bool, bytes, int]]:
        found: list[tuple[int, bool, bytes, int]] = []
        kept: list[tuple[int, bool, bytes, int]] = []
        heap, stream_time = working.heap, working.stream_time
        while heap:
            entry = heap[0]
            due, wall = entry[0], entry[1]
            if due > max(working.wall, stream_time if stream_time is not None else due - 1):
                break
            heapq.heappop(heap)
            if not self._current(working, entry):
                continue  # stale: the row moved or went
            reached = (
                due <= working.wall if wall else stream_time is not None and due <= stream_time
            )
            (found if reached else kept).append(entry)
        for entry in kept:
            heapq.heappush(heap, entry)
        return found

    @staticmethod
    def _current(working: KeyedState, entry: tuple[int, bool, bytes, int]) -> bool:
        due, wall, key, start = entry
        timer = next(
            (t for t in working.timers.get(key, {}).values() if timer_slot(t.name) == start), None
        )
        return timer is not None and timer.due == due and (timer.clock == "wall") == wall

    def _delete_state(self, working: KeyedState, key: bytes) -> None:
        working.states.pop(key, None)
        working.touched.pop(key, None)
        self._remove(working, key, STATE_SLOT)

    def _fire(self, working: KeyedState, key: bytes, start: int, result: BatchResult) -> None:
        timers = working.timers.get(key, {})
        timer = next(t for t in timers.values() if timer_slot(t.name) == start)
        del timers[timer.name]
        self._remove(working, key, start)
        on_timer = self.on_timer
        if on_timer is None:
            return
        source = self.origins[0]
        raw = RawRecord(source.name, working.partition, -1, key, None, (), timer.due)
        event_now = working.stream_time if working.stream_time is not None else timer.due
        scope = TimerScope(self.flow, event_now, working.wall, {}, set())
        try:
            decoded_key = decode_part(source.key_format, raw, key, "key")
            record: Record[Any, Any] = Record(
                source.name, working.partition, -1, decoded_key, None, (), timer.due
            )
            with timer_scope(scope):
                returned, new_state = on_timer(decoded_key, self._state(working, key), timer)
                produced = encode_outputs(
                    self.emits, self.emitters[source.name], returned, record, raw
                )
        except FlowsError as error:
            if not isinstance(error, DecodeError | EncodeError):
                raise
            self._fail(_timer_record(raw, timer), error, result)
            return
        except Exception as error:
            failed = UserFunctionError.caused_by(
                self.flow, source.name, working.partition, -1, error
            )
            self._fail(_timer_record(raw, timer), failed, result)
            return
        result.outputs.extend(produced)
        self._apply(working, key, new_state, scope, event_now)

    # --- rows ----------------------------------------------------------------------------

    def _apply(
        self, working: KeyedState, key: bytes, state: Any, scope: TimerScope, event_now: int
    ) -> None:
        """Writes ``state`` (None deletes it) and the timers ``scope`` changed."""
        if state is None:
            self._delete_state(working, key)
        else:
            touched = working.wall if self.ttl_wall else event_now
            working.states[key] = state
            working.touched[key] = touched
            due = NEVER if self.ttl is None else touched + self.ttl
            value = self.encode_state(key, state)
            # not pending: a state falls due silently, deleted by the store in bounded batches
            row = WindowRow(
                working.partition,
                key,
                STATE_SLOT,
                touched,
                touched,
                touched,
                False,
                due,
                value,
                wall=self.ttl_wall,
            )
            working.upserted[(key, STATE_SLOT)] = row
            working.removed.discard((key, STATE_SLOT))
        timers = working.timers.setdefault(key, {})
        for name in scope.cancelled:
            if timers.pop(name, None) is not None:
                self._remove(working, key, timer_slot(name))
        for timer in scope.scheduled.values():
            timers[timer.name] = timer
            slot = timer_slot(timer.name)
            payload = self.seal(_encode_timer(self.flow, timer), timer_context(key, slot))
            row = WindowRow(
                working.partition,
                key,
                slot,
                timer.due,
                event_now,
                event_now,
                True,
                timer.due,
                payload,
                wall=timer.clock == "wall",
            )
            self._put(working, row)

    @staticmethod
    def _put(working: KeyedState, row: WindowRow) -> None:
        working.upserted[(row.key, row.start)] = row
        working.removed.discard((row.key, row.start))
        heapq.heappush(working.heap, (row.due, row.wall, row.key, row.start))

    @staticmethod
    def _remove(working: KeyedState, key: bytes, start: int) -> None:
        working.upserted.pop((key, start), None)
        working.removed.add((key, start))

    @property
    def origins(self) -> list[Any]:
        """The topics records come from: the sources, or those a re-key step wraps."""
        if self.envelope_sources:
            return list(self.envelope_sources.values())
        return list(self.sources)


def _firing_order(entry: tuple[int, bool, bytes, int]) -> tuple[int, bytes, int]:
    """Rows fire in order of due time, then key, then start (the state before timers)."""
    return entry[0], entry[2], entry[3]


def _encode_timer(flow: str, timer: Timer) -> bytes:
    try:
        return json.dumps({"name": timer.name, "data": timer.data}).encode()
    except (TypeError, ValueError) as error:
        raise FlowFailedError(
            f"flow {flow!r}: the data of timer {timer.name!r} is not JSON ({error}); "
            f"schedule it with data that json.dumps accepts"
        ) from error


def _timer_payload(data: bytes) -> tuple[str, Any]:
    payload = json.loads(data)
    return str(payload["name"]), payload.get("data")


def _timer_record(raw: RawRecord, timer: Timer) -> RawRecord:
    """A failed timer as a dead letter: the key, the timer as JSON, no offset (-1)."""
    value = json.dumps({"timer": timer.name, "due": timer.due, "data": timer.data}, default=str)
    return RawRecord(raw.topic, raw.partition, -1, raw.key, value.encode(), (), timer.due)
