"""``flows dlq``: list an app's dead letters, and replay a flow's back to its source topics.

``flows dlq <app> [--json]`` reads every dead-letter topic of the app from its beginning,
``read_committed``, up to the high watermarks seen at the start (a worker writing more
meanwhile does not keep it reading), and prints the dead letters grouped by flow and error
type, with counts and a few samples. It commits nothing.

``flows dlq replay <app> <flow> [--error-type T] [--since TIME]`` sends the flow's dead
letters back to their source topics (``flows.source.topic``), exactly once:

* Each error type of the flow has a replay group of its own,
  ``<app>.dlq-replay.<flow>.<error type>``, which is also the transactional id of its
  producer. A dead letter belongs to exactly one such group, so no combination of replays,
  filtered or not, sends it twice. Without ``--error-type`` the replay runs the group of
  every error type the flow's dead letters show, one after the other.
* A group's replay starts at its committed offsets (the beginning on the first replay) and
  stops at the high watermarks seen at its start. In batches, one Kafka transaction
  produces the replayed records and commits the offsets of what was read to the group; a
  replay run again, or after a crash (its open transaction is aborted when the next one
  starts), resumes there and never sends a record twice.
* What the group reads and does not replay is consumed all the same (offsets are per
  partition, not per record): dead letters of other flows and of other error types, which
  have their own groups and lose nothing; and, with ``--since``, dead letters older than
  TIME, which that group gives up: ``--since`` means "replay only from TIME on, and let
  what is older go". TIME is compared with the dead letter's timestamp, which is the failed
  record's own.

A replayed record keeps its key, value, timestamp and own headers; the ``flows.*`` failure
headers are removed and ``flows.attempts`` is one more than the dead letter's (a replayed
record that fails again is dead-lettered with that count). It is produced with flows'
partitioner (the Java clients' murmur2 on the key), as every flows output is.

``flows dlq replay`` alone lists an app registered as ``replay``.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TextIO

from confluent_kafka import OFFSET_BEGINNING

from flows.app import App, load_app
from flows.dead_letter_replay import (
    DeadLetter,
    ReplayFilter,
    parse_since,
    replay_group,
    summarise,
)
from flows.errors import ConfigError
from flows.ports import TopicPartition
from runtimes.commands.dlq_kafka import (
    assign_to_ends,
    committed_offsets,
    open_consumer,
    read_to_ends,
    replay,
)
from runtimes.config import Settings
from runtimes.kafka import Admin

if TYPE_CHECKING:
    from runtimes.commands import Connection, SettingsOf


def register(commands: Any, connection: Connection, settings: SettingsOf) -> None:
    sub = commands.add_parser(
        "dlq",
        help="list an app's dead letters; `dlq replay` sends a flow's back, exactly once",
        usage="flows dlq <app> [--json] | flows dlq replay <app> <flow> "
        "[--error-type T] [--since TIME] [--json]",
        description="List an app's dead letters by flow and error type, or replay a flow's "
        "back to their source topics exactly once (one replay group per flow and error type, "
        "<app>.dlq-replay.<flow>.<error type>, whose committed offsets say what was replayed).",
    )
    sub.add_argument("target", nargs="+", metavar="<app> | replay <app> <flow>")
    sub.add_argument(
        "--error-type",
        metavar="T",
        help="replay: only dead letters of this error type (as `flows dlq` lists it)",
    )
    sub.add_argument(
        "--since",
        metavar="TIME",
        help="replay: only dead letters whose timestamp is at or after TIME (ISO-8601, UTC "
        "unless an offset is given, or milliseconds since the epoch); older ones are given "
        "up by the replay group",
    )
    sub.add_argument(
        "--samples", type=int, default=3, help="dead letters shown per group (default 3)"
    )
    sub.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="fail when the dead-letter topics are not read to their end within this many "
        "seconds (default 60)",
    )
    sub.add_argument("--json", action="store_true", help="print JSON for scripts")
    connection(sub, database=False)

    def handler(args: argparse.Namespace, out: TextIO) -> int:
        return run(args, settings(args), out)

    sub.set_defaults(handler=handler)


def run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    target: list[str] = args.target
    if target[0] == "replay" and len(target) == 3:
        return replay_command(args, settings, out, load_app(target[1]), target[2])
    if len(target) == 1:
        if args.error_type is not None or args.since is not None:
            raise ConfigError("--error-type and --since select what `flows dlq replay` sends")
        return list_command(args, settings, out, target[0])
    raise ConfigError(
        f"flows dlq {' '.join(target)}: expected `flows dlq <app>` or "
        "`flows dlq replay <app> <flow>`"
    )


# --- listing -------------------------------------------------------------------------------


def dead_letter_topics(app: App, flow: str | None = None) -> list[str]:
    """The dead-letter topics of ``app``'s flows (of ``flow`` alone when given)."""
    steps = app.select([flow] if flow else ())
    return sorted({topic.name for step in steps for topic in step.dead_letters.values()})


