"""Records in and out of a step: raw bytes decoded with a topic's formats, and what a user
function returned encoded into messages for the step's sinks.

These run for every record and every output, so the common cases are inlined and take no
Python frame of their own (the comments say where); a failure is then retried on the
general path, whose error names what failed: :class:`~flows.errors.DecodeError` with topic,
partition, offset and part, :class:`~flows.errors.EncodeError` with the value and the sink.

A format's errors that are not the record's fault (:data:`NOT_THE_RECORDS`: a Schema
Registry that does not answer, or refuses) are never turned into either: they propagate, so
the batch is retried or the flow stops, and no record is dead-lettered for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flows.errors import DecodeError, EncodeError, SchemaRegistryError, TransientError
from flows.formats import BYTES, STR, Format
from flows.records import KEEP, Message, RawMessage, RawRecord, Record
from flows.topics import Topic
from flows.wiring import Emits

#: errors of a format that are not the record's fault: a transient failure (the batch is
#: retried) and a registry's refusal (the flow stops); never a Decode- or EncodeError
NOT_THE_RECORDS = (TransientError, SchemaRegistryError)


def decode(topic: Topic, raw: RawRecord) -> Record[Any, Any]:
    """``raw`` decoded with ``topic``'s formats; :class:`DecodeError` names what failed."""
    key, value = raw.key, raw.value
    key_format, value_format = topic.key_format, topic.value_format
    try:  # inlined for the common case: this runs for every record
        if key is not None and key_format is not BYTES:
            key = key_format.decode(key)
        if value is not None and value_format is not BYTES:
            value = value_format.decode(value)
    except NOT_THE_RECORDS:
        raise
    except Exception:
        # again, part by part, for an error that names the part that failed
        key = decode_part(key_format, raw, raw.key, "key")
        value = decode_part(value_format, raw, raw.value, "value")
    return Record(raw.topic, raw.partition, raw.offset, key, value, raw.headers, raw.timestamp)


def decode_part(fmt: Format[Any], raw: RawRecord, data: bytes | None, part: str) -> Any:
    """``data``, the ``part`` of ``raw``, decoded with ``fmt``; ``None`` stays ``None``.

    A failure is a :class:`DecodeError` naming the record, the part and the format, and
    the schema id when the error carries one (``schema_id``, as registry formats' do);
    :data:`NOT_THE_RECORDS` propagate as they are.
    """
    if data is None or fmt is BYTES:
        return data
    try:
        return fmt.decode(data)
    except NOT_THE_RECORDS:
        raise
    except Exception as error:
        raise DecodeError(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            part=part,
            format_name=fmt.name,
            reason=f"{type(error).__name__}: {error}",
            schema_id=getattr(error, "schema_id", None),
        ) from error


def encode_part(fmt: Format[Any], value: Any, sink: Topic, part: str) -> bytes | None:
    """``value``, the ``part`` of a message for ``sink``, encoded with ``fmt``; ``None``
    stays ``None``. A failure is an :class:`EncodeError` naming the value and the sink;
    :data:`NOT_THE_RECORDS` propagate as they are."""
    if value is None:
        return None
    try:
        return fmt.encode(value)
    except NOT_THE_RECORDS:
        raise
    except Exception as error:
        raise EncodeError(
            f"the {part} {value!r:.200} does not fit topic {sink.name!r} ({fmt.name}): {error}"
        ) from error


#: Returned by a filter's compiled function: the input record goes out unchanged.
UNCHANGED: Any = object()


def _encoder(fmt: Format[Any]) -> Callable[[Any], bytes]:
    """The fastest callable that encodes like ``fmt`` for values that fit it.

    For text that is ``str.encode`` itself, without a Python frame per output. A value that
    does not fit fails in it too, and the caller then encodes again with ``fmt`` (see
    :func:`encode_part`), whose error tells the user what to fix.
    """
    if fmt is STR:
        return str.encode
    return fmt.encode


