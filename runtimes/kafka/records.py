"""Consumed confluent-kafka messages as the core's :class:`~flows.records.RawRecord`."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message

from flows.records import RawRecord


def to_raw(message: Message) -> RawRecord:
    """A consumed message as a :class:`RawRecord`."""
    headers: Any = message.headers()
    return RawRecord(  # positional: this runs for every record
        message.topic(),  # type: ignore[arg-type]
        message.partition(),  # type: ignore[arg-type]
        message.offset(),  # type: ignore[arg-type]
        message.key(),
        message.value(),
        tuple((k, v if v is not None else b"") for k, v in headers) if headers else (),
        message.timestamp()[1],
    )
