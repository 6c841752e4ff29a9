"""Deduplication: the first record of each key within a TTL passes, later ones are dropped.

What :class:`~flows.wiring.Deduplicate` compiles to, run by
:class:`~flows.engine.timed.TimedBatch`. Per input partition, in offset order, a record whose
deduplication key was seen at event time ``first`` passes again only once its own timestamp
is at least ``first + ttl``, or once stream time (before it) has reached ``first + ttl``: the
key is forgotten then. A key's row (``start = 0``, due at ``first + ttl``, not pending) is
deleted by the store in bounded batches once stream time passes that
(:attr:`~flows.ports.StateCommit.expire`); so what is remembered is bounded by the keys seen
within about one TTL of stream time.

The key lives in the partition: duplicates are recognised among records of one partition,
which is where a producer's retries of one record (the same record key) land.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.encoding import UNCHANGED, SinkEncoder, decode
from flows.errors import DecodeError, EncodeError, UserFunctionError
from flows.ports import StateStore, WindowRow
from flows.records import RawRecord, Record
from flows.steps.base import BatchResult, Step
from flows.steps.timed import Timed, Working, event_time

__all__ = ["DeduplicateStep", "Seen", "dedupe_key"]


@dataclass
class Seen(Working):
    """When each key of one partition was first seen (ms), and what changed."""

    first: dict[bytes, int] = field(default_factory=dict)
    upserted: dict[bytes, WindowRow] = field(default_factory=dict)


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

    @property
    def wall_clock(self) -> bool:
        return False

    @property
    def whole_keys(self) -> bool:
        return False

    def prepare(self, store: StateStore) -> None:
        store.ensure_window_table(self.table)

    def timestamps(self, records: Sequence[RawRecord], result: BatchResult) -> list[Timed]:
        prepared: list[Timed] = []
        source = self.sources[0]
        for raw in records:
            try:
                record = decode(source, raw)
                ts = event_time(self.flow, record, self.timestamp)
                key = self._key(raw, record)
            except (DecodeError, UserFunctionError) as error:
                self._fail(raw, error, result)
                continue
            prepared.append(Timed(raw, record, raw, ts, key))
        return prepared

    def load(
        self, partition: int, stream_time: int | None, wall: int, stored: Sequence[WindowRow]
    ) -> Seen:
        seen = Seen(partition, stream_time, wall)
        for row in stored:
            seen.first[row.key] = row.first
        return seen

    def changes(self, seen: Seen) -> tuple[list[WindowRow], list[tuple[int, bytes, int]]]:
        return [seen.upserted[k] for k in sorted(seen.upserted)], []

    def apply(self, seen: Seen, records: Sequence[Timed], result: BatchResult) -> None:
        encoder = self.encoder
        assert encoder is not None
        ttl = self.ttl
        for item in records:
            key = item.key
            try:
                output = encoder.message(UNCHANGED, item.record, item.raw)
            except EncodeError as error:
                self._fail(item.raw, error, result)
                continue
            first = seen.first.get(key)
            stream_time = seen.stream_time
            duplicate = (
                first is not None
                and item.ts < first + ttl
                and (stream_time is None or stream_time < first + ttl)  # else forgotten
            )
            if duplicate:
                result.filtered += 1  # a duplicate within the TTL
            else:
                result.outputs.append(output)
                seen.first[key] = item.ts
                due = item.ts + ttl
                # not pending: a key is forgotten silently, its row deleted in bounded batches
                seen.upserted[key] = WindowRow(
                    seen.partition, key, 0, due, item.ts, item.ts, False, due, b""
                )
            if stream_time is None or item.ts > stream_time:
                seen.stream_time = item.ts

    def advance(self, seen: Seen, stream_time: int | None, result: BatchResult) -> None:
        if stream_time is not None and (seen.stream_time is None or stream_time > seen.stream_time):
            seen.stream_time = stream_time

    def _key(self, raw: RawRecord, record: Record[Any, Any]) -> bytes:
        if self.key is None:
            return raw.key or b""
        try:
            return dedupe_key(self.key(record))
        except Exception as error:
            raise UserFunctionError(
                self.flow, raw.topic, raw.partition, raw.offset, error
            ) from error
