"""How a window's aggregate is stored, and sessions merged without a user ``merge``.

A window row's ``value`` is the aggregate in the flow's state format. A
:class:`~flows.windows.Session` flow without ``merge`` keeps, beside the aggregate, the
records of each open session (:class:`Kept`): when a record joins two sessions, their records
are folded again with ``fn``, in offset order, from ``initial()``, which is what folding
every record of the merged session in arrival order gives, for any ``fn``. The price is
storage proportional to the records of open sessions; a ``merge`` avoids it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flows._proto import flows_envelope_pb2 as pb
from flows.formats import Format
from flows.records import RawRecord, Record

if TYPE_CHECKING:
    from flows.steps.timed import Timed

__all__ = ["AccCodec", "Kept", "refolding"]


@dataclass(frozen=True, slots=True)
class Kept:
    """A session's aggregate and the records folded into it, in offset order."""

    acc: Any
    records: tuple[RawRecord, ...]


class AccCodec:
    """Encodes aggregates with ``state_format``; with ``keeps_records``, :class:`Kept`
    values as a ``KeptRecords`` protobuf (records as ``Envelope`` messages)."""

    def __init__(self, state_format: Format[Any], keeps_records: bool) -> None:
        self.state_format = state_format
        self.keeps_records = keeps_records

    def encode(self, value: Any) -> bytes:
        if not self.keeps_records:
            return self.state_format.encode(value)
        assert isinstance(value, Kept)
        kept = pb.KeptRecords(acc=self.state_format.encode(value.acc))
        for raw in value.records:
            envelope = kept.records.add(
                source_topic=raw.topic,
                source_partition=raw.partition,
                source_offset=raw.offset,
                timestamp=raw.timestamp or 0,
            )
            if raw.key is not None:
                envelope.key = raw.key
            if raw.value is not None:
                envelope.value = raw.value
            for name, data in raw.headers:
                envelope.headers.add(key=name, value=data)
        return kept.SerializeToString()

    def decode(self, data: bytes) -> Any:
        if not self.keeps_records:
            return self.state_format.decode(data)
        kept = pb.KeptRecords()
        kept.ParseFromString(data)
        records = tuple(
            RawRecord(
                topic=e.source_topic,
                partition=e.source_partition,
                offset=e.source_offset,
                key=e.key if e.HasField("key") else None,
                value=e.value if e.HasField("value") else None,
                headers=tuple((h.key, h.value) for h in e.headers),
                timestamp=e.timestamp,
            )
            for e in kept.records
        )
        return Kept(self.state_format.decode(kept.acc), records)


def refolding(
    initial: Callable[[], Any],
    fn: Callable[[Any, Any], Any],
    decode_raw: Callable[[RawRecord], Record[Any, Any]],
) -> tuple[Callable[[], Kept], Callable[[Timed, Kept], Kept], Callable[[Kept, Kept], Kept]]:
    """``initial``, ``fn`` and ``merge`` over :class:`Kept` values: fold as ``fn`` does and
    remember the record; merge by folding both sessions' records again in offset order."""

    def start() -> Kept:
        return Kept(initial(), ())

    def fold(item: Timed, kept: Kept) -> Kept:
        return Kept(fn(item.record, kept.acc), (*kept.records, item.raw))

    def merge(first: Kept, second: Kept) -> Kept:
        records = tuple(sorted((*first.records, *second.records), key=_offset))
        acc = initial()
        for raw in records:
            acc = fn(decode_raw(raw), acc)
        return Kept(acc, records)

    return start, fold, merge


def _offset(raw: RawRecord) -> int:
    return raw.offset
