"""Reading dead letters back: their failure headers parsed, grouped, filtered, replayed.

The pure half of ``flows dlq`` (``runtimes/commands/dlq.py`` reads and writes Kafka). A
dead letter is what :func:`flows.dead_letters.dead_letter` wrote: the failed record's key,
value, timestamp and headers, then the ``flows.*`` failure headers. Kafka allows a header
name to repeat; the last occurrence of each ``flows.*`` header is the one that counts.

Replaying a dead letter (:func:`replayed`) sends it back to its ``flows.source.topic`` with
its key, value, timestamp and own headers, minus every failure header, plus
``flows.attempts`` incremented: the flow then sees it as its next attempt, and a dead letter
it writes again carries that count (``flows.dead_letters`` reads it back).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flows.dead_letters import ATTEMPTS, attempts_of
from flows.errors import ConfigError
from flows.records import Headers, RawMessage, RawRecord

#: the headers :func:`flows.dead_letters.dead_letter` appends, removed on replay
FAILURE_HEADERS = (
    "flows.flow",
    "flows.error.type",
    "flows.error.message",
    "flows.source.topic",
    "flows.source.partition",
    "flows.source.offset",
    "flows.attempts",
)

#: the characters a consumer group name keeps from an error type (Kafka accepts more, but a
#: group name is also typed on command lines)
_GROUP_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record read back: where it sits and what failed."""

    record: RawRecord
    flow: str
    error_type: str
    error_message: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    attempts: int

    @classmethod
    def parse(cls, record: RawRecord) -> DeadLetter | None:
        """The dead letter ``record`` holds, or ``None`` when it lacks ``flows.flow`` or
        ``flows.source.topic`` (not written by flows: it cannot be grouped or replayed)."""
        last: dict[str, bytes] = {}
        for name, value in record.headers:
            if name in FAILURE_HEADERS:
                last[name] = value
        flow, source = last.get("flows.flow"), last.get("flows.source.topic")
        if not flow or not source:
            return None
        return cls(
            record=record,
            flow=_text(flow),
            error_type=_text(last.get("flows.error.type", b"")) or "unknown",
            error_message=_text(last.get("flows.error.message", b"")),
            source_topic=_text(source),
            source_partition=_int(last.get("flows.source.partition")),
            source_offset=_int(last.get("flows.source.offset")),
            attempts=attempts_of(record.headers),
        )


def replayed(letter: DeadLetter) -> RawMessage:
    """The record that sends ``letter`` back to its source topic: its key, value, timestamp
    and own headers; the failure headers removed; ``flows.attempts`` one more than the dead
    letter's."""
    headers: Headers = (
        *((n, v) for n, v in letter.record.headers if n not in FAILURE_HEADERS),
        (ATTEMPTS, str(letter.attempts + 1).encode()),
    )
    return RawMessage(
        topic=letter.source_topic,
        key=letter.record.key,
        value=letter.record.value,
        headers=headers,
        timestamp=letter.record.timestamp or None,
    )


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which dead letters a replay sends: those of ``flow``, of ``error_type`` when given,
    whose timestamp (the failed record's own, which the dead letter keeps) is at or after
    ``since_ms`` when given."""

    flow: str
    error_type: str | None = None
    since_ms: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            letter.flow == self.flow
            and (self.error_type is None or letter.error_type == self.error_type)
            and (self.since_ms is None or letter.record.timestamp >= self.since_ms)
        )


def replay_group(app: str, flow: str, error_type: str) -> str:
    """The consumer group (and transactional id) that replays one flow's dead letters of
    one error type: ``<app>.dlq-replay.<flow>.<error type>``.

    One group per (flow, error type) means a dead letter belongs to exactly one replay
    group, whatever filters a replay is given: a replay of one error type never consumes
    (and so never gives up) the dead letters of another, and an unfiltered replay, which
    runs the groups of every error type in turn, never sends again what a filtered replay
    sent.
    """
    return f"{app}.dlq-replay.{flow}.{_GROUP_SAFE.sub('_', error_type)}"


def parse_since(text: str) -> int:
    """``--since``: milliseconds since the epoch, or an ISO-8601 date or time (UTC unless it
    names an offset), as milliseconds since the epoch."""
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: expected milliseconds since the epoch or an ISO-8601 time "
            "such as 2026-12-06T16:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# --- the listing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One dead letter shown in a listing."""

    dlq_topic: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    key: str | None
    message: str
    attempts: int
    timestamp: int


@dataclass(slots=True)
class Group:
    """The dead letters of one flow with one error type."""

    flow: str
    error_type: str
    count: int = 0
    #: how many of them their replay group has read past (replayed, or given up by
    #: ``--since``)
    replayed: int = 0
    #: the first dead letters still to replay (the first of all when none is left)
    samples: list[Sample] = field(default_factory=list)
    #: how many of them each DLQ topic holds
    topics: dict[str, int] = field(default_factory=dict)


#: a replay group's committed offsets: the next offset to read, by (topic, partition)
Committed = Mapping[tuple[str, int], int]


def summarise(
    letters: Iterable[DeadLetter],
    samples: int = 3,
    message_chars: int = 120,
    committed: Callable[[str, str], Committed] | None = None,
) -> list[Group]:
    """``letters`` grouped by flow and error type, in that order, each with its count,
    how many its replay group has read past (``committed(flow, error_type)``: that group's
    committed offsets; none when not given), and its first ``samples`` dead letters still
    to replay (messages cut to ``message_chars``)."""
    groups: dict[tuple[str, str], Group] = {}
    offsets: dict[tuple[str, str], Committed] = {}
    done: dict[tuple[str, str], list[Sample]] = {}
    for letter in letters:
        kind = (letter.flow, letter.error_type)
        group = groups.setdefault(kind, Group(*kind))
        if kind not in offsets:
            offsets[kind] = committed(*kind) if committed else {}
        group.count += 1
        record = letter.record
        topic = record.topic
        group.topics[topic] = group.topics.get(topic, 0) + 1
        past = record.offset < offsets[kind].get((topic, record.partition), 0)
        group.replayed += past
        chosen = done.setdefault(kind, []) if past else group.samples
        if len(chosen) < samples:
            chosen.append(
                Sample(
                    dlq_topic=topic,
                    source_topic=letter.source_topic,
                    source_partition=letter.source_partition,
                    source_offset=letter.source_offset,
                    key=None if letter.record.key is None else _shown(letter.record.key),
                    message=_short(letter.error_message, message_chars),
                    attempts=letter.attempts,
                    timestamp=letter.record.timestamp,
                )
            )
    for kind, group in groups.items():
        if not group.samples:
            group.samples = done.get(kind, [])
    return [groups[k] for k in sorted(groups)]


def _short(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _shown(data: bytes) -> str:
    """Bytes as text when they are UTF-8, else as ``0x`` and hex digits."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + data.hex()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _int(data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        return int(data)
    except ValueError:
        return None


__all__ = [
    "FAILURE_HEADERS",
    "Committed",
    "DeadLetter",
    "Group",
    "ReplayFilter",
    "Sample",
    "parse_since",
    "replay_group",
    "replayed",
    "summarise",
]