class SinkEncoder:
    """Turns what a user function returned into encoded messages for one sink topic."""

    __slots__ = ("encode_key", "encode_value", "keep_bytes", "keep_key_bytes", "topic")

    def __init__(self, source: Topic, topic: Topic) -> None:
        self.topic = topic
        self.encode_key = _encoder(topic.key_format)
        self.encode_value = _encoder(topic.value_format)
        # The input's bytes can be reused when both topics encode them alike.
        self.keep_key_bytes = source.key_format is topic.key_format
        self.keep_bytes = self.keep_key_bytes and source.value_format is topic.value_format

    def message(self, out: Any, record: Record[Any, Any], raw: RawRecord) -> RawMessage:
        topic = self.topic
        if out is UNCHANGED:
            if self.keep_bytes:
                return RawMessage(
                    topic.name, raw.key, raw.value, raw.headers, raw.timestamp or None
                )
            out = Message(record.value)
        if isinstance(out, Message):
            if out.key is KEEP:
                key = (
                    raw.key
                    if self.keep_key_bytes
                    else encode_part(topic.key_format, record.key, topic, "key")
                )
            elif out.key is None:
                key = None
            else:
                try:  # encode_part inlined: re-keying outputs is the common case of explode
                    key = self.encode_key(out.key)
                except NOT_THE_RECORDS:
                    raise
                except Exception:
                    key = encode_part(topic.key_format, out.key, topic, "key")  # names the failure
            headers = record.headers if out.headers is KEEP else tuple(out.headers)
            timestamp = record.timestamp if out.timestamp is KEEP else out.timestamp
            value = out.value
        else:
            key = (
                raw.key
                if self.keep_key_bytes
                else encode_part(topic.key_format, record.key, topic, "key")
            )
            headers, timestamp, value = record.headers, record.timestamp, out
        if value is not None:
            try:  # encode_part inlined: this runs for every output
                value = self.encode_value(value)
            except NOT_THE_RECORDS:
                raise
            except Exception:
                value = encode_part(topic.value_format, value, topic, "value")  # names the failure
        return RawMessage(topic.name, key, value, headers, timestamp or None)


def sink_encoders(
    origins: Iterable[Topic], sinks: Sequence[Topic]
) -> dict[str, tuple[SinkEncoder, ...]]:
    """The sinks of a step, per topic its records come from (key bytes may be reused)."""
    return {origin.name: tuple(SinkEncoder(origin, sink) for sink in sinks) for origin in origins}


def encode_outputs(
    emits: Emits,
    sinks: Sequence[SinkEncoder],
    returned: Any,
    record: Record[Any, Any],
    raw: RawRecord,
) -> list[RawMessage]:
    """The encoded messages of what a function returned for ``record``.

    Reading the outputs runs generator bodies: it is the function's work too, so callers
    count any failure in here as the function's, except an :class:`EncodeError`. One and
    many outputs skip the generic shaping: they are the common cases, and this runs for
    every record.
    """
    if returned is None:
        return []
    if emits == "one":
        return [sinks[0].message(returned, record, raw)]
    if emits == "many":
        first = sinks[0]
        return [first.message(out, record, raw) for out in returned if out is not None]
    return [sinks[i].message(out, record, raw) for i, out in indexed_outputs(emits, returned)]


def indexed_outputs(emits: Emits, returned: Any) -> Iterable[tuple[int, Any]]:
    """(sink index, output) pairs of what a function returned, ``None`` dropped."""
    if emits == "one":
        return () if returned is None else ((0, returned),)
    if emits == "two":
        if returned is None:
            return ()
        first, second = returned
        return tuple((i, out) for i, out in ((0, first), (1, second)) if out is not None)
    if returned is None:
        return ()
    return ((0, out) for out in returned if out is not None)


__all__ = [
    "NOT_THE_RECORDS",
    "UNCHANGED",
    "SinkEncoder",
    "decode",
    "decode_part",
    "encode_outputs",
    "encode_part",
    "indexed_outputs",
    "sink_encoders",
]
