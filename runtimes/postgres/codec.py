"""Pending outputs as bytes: the ``OutputColumns`` protobuf envelope of ``flows_pending``.

A stateful batch stores every output it produces, so this runs once per batch on the hot
path; the encoding is column by column for that reason (see :func:`encode_outputs`).
:func:`decode_outputs` also reads the ``OutputBatch`` rows that earlier versions stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flows._proto import flows_envelope_pb2 as pb
from flows.records import RawMessage


def encode_outputs(outputs: Sequence[RawMessage]) -> bytes:
    """The ``OutputColumns`` of ``outputs``: ``None`` keys, values and timestamps survive.

    Column by column, because a stateful batch stores every output it produces: filling one
    ``Output`` message per output cost more than the rest of the commit (measured).
    """
    columns = pb.OutputColumns()
    topics = [m.topic for m in outputs]
    distinct = list(dict.fromkeys(topics))
    columns.topics.extend(distinct)
    if len(distinct) > 1:
        index = {topic: i for i, topic in enumerate(distinct)}
        columns.topic_index.extend([index[t] for t in topics])
    _bytes_column([m.key for m in outputs], columns.null_keys, columns.keys)
    _bytes_column([m.value for m in outputs], columns.null_values, columns.values)
    columns.timestamps.extend([-1 if m.timestamp is None else m.timestamp for m in outputs])
    if any(m.headers for m in outputs):
        columns.header_counts.extend([len(m.headers) for m in outputs])
        for m in outputs:
            for name, value in m.headers:
                columns.headers.add(key=name, value=value)
    return columns.SerializeToString()


def _bytes_column(items: list[bytes | None], nulls: Any, column: Any) -> None:
    if None in items:
        nulls.extend([i for i, item in enumerate(items) if item is None])
    column.extend([b"" if item is None else item for item in items])


def decode_outputs(data: bytes) -> tuple[RawMessage, ...]:
    """The inverse of :func:`encode_outputs`; reads an ``OutputBatch`` of earlier versions."""
    columns = pb.OutputColumns.FromString(data)
    if not columns.topics:
        return _decode_output_batch(data)
    topics = list(columns.topics)
    topic_of = [topics[i] for i in columns.topic_index] if columns.topic_index else None
    keys: list[bytes | None] = list(columns.keys)
    values: list[bytes | None] = list(columns.values)
    for i in columns.null_keys:
        keys[i] = None
    for i in columns.null_values:
        values[i] = None
    headers: list[tuple[tuple[str, bytes], ...]] = []
    if columns.header_counts:
        flat = [(h.key, h.value) for h in columns.headers]
        at = 0
        for count in columns.header_counts:
            headers.append(tuple(flat[at : at + count]))
            at += count
    return tuple(
        RawMessage(
            topic_of[i] if topic_of is not None else topics[0],
            keys[i],
            values[i],
            headers[i] if headers else (),
            None if timestamp == -1 else timestamp,
        )
        for i, timestamp in enumerate(columns.timestamps)
    )


def _decode_output_batch(data: bytes) -> tuple[RawMessage, ...]:
    """Outputs stored as an ``OutputBatch`` (one ``Output`` each) before ``OutputColumns``."""
    batch = pb.OutputBatch.FromString(data)
    return tuple(
        RawMessage(
            topic=out.topic,
            key=out.key if out.HasField("key") else None,
            value=out.value if out.HasField("value") else None,
            headers=tuple((h.key, h.value) for h in out.headers),
            timestamp=out.timestamp if out.HasField("timestamp") else None,
        )
        for out in batch.outputs
    )
