"""What compiling an app's flows shares: the app's topics (each resolved once, its Schema
Registry formats bound where they are used), dead-letter topics, the state cipher, and the
fields every step has. :mod:`flows.compiler` and :mod:`flows.compile_stateful` build the
steps on it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from flows.encryption import StateCipher, StateKeys
from flows.errors import WiringError
from flows.formats import Format
from flows.schema_registry import FormatBinder, Part, RegistryFormat
from flows.steps import IngestRoute
from flows.topics import Topic
from flows.wiring import FlowConfig


def sanitise(name: str) -> str:
    """``name`` as a part of a PostgreSQL table name: lower case, ``_`` for the rest."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name).lower()


class CompileContext:
    """Resolves topics and the parts every step shares, for the flows of one app."""

    def __init__(
        self,
        app: str,
        declared: Sequence[Topic],
        binder: FormatBinder | None = None,
        state_keys: StateKeys | None = None,
    ) -> None:
        self.app = app
        self.binder = binder
        self.state_keys = state_keys
        self._cipher: StateCipher | None = None
        #: whether a flow encrypts its state
        self.encrypted = False
        #: every topic by name, its registry formats bound (when there is a binder)
        self.topics: dict[str, Topic] = {}
        #: every topic by name as first declared, to compare later declarations with
        self.declared: dict[str, Topic] = {}
        self.internal: set[str] = set()
        self.routes: list[IngestRoute] = []
        self.registry_formats = False
        for topic in declared:
            self.register(topic, flow="<app>", fld="topics")

    def bind_format(self, fmt: Format[Any], where: str, part: Part) -> Format[Any]:
        """``fmt`` as used for the ``part`` of ``where`` (a topic, or a state table):
        bound when it is a registry format and there is a binder, else ``fmt`` itself."""
        if not isinstance(fmt, RegistryFormat):
            return fmt
        self.registry_formats = True
        return fmt if self.binder is None else self.binder.bind(fmt, where, part)

    def cipher(self, config: FlowConfig) -> StateCipher | None:
        """The cipher of a flow with ``encrypt=True`` (one for the app, None while no
        keys are given); None for a flow that does not encrypt."""
        encrypt = getattr(config, "encrypt", False)
        if not isinstance(encrypt, bool):
            raise WiringError(config.name, "encrypt", f"must be True or False, not {encrypt!r}")
        if not encrypt:
            return None
        self.encrypted = True
        if self._cipher is None and self.state_keys is not None:
            self._cipher = StateCipher(self.state_keys)
        return self._cipher

    def add(self, topic: Topic) -> Topic:
        """Registers a topic not seen before; returns it with its formats bound."""
        key = self.bind_format(topic.key_format, topic.name, "key")
        value = self.bind_format(topic.value_format, topic.name, "value")
        bound = topic
        if key is not topic.key_format or value is not topic.value_format:
            bound = dataclasses.replace(topic, key_format=key, value_format=value)
        self.declared[topic.name] = topic
        self.topics[topic.name] = bound
        return bound

    def register(self, topic: Topic, flow: str, fld: str) -> Topic:
        known = self.declared.get(topic.name)
        if known is None:
            return self.add(topic)
        same = (
            known.key_format is topic.key_format
            and known.value_format is topic.value_format
            and known.partitions == topic.partitions
        )
        if not same and known is not topic:
            raise WiringError(
                flow,
                fld,
                f"topic {topic.name!r} is declared twice with "
                "different formats or partition counts",
            )
        return self.topics[topic.name]

    def topic(self, ref: Any, flow: str, fld: str) -> Topic:
        if isinstance(ref, Topic):
            return self.register(ref, flow, fld)
        if isinstance(ref, str):
            if ref not in self.topics:
                raise WiringError(
                    flow,
                    fld,
                    f"unknown topic {ref!r}: declare it in the app's topics or pass a Topic",
                )
            return self.topics[ref]
        raise WiringError(flow, fld, f"expected a Topic or a topic name, got {ref!r}")

    def dead_letters(self, config: FlowConfig, sources: Sequence[Topic]) -> dict[str, Topic]:
        found: dict[str, Topic] = {}
        if config.on_error not in ("dead_letter", "skip", "stop"):
            raise WiringError(
                config.name,
                "on_error",
                f"must be 'dead_letter', 'skip' or 'stop', not {config.on_error!r}",
            )
        if config.on_error != "dead_letter":
            return found
        for source in sources:
            name = config.dead_letter_topic or f"{source.name}.dlq"
            dlq = self.topics.get(name) or self.add(Topic(name, partitions=source.partitions))
            self.internal.add(name)
            found[source.name] = dlq
        return found

    def base(
        self,
        config: FlowConfig,
        sources: tuple[Topic, ...],
        sinks: tuple[Topic, ...],
        name: str | None = None,
    ) -> dict[str, Any]:
        dead = self.dead_letters(config, sources)
        if config.retry_attempts is not None and config.retry_attempts < 0:
            raise WiringError(config.name, "retry_attempts", "must be 0 or more")
        if config.retry_seconds is not None and config.retry_seconds < 0:
            raise WiringError(config.name, "retry_seconds", "must be 0 or more")
        return {
            "app": self.app,
            "name": name or config.name,
            "flow": config.name,
            "sources": sources,
            "sinks": (*sinks, *dict.fromkeys(dead.values())),
            "on_error": config.on_error,
            "dead_letters": dead,
            "retry_attempts": config.retry_attempts,
            "retry_seconds": config.retry_seconds,
        }


__all__ = ["CompileContext", "sanitise"]
