"""Windowed runs on real Kafka checked against the independent simulation.

Shared by tests/integration/test_windows_kafka.py and tests/faults/test_windows_crash.py,
which run tests/apps/windowed_app.py: seeded timestamped events (out of order and late ones
included) produced to explicit partitions, the app's topics, and the comparison of what
Kafka holds (``read_committed``) with tests/window_simulation.py.

The events of a key all go to the partition Kafka's default partitioner (murmur2) gives the
key, and every topic of the app has the same number of partitions, so a window result
(keyed by the window key) and a dead-letter record (keyed by the record key) land in the
partition of their input records. Each sink and dead-letter partition is therefore compared
in full, in offset order, with the simulation of that input partition.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin does not re-export it for mypy

from flows.partitioning import partition_for
from tests.apps import windowed_spec as windowed
from tests.helpers import Consumed, consume_all, stored_watermarks
from tests.window_simulation import (
    HoppingWindows,
    Incoming,
    Outcome,
    SessionWindows,
    Spec,
    TumblingWindows,
    simulate,
)

#: the app as ``flows run`` loads it
APP = "tests.apps.windowed_app:app"

#: the app's flows as the simulation sees them (the same numbers, the same functions)
SPECS: dict[str, Spec] = {
    "tumbling": Spec(
        TumblingWindows(windowed.TUMBLING_SIZE_MS),
        lambda: 0,
        lambda record, acc: acc + 1,
        windowed.TUMBLING_GRACE_MS,
    ),
    "hopping": Spec(
        HoppingWindows(windowed.HOPPING_SIZE_MS, windowed.HOPPING_HOP_MS),
        lambda: 0,
        lambda record, acc: acc + record.value["n"],
        windowed.HOPPING_GRACE_MS,
    ),
    "session": Spec(
        SessionWindows(windowed.SESSION_GAP_MS),
        lambda: 0,
        lambda record, acc: acc + 1,
        windowed.SESSION_GRACE_MS,
    ),
}
assert set(SPECS) == set(windowed.FLOWS)

Rows = dict[int, list[tuple[bytes, bytes]]]
Expected = dict[str, dict[int, Outcome]]


def app_env(name: str, partitions: int) -> dict[str, str]:
    """The variables that give the app its names (tests/apps/windowed_spec.py)."""
    return {windowed.APP_VARIABLE: name, windowed.PARTITIONS_VARIABLE: str(partitions)}


def recent_base(hours_ago: int = 3) -> int:
    """A whole hour ``hours_ago`` before now, in epoch ms: the events' time origin.

    Not a fixed date: window results may carry their window's time as the Kafka timestamp,
    and a topic drops (and rolls segments for) records older than its retention. Whole
    hours keep every window boundary where a fixed origin would put it."""
    hour = 3_600_000
    return (time.time_ns() // 1_000_000 // hour - hours_ago) * hour


def timestamped_events(
    count: int, *, seed: int, partitions: int, keys: int, base: int
) -> tuple[Rows, dict[str, int]]:
    """``count`` JSON events ``{"ts", "n", "i"}`` per partition, in production order, seeded
    (relative to ``base``), and how many of each sort were made.

    Each partition has its own clock. Most events are near it, some behind within the
    windows' grace, some far behind (late for every window of some flows, or all), and the
    clock sometimes pauses for seconds, which closes windows and splits sessions. A few keys
    are hot. Each key goes to its murmur2 partition."""
    rng = random.Random(seed)
    names = [f"user-{i:04d}".encode() for i in range(keys)]
    weights = [1 / (i + 1) ** 0.7 for i in range(keys)]
    partition_of = {key: partition_for(key, partitions) for key in names}
    clocks = [base] * partitions
    rows: Rows = {p: [] for p in range(partitions)}
    sorts: Counter[str] = Counter()
    for i in range(count):
        key = rng.choices(names, weights)[0]
        p = partition_of[key]
        clocks[p] += rng.choice((0, 0, 1, 3, 7, 12, 20, 35)) if rng.random() > 0.004 else 0
        if rng.random() < 0.004:
            clocks[p] += rng.randint(500, 4_000)  # a pause
            sorts["pause"] += 1
        draw = rng.random()
        if draw < 0.80:
            behind, sort = rng.randint(0, 40), "near"
        elif draw < 0.93:
            behind, sort = rng.randint(40, 600), "behind"
        elif draw < 0.985:
            behind, sort = rng.randint(600, 3_500), "far behind"
        else:
            behind, sort = rng.randint(3_500, 30_000), "very far behind"
        sorts[sort] += 1
        value = {"ts": clocks[p] - behind, "n": rng.randint(1, 9), "i": i}
        rows[p].append((key, json.dumps(value, separators=(",", ":")).encode()))
    assert all(rows.values()), f"a partition got no events: {[len(r) for r in rows.values()]}"
    return rows, dict(sorts)


def _wait_until_led(admin: AdminClient, names: Sequence[str], partitions: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        topics = admin.list_topics(timeout=10).topics
        if all(
            name in topics
            and topics[name].error is None
            and len(topics[name].partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in topics[name].partitions.values())
            for name in names
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} were not ready within 60 s")
        time.sleep(0.1)


@contextmanager
def windowed_topics(bootstrap: str, name: str, partitions: int) -> Iterator[list[str]]:
    """Creates the app's source, sinks and dead-letter topic, all with ``partitions``
    partitions (flows would create missing ones alike; creating them here makes the
    partition counts certain), and deletes them on exit."""
    names = [
        windowed.source_name(name),
        *(windowed.sink_name(name, flow) for flow in windowed.FLOWS),
        windowed.dead_letter_name(name),
    ]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(timeout=60)
    try:
        _wait_until_led(admin, names, partitions)
        yield names
    finally:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result(timeout=60)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise


def produce_partitioned(bootstrap: str, topic: str, rows: Rows) -> int:
    """Produces each partition's ``(key, value)`` rows to that partition, in order (an
    idempotent producer keeps each partition's order through retries); returns how many."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20}
    )
    count = 0
    for partition, pairs in rows.items():
        for key, value in pairs:
            while True:
                try:
                    producer.produce(topic, value, key, partition=partition)
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
    assert producer.flush(60) == 0
    return count


