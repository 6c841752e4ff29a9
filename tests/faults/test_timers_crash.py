"""Timers and deduplication SIGKILLed between PostgreSQL and Kafka: every output once, still.

tests/apps/timers_app.py runs two timed flows over one topic: ``timers`` (each key's first
record schedules an event-time timer 1 s later; the timer outputs the key's record count;
one output per key, ever) and ``dedup`` (the first record of each message id within 2 s of
event time passes). A few thousand seeded events (out of order, some more than a timer's
delay behind) are produced to explicit partitions before any worker starts, then a
partition-closing ``flush`` record per partition that moves stream time past every timer.

The app then runs several times under tests/faults/crashing_worker.py, each run SIGKILLed
right after the PostgreSQL commit of a chosen flow's Nth batch with outputs: for ``timers``
a batch whose outputs are fired timers, whose rows that commit deleted. After each kill the
test reads both sides and requires the gap the kill must leave: on every partition of that
commit, Kafka's committed offset C below PostgreSQL's watermark W and the commit sequence
in Kafka's offset metadata below PostgreSQL's; the pending outputs of the gap stored; none
of them in the sink, even read_uncommitted; and for timers, no timer row left for their
keys. The next run must re-emit exactly the gap. A last run finishes with
``--until-idle``; read ``read_committed``, each sink partition must equal, record for
record and in order, an independent computation of its input partition.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flows.partitioning import partition_for
from flows.records import RawMessage
from runtimes.postgres import PostgresStateStore
from tests.apps import timers_spec as spec
from tests.conftest import UniqueFn
from tests.faults.crashing_worker import KILLING
from tests.helpers import (
    CRASHING_WORKER,
    Consumed,
    committed_metadata,
    consume_all,
    flows_env,
    reemitted,
    run_cli,
    start_cli,
    stored_sequences,
)
from tests.window_check import _mismatch, created_topics, produce_partitioned, recent_base

APP = "tests.apps.timers_app:app"
PARTITIONS = 4
EVENTS_PER_PARTITION = 1_000
#: a new key every this many records of a partition, so timers fall due all along the input
NEW_KEY_EVERY = 8
#: message ids per partition: each recurs, at distances below and above the dedup TTL
MESSAGE_IDS = 150
#: (flow, N): the run is killed right after the PostgreSQL commit of that flow's Nth batch
#: with outputs; the other flow stops wherever it is
KILLS = (("timers", 1), ("dedup", 2), ("timers", 3), ("timers", 2), ("dedup", 1))
_KILLED = re.compile(re.escape(KILLING) + r" (?P<n>\d+) \((?P<parts>[^)]*)\)")
_PARTITION = re.compile(r"(?P<topic>[\w.-]+)\[(?P<partition>\d+)\]")


@dataclass(frozen=True)
class Event:
    """An input record as the independent computations see it."""

    offset: int
    key: str
    value: dict[str, Any]
    raw: bytes


# --- the input ------------------------------------------------------------------------


def make_events(seed: int, base: int) -> dict[int, list[tuple[bytes, bytes]]]:
    """Each partition's ``(key, value)`` rows, in production order: keys of the partition
    (by murmur2, so outputs keyed alike land in the same partition number) entering a
    sliding pool, a clock moving 0 to 30 ms per record, most records near it and some
    behind, a few further behind than a timer's delay; a flush record at the end."""
    rng = random.Random(seed)
    keys: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    needed = EVENTS_PER_PARTITION // NEW_KEY_EVERY + 20
    i = 0
    while min(len(k) for k in keys.values()) < needed:
        name = f"user-{i:05d}"
        keys[partition_for(name.encode(), PARTITIONS)].append(name)
        i += 1
    rows: dict[int, list[tuple[bytes, bytes]]] = {}
    n = 0
    for p in range(PARTITIONS):
        clock, pairs = base, []
        for j in range(EVENTS_PER_PARTITION):
            key = rng.choice(keys[p][j // NEW_KEY_EVERY : j // NEW_KEY_EVERY + 16])
            clock += rng.choice((0, 1, 3, 5, 10, 15, 20, 30))
            draw = rng.random()
            behind = (
                rng.randint(0, 50)
                if draw < 0.90
                else rng.randint(50, 900)
                if draw < 0.98
                else rng.randint(900, 2_500)
            )
            value = {"ts": clock - behind, "m": rng.randrange(MESSAGE_IDS), "i": n}
            pairs.append((key.encode(), _json(value)))
            n += 1
        flush = {"ts": clock + 60_000, "m": f"flush-{p}", "i": n, "flush": True}
        pairs.append((pairs[-1][0], _json(flush)))  # a key of the partition
        n += 1
        rows[p] = pairs
    return rows


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def read_events(
    bootstrap: str, name: str, rows: dict[int, list[tuple[bytes, bytes]]]
) -> dict[int, list[Event]]:
    """The source as the app reads it (offsets from Kafka), checked to hold ``rows``."""
    total = sum(len(r) for r in rows.values())
    consumed = consume_all(bootstrap, spec.source_name(name), expected=total, idle=2.0)
    events: dict[int, list[Event]] = {p: [] for p in rows}
    for record in consumed:
        assert record.key is not None and record.value is not None
        events[record.partition].append(
            Event(record.offset, record.key.decode(), json.loads(record.value), record.value)
        )
    for p, pairs in rows.items():
        got = [(e.key.encode(), e.raw) for e in events[p]]
        assert got == pairs, f"partition {p} is not as produced"
    return events


# --- the independent computations ------------------------------------------------------


def expected_fired(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    """The timers flow's outputs for one input partition, in order, from the contract of
    timers: stream time is the largest timestamp so far; a record that moves it first fires
    every timer due by it, in order of (due, key); then the record is applied (a key's first
    record schedules its timer at ``ts + delay``; every record counts); then what is due
    already (a timer scheduled in the past) fires. A timer outputs the key's count then."""
    stream_time: int | None = None
    counts: dict[str, int] = {}
    timers: dict[str, int] = {}
    out: list[tuple[str, dict[str, Any]]] = []

    def fire() -> None:
        due = sorted(
            (d, k) for k, d in timers.items() if stream_time is not None and d <= stream_time
        )
        for d, k in due:
            del timers[k]
            out.append((k, {"key": k, "count": counts[k], "due": d}))

    for event in events:
        ts = event.value["ts"]
        if stream_time is None or ts > stream_time:
            stream_time = ts
            fire()
        if event.value.get("flush"):
            continue
        if event.key not in counts:
            counts[event.key] = 0
            timers[event.key] = ts + spec.TIMER_AFTER_MS
        counts[event.key] += 1
        fire()
    assert not timers, f"timers never fired: {timers}"  # the flush record passed them all
    return out


def expected_unique(events: list[Event]) -> list[tuple[str, bytes]]:
    """The dedup flow's outputs for one input partition, in order, from the Deduplicate
    docstring: a record passes when its id was not seen, or was first seen at least the TTL
    of event time before it; an id is forgotten once stream time reaches ``first + TTL``
    (so a record behind stream time may pass after its id was forgotten)."""
    stream_time: int | None = None
    first: dict[Any, int] = {}
    out: list[tuple[str, bytes]] = []
    for event in events:
        ts, m = event.value["ts"], event.value["m"]
        seen = first.get(m)
        if seen is not None and stream_time is not None and seen + spec.DEDUP_TTL_MS <= stream_time:
            seen = None  # forgotten
        if seen is None or ts >= seen + spec.DEDUP_TTL_MS:
            out.append((event.key, event.raw))
            first[m] = ts
        stream_time = ts if stream_time is None else max(stream_time, ts)
    return out


# --- after a kill ---------------------------------------------------------------------


def _killed_partitions(text: str, number: int) -> list[int]:
    """The input partitions of the commit the crashing store killed the process after."""
    found = [m for m in _KILLED.finditer(text) if int(m["n"]) == number]
    assert len(found) == 1, f"no single kill line for commit {number}:\n{text[-3000:]}"
    return sorted(int(p["partition"]) for p in _PARTITION.finditer(found[0]["parts"]))


@dataclass(frozen=True)
class Gap:
    """A partition where Kafka is behind PostgreSQL: Kafka's committed offset ``c`` and
    commit sequence, PostgreSQL's watermark ``w`` and sequence, and the pending outputs
    stored for the batches in between (what recovery owes)."""

    c: int
    w: int
    kafka_seq: int
    seq: int
    owed: tuple[RawMessage, ...]


def _gaps(
    bootstrap: str, engine: sa.Engine, store: PostgresStateStore, name: str, flow: str
) -> dict[int, Gap]:
    """The flow's gaps, per partition of its input."""
    group, source = f"{name}.{flow}", spec.source_name(name)
    kafka = committed_metadata(bootstrap, group, source)
    stored = stored_sequences(engine, group, source)
    gaps = {}
    for p, (w, seq) in stored.items():
        c, metadata = max(kafka[p][0], 0), kafka[p][1]
        kafka_seq = int(metadata) if metadata else 0
        if c < w or kafka_seq < seq:
            pending = store.pending(group, source, p, c, kafka_seq)
            owed = tuple(message for batch in pending for message in batch.outputs)
            gaps[p] = Gap(c, w, kafka_seq, seq, owed)
    return gaps


def _check_gap(
    bootstrap: str,
    store: PostgresStateStore,
    name: str,
    flow: str,
    killed: list[int],
    gaps: dict[int, Gap],
) -> None:
    """Asserts what the kill right after ``flow``'s commit of the ``killed`` partitions
    left behind: on each, C < W and Kafka's sequence behind; outputs owed, none of them in
    the sink even read_uncommitted (never produced); for timers, no timer row of their keys
    (deleted by the commit that fired them)."""
    for p in killed:
        gap = gaps.get(p)
        assert gap is not None, f"{flow}: Kafka caught up on partition {p}: {gaps}"
        assert gap.c < gap.w and gap.kafka_seq < gap.seq, f"{flow}[{p}]: {gap}"
    owed = [message for p in killed for message in gaps[p].owed]
    assert owed, f"{flow}: the killed commit stored no pending outputs for {killed}"
    sink = spec.fired_name(name) if flow == "timers" else spec.unique_name(name)
    published = {
        (r.key, r.value)
        for r in consume_all(bootstrap, sink, committed_only=False, idle=1.0, timeout=30)
    }
    leaked = [m for m in owed if (m.key, m.value) in published]
    assert not leaked, f"{flow}: outputs of the gap reached Kafka: {leaked[:3]}"
    if flow == "timers":
        table = f"{name}_timers_timed"
        for message in owed:
            assert message.key is not None
            rows = store.windows(table, message.key)
            assert [r.start for r in rows] == [0], f"{message.key!r} fired, yet has rows {rows}"


def _check_reemitted(text: str, flow: str, before: dict[int, Gap], after: dict[int, Gap]) -> int:
    """The run that logged ``text`` found the gaps ``before`` and left ``after``: every
    partition it says it re-emitted is a gap of ``before`` with exactly its C and W, named
    once; every gap owing outputs that the run closed (Kafka's offset now at or past its W)
    is named; and it re-emitted exactly the outputs owed. Returns how many."""
    count, ranges = reemitted(text, flow)
    found = {p: (c, w) for _, p, c, w in ranges if c < w}
    assert len(found) == len([r for r in ranges if r[2] < r[3]]), f"twice: {ranges}"
    wrong = {
        p: cw for p, cw in found.items() if p not in before or cw != (before[p].c, before[p].w)
    }
    assert not wrong, f"{flow}: re-emitted {wrong}, gaps were {before}\n{text[-3000:]}"
    closed = {p for p, g in before.items() if g.owed and (p not in after or after[p].c >= g.w)}
    missing = closed - set(found)
    assert not missing, f"{flow}: closed gaps {missing} of {before} unre-emitted\n{text[-3000:]}"
    owed = sum(len(before[p].owed) for p in found)
    assert count == owed, f"{flow}: re-emitted {count} outputs, {owed} owed: {found}"
    return count


# --- the test -------------------------------------------------------------------------


def _check_sink(
    what: str, records: list[Consumed], expected: dict[int, list[tuple[Any, Any]]], fired: bool
) -> None:
    problems = []
    for p, wanted in expected.items():
        actual: list[tuple[Any, Any]] = [
            (
                (r.key or b"").decode(),
                json.loads(r.value or b"null") if fired else r.value,
            )
            for r in records
            if r.partition == p
        ]
        if actual != wanted:
            problems.append(_mismatch(f"{what} partition {p}", actual, wanted))
    assert not problems, "\n".join(problems)


def test_timer_outputs_survive_kills_between_the_commits(
    unique: UniqueFn,
    bootstrap_servers: str,
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    name = unique("tim").replace("-", "_")
    env = flows_env(
        bootstrap_servers,
        database_url,
        # small batches: many commits, each with timer outputs; a short session timeout:
        # a run need not wait long for the killed one to leave the group
        FLOWS_BATCH_SIZE="100",
        FLOWS_STATEFUL_BATCH_SIZE="100",
        FLOWS_SESSION_TIMEOUT_MS="6000",
        **{spec.APP_VARIABLE: name, spec.PARTITIONS_VARIABLE: str(PARTITIONS)},
    )
    topics = [
        spec.source_name(name),
        spec.fired_name(name),
        spec.unique_name(name),
        spec.dead_letter_name(name),
    ]
    rows = make_events(seed=20261207, base=recent_base())
    log = tmp_path / "workers.log"
    store = PostgresStateStore(database_url)
    try:
        with created_topics(bootstrap_servers, topics, PARTITIONS):
            produce_partitioned(bootstrap_servers, topics[0], rows)
            events = read_events(bootstrap_servers, name, rows)
            fired = {p: expected_fired(e) for p, e in events.items()}
            unique_out = {p: expected_unique(e) for p, e in events.items()}
            passed = sum(len(u) for u in unique_out.values())
            total = sum(len(e) for e in events.values())
            assert 0 < passed < total, f"dedup passes {passed} of {total}: nothing to check"

            gaps: dict[str, dict[int, Gap]] = {f: {} for f in spec.FLOWS}
            reemits = {f: 0 for f in spec.FLOWS}
            for flow, commits in KILLS:
                mark = len(log.read_text()) if log.exists() else 0
                crashing = start_cli(
                    ["--kill-after", str(commits), "--only-group", f"{name}.{flow}", APP],
                    env,
                    log,
                    command=CRASHING_WORKER,
                )
                crashing.wait(timeout=300)
                text = log.read_text()[mark:]
                assert crashing.returncode == -signal.SIGKILL, text[-3000:]
                killed = _killed_partitions(text, commits)
                now = {f: _gaps(bootstrap_servers, engine, store, name, f) for f in spec.FLOWS}
                for each in spec.FLOWS:  # the previous kill's gaps this run recovered
                    reemits[each] += _check_reemitted(text, each, gaps[each], now[each])
                _check_gap(bootstrap_servers, store, name, flow, killed, now[flow])
                gaps = now

            final = run_cli(["run", APP, "--until-idle", "5"], env, timeout=600)
            assert final.returncode == 0, final.stderr[-3000:] + log.read_text()[-3000:]
            for flow in spec.FLOWS:
                left = _gaps(bootstrap_servers, engine, store, name, flow)
                assert not left, f"{flow} still owes {left}"
                reemits[flow] += _check_reemitted(final.stderr, flow, gaps[flow], left)
            assert all(reemits.values()), f"re-emitted {reemits}"

            want = sum(len(o) for o in fired.values())
            got = consume_all(
                bootstrap_servers, spec.fired_name(name), expected=want, idle=2.0, timeout=60
            )
            _check_sink("fired", got, fired, fired=True)
            keys = [k for outs in fired.values() for k, _ in outs]
            assert len(keys) == len(set(keys)), "a key fired twice in the computation"
            out = consume_all(
                bootstrap_servers, spec.unique_name(name), expected=passed, idle=2.0, timeout=60
            )
            _check_sink("unique", out, unique_out, fired=False)
            dead = consume_all(bootstrap_servers, spec.dead_letter_name(name), idle=1.0)
            assert not dead, f"dead letters: {dead[:3]}"
            print(
                f"{total} events, {len(keys)} timers, {passed} passed dedup; "
                f"re-emitted {reemits}; {time.monotonic() - started:.0f} s in all"
            )
    finally:
        try:
            store.drop_tables([f"{name}_timers_timed", f"{name}_dedup_seen"])
            store.forget_groups([f"{name}.{flow}" for flow in spec.FLOWS])
        finally:
            store.close()