def list_command(args: argparse.Namespace, settings: Settings, out: TextIO, reference: str) -> int:
    app = load_app(reference)
    admin = Admin(settings.admin_config(), timeout=settings.startup_timeout)
    admin.check()
    topics = dead_letter_topics(app)
    existing = admin.existing()
    present = [t for t in topics if t in existing]
    consumer = open_consumer(settings, f"flows-dlq-{uuid.uuid4().hex[:8]}")
    try:
        ends = assign_to_ends(
            consumer, {(t, p): OFFSET_BEGINNING for t in present for p in range(existing[t])}
        )
        letters = [
            letter
            for record in read_to_ends(consumer, ends, args.timeout)
            if (letter := DeadLetter.parse(record)) is not None
        ]
    finally:
        consumer.close()
    partitions = [(t, p) for t in present for p in range(existing[t])]

    def committed(flow: str, error_type: str) -> dict[TopicPartition, int]:
        return committed_offsets(settings, replay_group(app.name, flow, error_type), partitions)

    groups = summarise(letters, samples=args.samples, committed=committed)
    if args.json:
        report = {
            "app": app.name,
            "topics": topics,
            "missing_topics": [t for t in topics if t not in existing],
            "total": sum(g.count for g in groups),
            "groups": [asdict(g) for g in groups],
        }
        print(json.dumps(report, indent=2, ensure_ascii=False), file=out)
        return 0
    total = sum(g.count for g in groups)
    print(f"{app.name}: {total} dead letters in {', '.join(present) or 'no topic yet'}", file=out)
    for group in groups:
        left = group.count - group.replayed
        print(
            f"\n{group.flow}  {group.error_type}  {group.count} "
            f"({group.replayed} replayed, {left} to replay)",
            file=out,
        )
        for s in group.samples:
            key = "null" if s.key is None else s.key
            print(
                f"  {s.source_topic}[{s.source_partition}]@{s.source_offset} key={key} "
                f"attempts={s.attempts}: {s.message}",
                file=out,
            )
    if any(g.replayed < g.count for g in groups):
        print(
            f"\nreplay with: flows dlq replay {reference} <flow> [--error-type T]",
            file=out,
        )
    return 0


def replay_command(
    args: argparse.Namespace, settings: Settings, out: TextIO, app: App, flow: str
) -> int:
    since = parse_since(args.since) if args.since is not None else None
    topics = dead_letter_topics(app, flow)  # also checks that the flow exists
    admin = Admin(settings.admin_config(), timeout=settings.startup_timeout)
    admin.check()
    existing = admin.existing()
    partitions = [(t, p) for t in topics if t in existing for p in range(existing[t])]
    if args.error_type is not None:
        types = [args.error_type]
    else:
        types = _error_types(settings, partitions, flow, args.timeout)
    results = [
        replay(
            settings,
            replay_group(app.name, flow, error_type),
            partitions,
            ReplayFilter(flow, error_type, since),
            args.timeout,
        )
        for error_type in types
    ]
    if args.json:
        report = {"app": app.name, "flow": flow, "replays": [asdict(r) for r in results]}
        print(json.dumps(report, indent=2, ensure_ascii=False), file=out)
        return 0
    sent: dict[str, int] = {}
    for result in results:
        for topic, count in result.sent.items():
            sent[topic] = sent.get(topic, 0) + count
        print(
            f"{result.error_type}: sent {sum(result.sent.values())}, read and left "
            f"{result.skipped} (group {result.group})",
            file=out,
        )
    if not sent:
        print(f"nothing to replay for flow {flow} of {app.name}", file=out)
    for topic, count in sorted(sent.items()):
        print(f"replayed {count} dead letters of flow {flow} to {topic}", file=out)
    return 0


def _error_types(
    settings: Settings, partitions: Sequence[TopicPartition], flow: str, timeout: float
) -> list[str]:
    """The error types of ``flow``'s dead letters in ``partitions`` (a read from the start)."""
    consumer = open_consumer(settings, f"flows-dlq-{uuid.uuid4().hex[:8]}")
    try:
        ends = assign_to_ends(consumer, dict.fromkeys(partitions, OFFSET_BEGINNING))
        types = {
            letter.error_type
            for record in read_to_ends(consumer, ends, timeout)
            if (letter := DeadLetter.parse(record)) is not None and letter.flow == flow
        }
    finally:
        consumer.close()
    return sorted(types)


__all__ = ["dead_letter_topics", "register"]