def read_inputs(bootstrap: str, name: str, rows: Rows) -> dict[int, list[Incoming]]:
    """The source topic as the app will read it (offsets from Kafka), checked to hold
    exactly ``rows``, partition by partition, in order."""
    total = sum(len(r) for r in rows.values())
    consumed = consume_all(bootstrap, windowed.source_name(name), expected=total, idle=2.0)
    inputs: dict[int, list[Incoming]] = {p: [] for p in rows}
    for record in consumed:
        assert record.key is not None and record.value is not None
        value = json.loads(record.value)
        inputs[record.partition].append(
            Incoming(record.offset, record.key, value["ts"], value, record.value)
        )
    for p, pairs in rows.items():
        assert [(r.key, r.raw) for r in inputs[p]] == pairs, f"partition {p} is not as produced"
    return inputs


def expectations(inputs: Mapping[int, Sequence[Incoming]]) -> Expected:
    """Each flow's simulated outcome per input partition."""
    return {flow: simulate(spec, inputs) for flow, spec in SPECS.items()}


def describe(expected: Expected, inputs: Mapping[int, Sequence[Incoming]]) -> str:
    """One line per flow: results, late records; and how many records came out of order."""
    behind = 0
    for records in inputs.values():
        st: int | None = None
        for r in records:
            behind += st is not None and r.timestamp < st
            st = r.timestamp if st is None else max(st, r.timestamp)
    lines = [f"{sum(len(r) for r in inputs.values())} events, {behind} behind stream time"]
    for flow, outcomes in expected.items():
        emitted = sum(len(o.emitted) for o in outcomes.values())
        late = sum(len(o.late) for o in outcomes.values())
        lines.append(f"{flow}: {emitted} results, {late} late")
    return "; ".join(lines)


def progress(engine: sa.Engine, name: str) -> dict[str, int]:
    """Each flow's PostgreSQL watermarks summed over the source partitions (0 before its
    first commit): how many input records its committed batches have consumed."""
    return {
        flow: sum(stored_watermarks(engine, f"{name}.{flow}", windowed.source_name(name)).values())
        for flow in windowed.FLOWS
    }


# --- comparing -----------------------------------------------------------------------------


def _header(record: Consumed, name: str) -> bytes | None:
    found = [value for key, value in record.headers if key == name]
    return found[-1] if found else None


