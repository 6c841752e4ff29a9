"""Records read from topics and messages written to them.

A :class:`RawRecord` is what a broker hands over (bytes); a :class:`Record` is what a user
function sees (decoded with the topic's formats). They are read-only by contract but not
frozen: a frozen dataclass sets each field through ``object.__setattr__``, a cost paid for
every record of every batch. A :class:`Message` is what a function may
return when it wants to set the key or headers of an output; returning a bare value keeps
the input's key and headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

Headers = tuple[tuple[str, bytes], ...]


@dataclass(slots=True)
class RawRecord:
    """A record as the broker stores it: coordinates plus bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp: int = 0


@dataclass(slots=True)
class Record(Generic[K, V]):
    """A decoded record: what every user function receives."""

    topic: str
    partition: int
    offset: int
    key: K
    value: V
    headers: Headers = ()
    timestamp: int = 0

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (Kafka allows repeats), or ``None``."""
        found = None
        for header_name, header_value in self.headers:
            if header_name == name:
                found = header_value
        return found


class _Keep:
    """Marker: take this part from the input record."""

    _instance: _Keep | None = None

    def __new__(cls) -> _Keep:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()
"""Default of :class:`Message` fields: the output takes that part from its input record."""


@dataclass(slots=True)
class Message:
    """An output with an explicit key and/or headers.

    Fields left at :data:`KEEP` are taken from the input record, so
    ``Message(value, key=word)`` re-keys while headers pass through. Read-only by contract,
    not frozen, like the records: explode functions build one per output, and a frozen
    dataclass costs 2.5 times as much to build (measured).
    """

    value: Any
    key: Any = KEEP
    headers: Any = KEEP
    timestamp: Any = KEEP


@dataclass(slots=True)
class RawMessage:
    """An encoded output, ready for a producer: topic plus bytes."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp: int | None = None
