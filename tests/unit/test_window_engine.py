"""Windowed flows through the test driver: the real worker loop over the in-memory broker
and store, with the driver's clock.

Final results are compared with the brute-force reference (``tests/window_reference.py``),
per input partition; outputs must be byte-identical whatever the batch size; faults at every
point of the protocol, ticks included, must neither lose nor double a window.
"""

from __future__ import annotations

import json
import logging
import operator
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flows import (
    JSON,
    STR,
    App,
    Hopping,
    Session,
    Sliding,
    Topic,
    Tumbling,
    Window,
    WiringError,
)
from flows.errors import OffsetsAheadError
from flows.ports import PartitionTime
from flows.records import RawRecord
from flows.testing import TestDriver
from flows.testing.faults import FaultPoint
from flows.windows import WindowKind
from tests import window_reference as reference

PARTITIONS = 3
IDLE = timedelta(seconds=5)


def window_app(kind: WindowKind, grace_ms: int = 0, **options: Any) -> App:
    source = Topic("events", key_format=STR, value_format=JSON, partitions=PARTITIONS)
    sink = Topic("results", key_format=STR, value_format=JSON, partitions=PARTITIONS)
    config: dict[str, Any] = {
        "initial": lambda: 0,
        "fn": lambda record, acc: acc + record.value["n"],
        "timestamp": lambda record: record.value["ts"],
        "close_after_idle": IDLE,
        **options,
    }
    flow = Window(
        name="agg",
        source=source,
        sink=sink,
        window=kind,
        grace=timedelta(milliseconds=grace_ms),
        **config,
    )
    return App("windows", topics=[source, sink], flows=[flow])


Event = tuple[int, str, int, int]  # partition, key, ts, n


def random_events(seed: int, count: int = 600) -> list[Event]:
    """Timestamps that mostly advance, with out-of-order and very late ones."""
    rng = random.Random(seed)
    events: list[Event] = []
    clock = 1_000
    for _ in range(count):
        clock += rng.randint(0, 40)
        roll = rng.random()
        ts = clock - rng.randint(0, 300) if roll < 0.2 else clock
        if roll > 0.97:
            ts = clock - rng.randint(1_000, 3_000)  # very late
        key = f"k{rng.randint(0, 7)}"
        events.append((rng.randrange(PARTITIONS), key, max(ts, 0), rng.randint(1, 5)))
    return events


def pipe_events(driver: TestDriver, events: list[Event]) -> list[RawRecord]:
    written = [
        driver.pipe_raw(
            "events",
            json.dumps({"ts": ts, "n": n}).encode(),
            key.encode(),
            partition=partition,
            run=False,
        )
        for partition, key, ts, n in events
    ]
    driver.run()
    return written


def finals(driver: TestDriver) -> dict[tuple[str, int, int], Any]:
    found: dict[tuple[str, int, int], Any] = {}
    for record in driver.read("results"):
        where = (record.key, record.value["start"], record.value["end"])
        assert where not in found, f"window {where} emitted twice"
        found[where] = record.value["value"]
    return found


def late_offsets(driver: TestDriver) -> set[tuple[int, int]]:
    late = set()
    for raw in driver.read_all("events.dlq"):
        headers = dict(raw.headers)
        assert headers["flows.error.type"] == b"LateRecord"
        late.add((int(headers["flows.source.partition"]), int(headers["flows.source.offset"])))
    return late


Reference = Callable[[list[reference.Rec]], tuple[reference.Finals, set[int]]]


def expected(
    events: list[Event], written: list[RawRecord], simulate: Reference
) -> tuple[reference.Finals, set[tuple[int, int]]]:
    """The reference's finals and late records, partition by partition."""
    all_finals: reference.Finals = {}
    late: set[tuple[int, int]] = set()
    for partition in range(PARTITIONS):
        mine = [(e, w) for e, w in zip(events, written, strict=True) if e[0] == partition]
        found, late_idx = simulate([(key, ts, n) for (_, key, ts, n), _ in mine])
        for (key, start, end), value in found.items():
            assert (key, start, end) not in all_finals  # keys live in one partition each
            all_finals[(key, start, end)] = value
        late.update((partition, mine[i][1].offset) for i in late_idx)
    return all_finals, late