def _mismatch(what: str, actual: list[Any], expected: list[Any]) -> str:
    """Where two sequences part, with context, and the multiset difference."""
    first = next(
        (i for i, (a, e) in enumerate(zip(actual, expected, strict=False)) if a != e),
        min(len(actual), len(expected)),
    )
    lo = max(0, first - 2)
    counted_a, counted_e = Counter(map(repr, actual)), Counter(map(repr, expected))
    extra, missing = counted_a - counted_e, counted_e - counted_a
    repeated = [item for item, n in counted_a.items() if n > 1 and n > counted_e[item]]
    return (
        f"{what}: {len(actual)} records, {len(expected)} expected; first difference at {first}\n"
        f"  actual   [{lo}:{first + 3}] {actual[lo : first + 3]}\n"
        f"  expected [{lo}:{first + 3}] {expected[lo : first + 3]}\n"
        f"  {sum(extra.values())} unexpected (e.g. {list(extra)[:3]}), "
        f"{sum(missing.values())} missing (e.g. {list(missing)[:3]}), "
        f"{len(repeated)} repeated (e.g. {repeated[:3]})"
    )


def check_sink(flow: str, records: Sequence[Consumed], outcomes: Mapping[int, Outcome]) -> None:
    """The sink holds, per partition in offset order, exactly the simulated results: key,
    value ``{"start", "end", "value"}`` and the ``flows.window.start``/``end`` headers."""
    problems = []
    for p, outcome in outcomes.items():
        actual = [
            (
                r.key,
                json.loads(r.value) if r.value is not None else None,
                _header(r, "flows.window.start"),
                _header(r, "flows.window.end"),
            )
            for r in records
            if r.partition == p
        ]
        expected = [
            (e.key, e.as_json(), str(e.start).encode(), str(e.end).encode())
            for e in outcome.emitted
        ]
        if actual != expected:
            problems.append(_mismatch(f"{flow} sink partition {p}", actual, expected))
    strays = sorted({r.partition for r in records} - set(outcomes))
    if strays:
        problems.append(f"{flow} sink: records in partitions {strays}, which have no input")
    assert not problems, "\n".join(problems)


def check_dead_letters(
    flow: str, records: Sequence[Consumed], outcomes: Mapping[int, Outcome]
) -> None:
    """The dead-letter topic holds, per partition in offset order, the flow's late records
    (told apart by the ``flows.flow`` header, as three flows share the topic): the input's
    key and value bytes, ``flows.error.type`` ``LateRecord`` and the source partition and
    offset."""
    mine = [r for r in records if _header(r, "flows.flow") == flow.encode()]
    problems = []
    for p, outcome in outcomes.items():
        actual = [
            (
                r.key,
                r.value,
                _header(r, "flows.error.type"),
                _header(r, "flows.source.partition"),
                _header(r, "flows.source.offset"),
            )
            for r in mine
            if r.partition == p
        ]
        expected = [
            (r.key, r.raw, b"LateRecord", str(p).encode(), str(r.offset).encode())
            for r in outcome.late
        ]
        if actual != expected:
            problems.append(_mismatch(f"{flow} dead letters, partition {p}", actual, expected))
    assert not problems, "\n".join(problems)


def check_run(bootstrap: str, name: str, expected: Expected) -> dict[str, int]:
    """Reads every sink and the dead-letter topic ``read_committed`` and compares them with
    ``expected``; returns how many records each topic held."""
    held: dict[str, int] = {}
    late = sum(len(o.late) for outcomes in expected.values() for o in outcomes.values())
    dead = consume_all(
        bootstrap, windowed.dead_letter_name(name), expected=late, idle=2.0, timeout=60
    )
    held[windowed.dead_letter_name(name)] = len(dead)
    unnamed = [r for r in dead if _header(r, "flows.flow") not in {f.encode() for f in SPECS}]
    assert not unnamed, f"{len(unnamed)} dead letters name no flow of the app: {unnamed[:2]}"
    failures = []
    for flow, outcomes in expected.items():
        count = sum(len(o.emitted) for o in outcomes.values())
        sink = consume_all(
            bootstrap, windowed.sink_name(name, flow), expected=count, idle=2.0, timeout=60
        )
        held[windowed.sink_name(name, flow)] = len(sink)
        for check, records in ((check_sink, sink), (check_dead_letters, dead)):
            try:
                check(flow, records, outcomes)
            except AssertionError as error:
                failures.append(str(error))
    assert not failures, "\n".join(failures)
    return held
