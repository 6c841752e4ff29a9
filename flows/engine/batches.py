"""How a batch of records divides by partition: runs, offset ranges, what is fresh."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import groupby
from operator import attrgetter
from typing import Protocol

from flows.ports import TopicPartition
from flows.records import RawRecord

_partition_of = attrgetter("topic", "partition")


class Watermarked(Protocol):
    @property
    def watermark(self) -> int: ...


def runs(records: Sequence[RawRecord]) -> Iterator[tuple[TopicPartition, list[RawRecord]]]:
    """Each run of consecutive records of one partition, in order; a partition may come in
    several runs. A consumer hands out a fetch's records together, so runs are long and the
    per-record work stays in C."""
    for tp, run in groupby(records, _partition_of):
        yield tp, list(run)


def offset_ranges(records: Sequence[RawRecord]) -> dict[TopicPartition, tuple[int, int]]:
    """First offset and next offset of each partition in the batch."""
    ranges: dict[TopicPartition, tuple[int, int]] = {}
    for tp, run in runs(records):
        first, next_offset = run[0].offset, run[-1].offset + 1
        ranges[tp] = (ranges[tp][0] if tp in ranges else first, next_offset)
    return ranges


def fresh(
    records: Sequence[RawRecord], owned: Mapping[TopicPartition, Watermarked]
) -> dict[TopicPartition, list[RawRecord]]:
    """The records of owned partitions at or past their watermark, per partition in offset
    order (anything below a watermark is applied already; a partition not owned is
    another worker's now)."""
    by_partition: dict[TopicPartition, list[RawRecord]] = {}
    for tp, run in runs(records):
        part = owned.get(tp)
        if part is None:
            continue
        kept = (
            run
            if run[0].offset >= part.watermark
            else [raw for raw in run if raw.offset >= part.watermark]
        )
        if kept:
            by_partition.setdefault(tp, []).extend(kept)
    return by_partition