def add(record: Any, acc: int) -> int:
    return acc + int(record)


KINDS: list[tuple[str, WindowKind, int, dict[str, Any], Reference]] = [
    (
        "tumbling",
        Tumbling(timedelta(milliseconds=500)),
        100,
        {},
        lambda r: reference.hopping(r, 500, 500, 100, lambda: 0, add),
    ),
    (
        "hopping",
        Hopping(timedelta(milliseconds=600), timedelta(milliseconds=200)),
        50,
        {},
        lambda r: reference.hopping(r, 600, 200, 50, lambda: 0, add),
    ),
    (
        "session with merge",
        Session(timedelta(milliseconds=120)),
        80,
        {"merge": operator.add},
        lambda r: reference.session(r, 120, 80, lambda: 0, add),
    ),
    (
        "session without merge",
        Session(timedelta(milliseconds=120)),
        80,
        {},
        lambda r: reference.session(r, 120, 80, lambda: 0, add),
    ),
    (
        "sliding",
        Sliding(timedelta(milliseconds=300)),
        60,
        {},
        lambda r: reference.sliding(r, 300, 60, lambda: 0, add),
    ),
]


def keyed_events(seed: int) -> list[Event]:
    """Random events whose keys each live in one partition (as the default partitioner does)."""
    home = {f"k{i}": i % PARTITIONS for i in range(8)}
    return [(home[key], key, ts, n) for _, key, ts, n in random_events(seed)]


@pytest.mark.parametrize(("name", "kind", "grace", "options", "simulate"), KINDS)
def test_final_results_match_the_reference_for_every_batch_size(
    name: str, kind: WindowKind, grace: int, options: dict[str, Any], simulate: Reference
) -> None:
    events = keyed_events(seed=len(name))
    outputs = []
    for batch_size in (1, 7, 10_000):
        driver = TestDriver(window_app(kind, grace, **options), batch_size=batch_size)
        written = pipe_events(driver, events)
        driver.advance(IDLE * 2)  # the quiet partitions close what is left
        want_finals, want_late = expected(events, written, simulate)
        assert finals(driver) == {
            (k.decode(), s, e): v for (k, s, e), v in _encoded_keys(want_finals).items()
        }
        assert late_offsets(driver) == want_late
        assert driver.counts["late"] == len(want_late)
        assert driver.windows("agg", "k0") == [] or isinstance(kind, Sliding)
        outputs.append(
            [(r.partition, r.key, r.value, r.headers) for r in driver.read_all("results")]
        )
    assert outputs[0] == outputs[1] == outputs[2]  # byte-identical whatever the batch size


def _encoded_keys(found: reference.Finals) -> dict[tuple[bytes, int, int], Any]:
    return {(str(k).encode(), s, e): v for (k, s, e), v in found.items()}


def test_a_window_closes_when_stream_time_passes_end_plus_grace_and_late_records_dead_letter() -> (
    None
):
    driver = TestDriver(window_app(Tumbling(timedelta(seconds=1)), grace_ms=200))
    for ts in (100, 900, 1_100, 50):  # 50 is out of order, still within grace
        driver.pipe("events", {"ts": ts, "n": 1}, key="u")
    assert driver.read("results") == []
    driver.pipe("events", {"ts": 1_200, "n": 1}, key="u")  # 1,000 + 200 reached: [0, 1000) closes
    (first,) = driver.read("results")
    assert first.value == {"start": 0, "end": 1_000, "value": 3}
    assert dict(first.headers) == {"flows.window.start": b"0", "flows.window.end": b"1000"}
    assert first.timestamp == 999
    driver.pipe("events", {"ts": 999, "n": 1}, key="u")  # its window has closed: late
    assert [dict(r.headers)["flows.error.type"] for r in driver.read_all("events.dlq")] == [
        b"LateRecord"
    ]
    assert driver.windows("agg", "u") == [
        {"start": 1_000, "end": 2_000, "value": 2, "pending": True}
    ]


