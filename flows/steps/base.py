"""What every step shares: the result of a batch and the error policy for a failed record.

A *step* is the unit a runtime runs with one consumer group: it reads ``sources``, may
write ``sinks`` (dead-letter topics included) and turns one batch of raw records into a
:class:`BatchResult`. Failures of decoding or of a user function never escape a batch: the
record is dead-lettered, skipped or (policy ``stop``) turned into
:class:`~flows.errors.FlowFailedError`. Every record, filtered or failed, is accounted for,
so its offset advances.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from flows.dead_letters import dead_letter
from flows.errors import FlowFailedError
from flows.history import StateChange
from flows.ports import StateStore
from flows.records import RawMessage, RawRecord
from flows.topics import Topic

log = logging.getLogger("flows")

StepKind = Literal["stateless", "stateful", "materialise"]


@dataclass(slots=True)
class BatchResult:
    """What a batch produced. ``outputs`` keep input order (per partition order holds)."""

    outputs: list[RawMessage] = field(default_factory=list)
    filtered: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    #: stateful steps: the states the batch changed, encoded; ``None`` deletes the row.
    states: dict[bytes, bytes | None] = field(default_factory=dict)
    #: stateful steps: per changed key, the offset of the record that last changed it
    versions: dict[bytes, int] = field(default_factory=dict)
    #: stateful steps with history: every record's change, in the order applied
    changes: list[StateChange] = field(default_factory=list)
    #: materialise steps: rows by primary key, the last of each key only.
    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)


@dataclass(eq=False)
class Step:
    """A compiled flow unit, run by one consumer group named :attr:`group_id`."""

    app: str
    name: str
    flow: str
    kind: StepKind
    sources: tuple[Topic, ...]
    sinks: tuple[Topic, ...]
    exactly_once: bool
    on_error: str
    dead_letters: dict[str, Topic]
    description: str = ""
    retry_attempts: int | None = None
    retry_seconds: float | None = None

    @property
    def group_id(self) -> str:
        """The consumer group (and transactional id prefix) of this step."""
        return f"{self.app}.{self.name}"

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(topic.name for topic in self.sources)

    @property
    def keeps_state(self) -> bool:
        """Whether this step needs the state store (states or materialised rows)."""
        return self.kind != "stateless"

    def prepare(self, store: StateStore) -> None:
        """Creates what this step keeps in ``store`` (its table), when missing."""

    def _fail(self, raw: RawRecord, error: BaseException, result: BatchResult) -> None:
        """Applies the error policy to a record that failed; never loses its offset."""
        if self.on_error == "stop":
            raise FlowFailedError(
                f"flow {self.flow!r} stopped (on_error='stop') on "
                f"{raw.topic}[{raw.partition}]@{raw.offset}: {error}"
            ) from error
        if self.on_error == "skip":
            result.skipped += 1
            log.warning(
                "flow %s skipped %s[%s]@%s: %s",
                self.flow,
                raw.topic,
                raw.partition,
                raw.offset,
                error,
            )
            return
        result.dead_lettered += 1
        result.outputs.append(dead_letter(self, raw, error))


__all__ = ["BatchResult", "Step", "StepKind"]
