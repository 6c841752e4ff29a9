"""The window step: event-time windows of one source partition, record by record.

A :class:`WindowStep` is what the compiler makes of a :class:`~flows.wiring.Window`. The
engine's :class:`~flows.engine.timed.TimedBatch` loads a partition's rows into the step's
working set, hands it the partition's records (:meth:`WindowStep.apply`) or a new stream time
(:meth:`WindowStep.advance`, a tick), and commits what it changed. The rules,
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from flows.encoding import NOT_THE_RECORDS, decode, decode_part, encode_part
from flows.encryption import StateCipher, window_context
from flows.errors import (
    DecodeError,
    EncodeError,
    FlowFailedError,
    FlowsError,
    UserFunctionError,
)
from flows.formats import Format
from flows.ports import StateStore, WindowRow
from flows.records import RawMessage, RawRecord, Record
from flows.steps.base import BatchResult, Step
from flows.steps.sealing import Sealing
from flows.steps.timed import Timed, Working, event_millis, unkeyed
from flows.steps.window_codec import AccCodec, Kept, refolding
from flows.topics import Topic
from flows.windows import Hopping, Session, Tumbling, Windowing, WindowState

__all__ = ["WindowStep", "windowing_for"]

W = TypeVar("W", bound=Working)


@dataclass(eq=False)
class WindowStep(Sealing, Step, Generic[W]):
    """Aggregates per key and event-time window; the engine loads and stores the rows.

    A :class:`~flows.steps.timed.TimedStep` (the contract with the engine is there) over a
    working set ``W`` of its own: :class:`~flows.steps.fixed_window.FixedWindowStep` for
    tumbling and hopping windows, :class:`~flows.steps.window_machine.MachineWindowStep`
    (the per-key window machine) for sliding windows and sessions. This base holds what
    they share: decoding and timestamps, the shape of an output, and how a window's
    aggregate is stored (:meth:`encode_window`, :meth:`decode_window`: with ``codec``, then
    encrypted for the window's key and start when the flow encrypts).
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
    #: the user's ``initial()`` and ``fn(record, acc)``, as given
    initial: Callable[[], Any] | None = None
    fn: Callable[[Any, Any], Any] | None = None
    #: whether aggregates are stored encrypted, and the cipher (None until keys are bound)
    encrypt: bool = False
    cipher: StateCipher | None = None

    @property
    def wall_clock(self) -> bool:
        return False

    def value_context(self, key: bytes, start: int) -> bytes:
        return window_context(key, start)

    def encode_window(self, key: bytes, start: int, value: Any) -> bytes:
        """The stored bytes of the aggregate ``value`` of window ``start`` of ``key``; one
        that its state format cannot store stops the flow (:meth:`unencodable`)."""
        assert self.codec is not None
        try:
            encoded = self.codec.encode(value)
        except NOT_THE_RECORDS:
            raise
        except Exception as error:
            raise self.unencodable(key, start, error) from error
        if self.encrypt:
            return self.seal(encoded, window_context(key, start))
        return encoded

    def decode_window(self, row: WindowRow) -> Any:
        """The aggregate a stored row holds (:class:`Kept` for sessions that keep their
        records); :class:`~flows.errors.StateDecryptionError` for one that does not
        decrypt."""
        assert self.codec is not None
        data = row.value
        if self.encrypt:
            data = self.unseal(row.key, data, window_context(row.key, row.start))
        return self.codec.decode(data)

    @property
    def whole_keys(self) -> bool:
        return False

    def prepare(self, store: StateStore) -> None:
        self.require_keys()
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
        flow, timestamp, append = self.flow, self.timestamp, prepared.append
        for raw in records:  # the per-record path: names bound once, the common case inline
            key = raw.key
            try:
                if key is None:
                    raise unkeyed(flow, raw)
                record = decode(source, raw)
                ts = record.timestamp if timestamp is None else timestamp(record)
                if type(ts) is not int:
                    ts = event_millis(ts)  # a datetime, or the error the user must fix
            except (DecodeError, UserFunctionError) as error:
                self._fail(raw, error, result)
                continue
            except NOT_THE_RECORDS:  # a registry down or refusing: not this record's fault
                raise
            except Exception as error:  # timestamp(record) raised, or gave no usable time
                failed = UserFunctionError.caused_by(
                    flow, raw.topic, raw.partition, raw.offset, error
                )
                self._fail(raw, failed, result)
                continue
            append(Timed(raw, record, raw, ts, key))
        return prepared

    def load(
        self, partition: int, stream_time: int | None, wall: int, stored: Sequence[WindowRow]
    ) -> W:
        raise NotImplementedError

    def apply(self, working: W, records: Sequence[Timed], result: BatchResult) -> None:
        raise NotImplementedError

    def advance(self, working: W, stream_time: int | None, result: BatchResult) -> None:
        raise NotImplementedError

    def changes(self, working: W) -> tuple[list[WindowRow], list[tuple[int, bytes, int]]]:
        raise NotImplementedError

    def unencodable(self, key: bytes, start: int, error: BaseException) -> FlowFailedError:
        """The error of an aggregate that its state format cannot store."""
        return FlowFailedError(
            f"flow {self.flow!r}: the aggregate of key {key!r}, window {start}, does not fit "
            f"the state format ({error}); return values the format encodes from fn, or set "
            f"state_format"
        )

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