def test_emit_update_outputs_every_accepted_records_windows() -> None:
    app = window_app(
        Hopping(timedelta(seconds=2), timedelta(seconds=1)), emit="update", close_after_idle=None
    )
    driver = TestDriver(app)
    driver.pipe("events", {"ts": 1_500, "n": 2}, key="u")
    driver.pipe("events", {"ts": 1_700, "n": 3}, key="u")
    assert [r.value for r in driver.read("results")] == [
        {"start": 0, "end": 2_000, "value": 2},
        {"start": 1_000, "end": 3_000, "value": 2},
        {"start": 0, "end": 2_000, "value": 5},
        {"start": 1_000, "end": 3_000, "value": 5},
    ]


def test_result_shapes_the_output_and_the_key_is_decoded() -> None:
    app = window_app(
        Tumbling(timedelta(seconds=1)),
        result=lambda key, start, end, acc: {"user": key, "minute": start, "views": acc},
    )
    driver = TestDriver(app)
    driver.pipe("events", {"ts": 10, "n": 4}, key="ann")
    driver.pipe("events", {"ts": 1_000, "n": 1}, key="ann")
    assert [r.value for r in driver.read("results")] == [{"user": "ann", "minute": 0, "views": 4}]


def test_a_quiet_partition_closes_its_windows_only_after_close_after_idle() -> None:
    driver = TestDriver(window_app(Tumbling(timedelta(minutes=1))))
    now = int(driver.clock.time() * 1000)
    driver.pipe("events", {"ts": now, "n": 1}, key="u")
    driver.advance(IDLE - timedelta(seconds=1))
    assert driver.read("results") == []
    driver.advance(timedelta(seconds=2))  # idle long enough, but the wall clock is in the window
    assert driver.read("results") == []
    driver.advance(timedelta(minutes=1))
    (result,) = driver.read("results")
    assert result.value["value"] == 1
    assert driver.windows("agg", "u") == []


def test_stream_time_survives_a_restart() -> None:
    driver = TestDriver(window_app(Tumbling(timedelta(seconds=1)), close_after_idle=None))
    driver.pipe("events", {"ts": 5_000, "n": 1}, key="u")
    driver.crash()
    driver.pipe("events", {"ts": 100, "n": 1}, key="u")  # late by the stream time before the kill
    assert len(driver.read_all("events.dlq")) == 1
    assert driver.replaced


def test_timestamps_from_aware_datetimes_and_bad_timestamps_dead_letter() -> None:
    app = window_app(
        Tumbling(timedelta(seconds=1)),
        timestamp=lambda r: datetime.fromisoformat(r.value["at"]),
        close_after_idle=None,
    )
    driver = TestDriver(app)
    driver.pipe("events", {"at": "1970-01-01T00:00:00.250+00:00", "n": 1}, key="u")
    driver.pipe("events", {"at": "1970-01-01T00:00:01", "n": 1}, key="u")  # naive
    driver.pipe("events", {"n": 1}, key="u")  # no timestamp at all
    driver.pipe(
        "events", {"at": datetime(1970, 1, 1, 0, 0, 2, tzinfo=UTC).isoformat(), "n": 1}, key="u"
    )
    assert [r.value for r in driver.read("results")] == [{"start": 0, "end": 1_000, "value": 1}]
    errors = [dict(r.headers)["flows.error.type"] for r in driver.read_all("events.dlq")]
    assert errors == [b"ValueError", b"KeyError"]
    assert (
        b"naive datetime" in dict(driver.read_all("events.dlq")[0].headers)["flows.error.message"]
    )


