"""What the engine's timed batch needs of a step whose per-key rows fall due in time.

Windowed flows, deduplication and stateful flows with timers or a TTL keep their rows per
``(partition, key, start)`` in one kind of table (:class:`~flows.ports.WindowRow`), each row
with the time at which it falls due: by the partition's stream time, or by the wall clock
(``wall``). :class:`~flows.engine.timed.TimedBatch` runs any of them the same way: it loads
the rows a batch needs into the step's working set, lets the step fold the records and close
what falls due, and commits the changes with the stream time, exactly-once (see its module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from flows.errors import UserFunctionError
from flows.ports import StateStore, WindowRow
from flows.records import RawRecord, Record
from flows.steps.base import BatchResult

__all__ = ["NEVER", "Timed", "TimedStep", "Working", "event_millis", "event_time", "unkeyed"]

#: the due time of a row that never falls due (a state without TTL)
NEVER = 2**62


@dataclass(slots=True)
class Timed:
    """A record ready to fold: its bytes, decoded, the record its outputs and dead letter
    derive from (``origin``: itself, or the source record a re-key envelope wraps), its
    event time in ms, and the key of the rows it touches (the record key, or the key a
    step derives, such as a deduplication key). Not frozen, like the records: one is made
    per record, and a frozen dataclass costs about 2.5 times as much to build."""

    raw: RawRecord
    record: Record[Any, Any]
    origin: RawRecord
    ts: int
    key: bytes


@dataclass
class Working:
    """The rows of one partition a batch or tick works on (a step subclasses it).

    ``stream_time`` moves forward as the step folds; ``wall`` is the wall clock (ms) for
    the whole batch, so that rows due by it close at one instant; ``late`` counts late
    records.
    """

    partition: int
    stream_time: int | None
    wall: int
    late: int = 0


W = TypeVar("W", bound=Working)


class TimedStep(Protocol[W]):
    """A step run by :class:`~flows.engine.timed.TimedBatch` (see the module docstring).

    Contract: the engine loads, per partition, the rows of the batch's keys and every row
    due by the batch's last stream time or by ``wall``; rows it does not load are neither
    touched by the batch nor due before it ends. The step must close due rows after every
    record, so that outputs do not depend on where batches begin and end.
    """

    @property
    def name(self) -> str: ...

    @property
    def group_id(self) -> str: ...

    @property
    def table(self) -> str:
        """Where the rows are (a window-shaped table)."""
        ...

    @property
    def whole_keys(self) -> bool:
        """Whether a key's rows are needed together (a timer's ``on_timer`` reads the
        key's state): then the engine loads every row of a key that has a row due."""
        ...

    @property
    def wall_clock(self) -> bool:
        """Whether rows may fall due by the wall clock (wall-clock timers and TTLs); the
        engine asks when the next one does only of steps that have them."""
        ...

    @property
    def close_after_idle(self) -> int | None:
        """ms of quiet after which a caught-up partition's stream time follows the wall
        clock (None: never)."""
        ...

    def prepare(self, store: StateStore) -> None: ...

    def timestamps(self, records: Sequence[RawRecord], result: BatchResult) -> list[Timed]:
        """The records decoded with their event time, in order; those that fail follow the
        error policy (into ``result``) and are left out."""
        ...

    def load(
        self, partition: int, stream_time: int | None, wall: int, stored: Sequence[WindowRow]
    ) -> W:
        """The working set of ``partition`` from the rows the store returned."""
        ...

    def apply(self, working: W, records: Sequence[Timed], result: BatchResult) -> None:
        """Folds ``records`` in order, closing what falls due after each one."""
        ...

    def advance(self, working: W, stream_time: int | None, result: BatchResult) -> None:
        """A tick: stream time moves to ``stream_time`` (never back; None: stays) and what
        falls due by it or by the working set's wall clock closes."""
        ...

    def changes(self, working: W) -> tuple[list[WindowRow], list[tuple[int, bytes, int]]]:
        """The rows to upsert and the ``(partition, key, start)`` of the rows to delete."""
        ...


def event_time(
    flow: str, record: Record[Any, Any], timestamp: Callable[[Record[Any, Any]], Any] | None
) -> int:
    """``record``'s event time in ms: ``timestamp(record)``, else its Kafka timestamp. A
    function that raises, or returns no usable time, is the user's error, named on the
    record."""
    try:
        return event_millis(record.timestamp if timestamp is None else timestamp(record))
    except Exception as error:
        raise UserFunctionError(
            flow, record.topic, record.partition, record.offset, error
        ) from error


def unkeyed(flow: str, raw: RawRecord) -> UserFunctionError:
    """The error of a record without a key in a flow whose rows are per key."""
    cause = ValueError(f"flow {flow!r} keeps rows per key; this record has no key")
    return UserFunctionError.caused_by(flow, raw.topic, raw.partition, raw.offset, cause)


def event_millis(value: Any) -> int:
    """An event time as integer milliseconds since the epoch: an int, or an aware
    ``datetime`` (a naive one is refused: its meaning depends on the machine's zone)."""
    if isinstance(value, bool):
        raise TypeError(f"a timestamp must be int milliseconds or an aware datetime, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"timestamp {value!r} is a naive datetime; give it a timezone "
                f"(e.g. datetime.fromisoformat(...).replace(tzinfo=timezone.utc))"
            )
        return int(value.timestamp() * 1000)
    raise TypeError(
        f"a timestamp must be int milliseconds since the epoch or an aware datetime, "
        f"got {type(value).__name__} {value!r}"
    )
