"""Deduplication: the first record of each key within a TTL passes, later ones are dropped.

What :class:`~flows.wiring.Deduplicate` compiles to, run by
:class:`~flows.engine.timed.TimedBatch`. Per input partition, in offset order, a record whose
deduplication key was seen at event time ``first`` passes again only once its own timestamp
is at least ``first + ttl``, or once stream time has reached ``first + ttl`` and the key was
forgotten. A key's row (``start = 0``, due at ``first + ttl``) is deleted when stream time
reaches that, in the transaction of the batch that gets there; so what is remembered is
bounded by the keys seen within one TTL of stream time.

The key lives in the partition: duplicates are recognised among records of one partition,
which is where a producer's retries of one record (the same record key) land.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.encoding import UNCHANGED, SinkEncoder, decode
from flows.errors import DecodeError, EncodeError, UserFunctionError
from flows.ports import StateStore, WindowRow
from flows.records import RawRecord, Record
from flows.steps.base import BatchResult, Step
from flows.steps.timed import Timed, Working, event_millis

__all__ = ["DeduplicateStep", "Seen", "dedupe_key"]


@dataclass
class Seen(Working):
    """When each key of one partition was first seen (ms), and what changed."""

    first: dict[bytes, int] = field(default_factory=dict)
    heap: list[tuple[int, bytes]] = field(default_factory=list)
    upserted: dict[bytes, WindowRow] = field(default_factory=dict)
    removed: set[bytes] = field(default_factory=set)


def dedupe_key(value: Any) -> bytes:
    """A deduplication key as bytes: bytes as they are, text as UTF-8, anything else as
    canonical JSON (sorted keys), so equal values give equal keys."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(eq=False)
class DeduplicateStep(Step):
    """Passes the first record of each key within ``ttl`` ms of event time."""

    key: Callable[[Record[Any, Any]], Any] | None = None
    timestamp: Callable[[Record[Any, Any]], Any] | None = None
    ttl: int = 0
    table: str = ""
    encoder: SinkEncoder | None = None

    @property
    def close_after_idle(self) -> int | None:
        return None  # forgetting a key never outputs anything: no need to hurry

    def prepare(self, store: StateStore) -> None:
        store.ensure_window_table(self.table)

    def timestamps(self, records: Sequence[RawRecord], result: BatchResult) -> list[Timed]:
        prepared: list[Timed] = []
        source = self.sources[0]
        for raw in records:
            try:
                record = decode(source, raw)
                try:
                    when = record.timestamp if self.timestamp is None else self.timestamp(record)
                    ts = event_millis(when)
                except Exception as error:
                    raise UserFunctionError(
                        self.flow, raw.topic, raw.partition, raw.offset, error
                    ) from error
            except (DecodeError, UserFunctionError) as error:
                self._fail(raw, error, result)
                continue
            prepared.append(Timed(raw, record, raw, ts))
        return prepared

    def load(
        self, partition: int, stream_time: int | None, wall: int, stored: Sequence[WindowRow]
    ) -> Seen:
        seen = Seen(partition, stream_time, wall)
        for row in stored:
            seen.first[row.key] = row.first
            heapq.heappush(seen.heap, (row.due, row.key))
        return seen

    def changes(self, seen: Seen) -> tuple[list[WindowRow], list[tuple[int, bytes, int]]]:
        upserted = [seen.upserted[k] for k in sorted(seen.upserted)]
        return upserted, [(seen.partition, key, 0) for key in sorted(seen.removed)]

    def fold(self, seen: Seen, records: Sequence[Timed], result: BatchResult) -> None:
        encoder = self.encoder
        assert encoder is not None
        for item in records:
            try:
                key = self._key(item)
                output = encoder.message(UNCHANGED, item.record, item.raw)
            except (UserFunctionError, EncodeError) as error:
                self._fail(item.raw, error, result)
                continue
            first = seen.first.get(key)
            if first is not None and item.ts < first + self.ttl:
                result.filtered += 1  # a duplicate within the TTL
            else:
                result.outputs.append(output)
                seen.first[key] = item.ts
                due = item.ts + self.ttl
                seen.upserted[key] = WindowRow(
                    seen.partition, key, 0, due, item.ts, item.ts, True, due, b""
                )
                seen.removed.discard(key)
                heapq.heappush(seen.heap, (due, key))
            if seen.stream_time is None or item.ts > seen.stream_time:
                seen.stream_time = item.ts
            self._forget(seen)

    def advance(self, seen: Seen, stream_time: int | None, result: BatchResult) -> None:
        if stream_time is not None and (seen.stream_time is None or stream_time > seen.stream_time):
            seen.stream_time = stream_time
        self._forget(seen)

    def _forget(self, seen: Seen) -> None:
        """Forgets the keys whose TTL stream time has reached."""
        now = seen.stream_time
        while seen.heap and now is not None and seen.heap[0][0] <= now:
            due, key = heapq.heappop(seen.heap)
            first = seen.first.get(key)
            if first is None or first + self.ttl != due:
                continue  # stale: seen again since
            del seen.first[key]
            seen.upserted.pop(key, None)
            seen.removed.add(key)

    def _key(self, item: Timed) -> bytes:
        if self.key is None:
            return item.raw.key or b""
        try:
            return dedupe_key(self.key(item.record))
        except Exception as error:
            raw = item.raw
            raise UserFunctionError(
                self.flow, raw.topic, raw.partition, raw.offset, error
            ) from error
