"""Formats turn bytes into values and back; a topic has one for keys and one for values.

A format is any object with ``name``, ``encode`` and ``decode`` (:class:`Format`), so users
can bring their own (msgpack, ...) without subclassing. A ``None`` key or value (a Kafka
null, a tombstone) is never given to a format: it stays ``None`` on both sides. Avro,
Protobuf and JSON Schema in Confluent's wire format, with a Schema Registry, are in
:mod:`flows.schema_registry`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, overload, runtime_checkable

from flows.schema_registry import Registry, RegistryFormat, protobuf_registry

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Format(Protocol[T]):
    """Encodes values of type ``T`` to bytes and back; raises on bytes it cannot read."""

    @property
    def name(self) -> str:
        """A short name used in error messages and ``flows describe``."""
        ...

    def encode(self, value: T) -> bytes:
        """Bytes for ``value``; raises ``TypeError``/``ValueError`` when it does not fit."""
        ...

    def decode(self, data: bytes) -> T:
        """The value in ``data``; raises ``ValueError`` (or a subclass) on malformed bytes."""
        ...


class BytesFormat:
    """Bytes as they are: the default, and the fastest."""

    name = "bytes"

    def encode(self, value: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"the bytes format needs bytes, got {type(value).__name__}")
        return bytes(value)

    def decode(self, data: bytes) -> bytes:
        return data


class StrFormat:
    """UTF-8 text; malformed UTF-8 is an error, never silently replaced."""

    name = "str"

    def encode(self, value: str) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"the str format needs str, got {type(value).__name__}")
        return value.encode("utf-8")

    #: ``bytes.decode`` itself (UTF-8, strict): called once or twice per record, it costs no
    #: Python frame this way
    decode: Callable[[bytes], str] = staticmethod(bytes.decode)


class JsonFormat:
    """JSON in UTF-8, compact; any value ``json`` can write."""

    name = "json"

    # One encoder and decoder for every record: ``json.dumps`` with options builds a new
    # encoder per call, and ``json.loads`` of bytes sniffs the encoding first; together that
    # is 2.5 times the cost (measured).
    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    _decoder = json.JSONDecoder()

    def encode(self, value: Any) -> bytes:
        if type(value) is int:  # counters are common states: a tenth of the encoder's cost
            return b"%d" % value
        return self._encoder.encode(value).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        if data.isdigit() and (data[0] != 48 or len(data) == 1):  # JSON has no leading zeros
            return int(data)
        if data[:3] == b"\xef\xbb\xbf":  # a byte order mark, which json.loads also skips
            data = data[3:]
        return self._decoder.decode(data.decode("utf-8"))


class ProtobufFormat(Generic[T]):
    """A protobuf message class; pure: only the message class's own methods are used."""

    def __init__(self, message_class: type[T]) -> None:
        self.message_class = message_class
        self.name = f"protobuf:{getattr(message_class, 'DESCRIPTOR').full_name}"  # noqa: B009

    def encode(self, value: T) -> bytes:
        if not isinstance(value, self.message_class):
            raise TypeError(f"{self.name} needs a {self.message_class.__name__}, got {value!r}")
        data: bytes = value.SerializeToString()  # type: ignore[attr-defined]
        return data

    def decode(self, data: bytes) -> T:
        message = self.message_class()
        try:
            message.ParseFromString(data)  # type: ignore[attr-defined]
        except Exception as error:  # protobuf's DecodeError is no ValueError: honour the contract
            raise ValueError(f"not a valid {self.name}: {error}") from error
        return message


def jsonb_problem(data: bytes) -> str | None:
    """Why PostgreSQL's ``jsonb`` would refuse ``data``, the encoding of a JSON value; None
    when it stores it.

    ``jsonb`` holds standard JSON without the character U+0000: it refuses the ``NaN``,
    ``Infinity`` and ``-Infinity`` that Python's ``json`` writes for such floats, and
    ``\\u0000`` in a string. The bytes are searched for those spellings first (a few
    nanoseconds for a small state); only when one appears, perhaps inside a string, are they
    parsed to be sure.
    """
    if b"NaN" not in data and b"Infinity" not in data and b"\\u0000" not in data:
        return None
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except _NotStandardError as error:
        return f"{error} is not standard JSON (use null or a string)"
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a string holds the character U+0000, which jsonb cannot store"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


class _NotStandardError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotStandardError(name)


BYTES = BytesFormat()
STR = StrFormat()
JSON = JsonFormat()


@overload
def protobuf(message_class: type[T]) -> ProtobufFormat[T]: ...


@overload
def protobuf(message_class: type[T], registry: Registry) -> RegistryFormat[T]: ...


def protobuf(
    message_class: type[T], registry: Registry | None = None
) -> ProtobufFormat[T] | RegistryFormat[T]:
    """The format of a generated protobuf message class: the message's bytes as they are,
    or, with a ``registry``, in Confluent's wire format (a magic byte and schema id first;
    see :mod:`flows.schema_registry`)."""
    if registry is None:
        return ProtobufFormat(message_class)
    return protobuf_registry(message_class, registry)
