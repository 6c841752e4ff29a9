"""Typed topics: a name plus the formats of its keys and values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.formats import BYTES, Format


@dataclass(frozen=True, slots=True)
class Topic:
    """A Kafka topic as a flow sees it.

    ``partitions`` and ``config`` are used only when flows creates the topic (it creates
    every topic an app declares that is missing); an existing topic is never altered.
    """

    name: str
    key_format: Format[Any] = field(default=BYTES, compare=False)
    value_format: Format[Any] = field(default=BYTES, compare=False)
    partitions: int = 4
    config: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 249:
            raise ValueError(f"a topic name needs 1 to 249 characters, got {self.name!r}")
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(self.name) <= allowed:
            raise ValueError(
                f"topic name {self.name!r} may use only ASCII letters, digits, '.', '_', '-'"
            )
        if self.partitions < 1:
            raise ValueError(f"topic {self.name!r} needs at least one partition")