def test_bad_window_wiring_fails_at_load_naming_the_field() -> None:
    with pytest.raises(WiringError, match="emit"):
        window_app(Tumbling(timedelta(seconds=1)), emit="sometimes")
    with pytest.raises(WiringError, match="close_after_idle"):
        window_app(Tumbling(timedelta(seconds=1)), close_after_idle=5)
    with pytest.raises(WiringError, match="initial"):
        window_app(Tumbling(timedelta(seconds=1)), initial=lambda x: x)


# --- faults -------------------------------------------------------------------------------

POINTS: list[FaultPoint] = ["between_commits", "crash_in_kafka_commit", "kafka_commit", "db_commit"]


def _faulted_run(
    point: FaultPoint, at_tick: bool
) -> tuple[TestDriver, list[Event], list[RawRecord]]:
    events = keyed_events(seed=11)
    driver = TestDriver(window_app(Tumbling(timedelta(milliseconds=500)), 100), batch_size=50)
    if not at_tick:
        driver.faults.inject(point, flow="agg", times=3)
    written = pipe_events(driver, events)
    if at_tick:
        driver.faults.inject(point, flow="agg")
    driver.advance(IDLE * 2)
    driver.advance(IDLE * 2)  # a tick that failed is retried, or re-emitted by the successor
    return driver, events, written


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("at_tick", [False, True], ids=["in a batch", "in a tick"])
def test_a_fault_anywhere_neither_loses_nor_doubles_a_window(
    point: FaultPoint, at_tick: bool
) -> None:
    driver, events, written = _faulted_run(point, at_tick)
    assert driver.faults.fired and driver.faults.fired[0] == (point, "agg")
    if point in ("between_commits", "crash_in_kafka_commit"):
        assert driver.replaced  # the worker died and was replaced
    want_finals, want_late = expected(
        events, written, lambda r: reference.hopping(r, 500, 500, 100, lambda: 0, add)
    )
    assert finals(driver) == {(k, s, e): v for (k, s, e), v in want_finals.items()}
    assert late_offsets(driver) == want_late


def test_a_zombies_tick_is_fenced_and_no_window_is_lost_or_doubled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The tick's worker is evicted just before its database commit, a successor takes the
    partitions over; the zombie's tick reaches PostgreSQL (nobody moved the sequence yet)
    but Kafka refuses its transaction, so the successor's next commit finds the sequence
    moved, is refused in turn, rejoins and re-emits the tick's stored outputs."""
    events = keyed_events(seed=5)
    driver = TestDriver(window_app(Tumbling(timedelta(milliseconds=500)), 100))
    written = pipe_events(driver, events)
    driver.faults.inject("rebalance_mid_batch", flow="agg")
    with caplog.at_level(logging.INFO, logger="flows.worker"):
        driver.advance(IDLE * 2)
        driver.advance(IDLE * 2)
    assert driver.faults.fired == [("rebalance_mid_batch", "agg")]
    assert len(driver.workers) == 2  # the successor took over
    said = [r.getMessage() for r in caplog.records]
    assert any("not in the group's current generation" in m for m in said)  # Kafka fenced
    assert any("commit sequence is" in m for m in said)  # PostgreSQL fenced
    assert any("re-emits" in m for m in said)
    want_finals, _ = expected(
        events, written, lambda r: reference.hopping(r, 500, 500, 100, lambda: 0, add)
    )
    assert finals(driver) == {(k, s, e): v for (k, s, e), v in want_finals.items()}


def test_a_database_behind_kafkas_commit_sequence_stops_the_flow() -> None:
    """After a tick, Kafka's offset equals the watermark but its commit sequence is ahead of
    a database restored from before the tick: the worker refuses to guess."""
    driver = TestDriver(window_app(Tumbling(timedelta(milliseconds=500))))
    pipe_events(driver, keyed_events(seed=3)[:50])
    driver.advance(IDLE * 2)  # ticks: the sequences move, the offsets do not
    for where, time in list(driver.store.times.items()):
        driver.store.times[where] = PartitionTime(time.seq - 1, time.stream_time)
    driver.crash()
    with pytest.raises(OffsetsAheadError, match="commit sequence"):
        driver.pipe("events", {"ts": 0, "n": 1}, key="k0")
