"""Timers, state expiry and deduplication through the test driver (real worker loop, the
driver's clock): event-time and wall-clock timers, TTL by stream time and by the wall clock,
faults between the commits of a batch that fires timers."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from flows import (
    JSON,
    STR,
    App,
    Deduplicate,
    StatefulMap,
    Timer,
    TimerError,
    Topic,
    WiringError,
    cancel_timer,
    schedule_timer,
)
from flows.records import Record
from flows.testing import TestDriver
from flows.testing.faults import FaultPoint

MINUTE = 60_000


def topics() -> tuple[Topic, Topic]:
    """One partition: stream time is per partition, and these tests move it with any key."""
    return (
        Topic("carts", key_format=STR, value_format=JSON, partitions=1),
        Topic("alerts", key_format=STR, value_format=JSON, partitions=1),
    )


def watch_carts(record: Record[str, dict[str, Any]], state: Any) -> tuple[Any, Any]:
    """Schedules 'abandoned' 30 minutes (event time) after an add, cancels it on checkout."""
    event = record.value["event"]
    if event == "add":
        schedule_timer("abandoned", after=timedelta(minutes=30), data=record.value["item"])
        return None, {"items": [*(state or {}).get("items", []), record.value["item"]]}
    if event == "checkout":
        cancel_timer("abandoned")
        return None, None
    return None, state


def abandoned(key: str, state: Any, timer: Timer) -> tuple[Any, Any]:
    return {"user": key, "items": state["items"], "last": timer.data, "at": timer.due}, state


def cart_app(**options: Any) -> App:
    carts, alerts = topics()
    flow = StatefulMap(
        name="carts",
        source=carts,
        sink=alerts,
        fn=watch_carts,
        on_timer=abandoned,
        timestamp=lambda r: r.value["ts"],
        **options,
    )
    return App("shop", topics=[carts, alerts], flows=[flow])


def pipe(driver: TestDriver, user: str, event: str, ts: int, item: str = "x") -> None:
    driver.pipe("carts", {"event": event, "ts": ts, "item": item}, key=user)


def test_an_event_time_timer_fires_once_when_stream_time_reaches_it() -> None:
    driver = TestDriver(cart_app())
    pipe(driver, "ann", "add", 0, "socks")
    pipe(driver, "bob", "add", 5 * MINUTE, "hat")
    pipe(driver, "bob", "checkout", 10 * MINUTE)
    assert [t.name for t in driver.timers("carts", "ann")] == ["abandoned"]
    assert driver.timers("carts", "bob") == []
    pipe(driver, "cid", "view", 29 * MINUTE)
    assert driver.read("alerts") == []
    pipe(driver, "cid", "view", 30 * MINUTE)  # stream time reaches ann's timer
    (alert,) = driver.read("alerts")
    assert alert.key == "ann"
    assert alert.value == {"user": "ann", "items": ["socks"], "last": "socks", "at": 30 * MINUTE}
    assert driver.timers("carts", "ann") == []
    pipe(driver, "cid", "view", 90 * MINUTE)
    assert driver.read("alerts") == []  # once


def test_rescheduling_moves_a_timer_and_timers_fire_in_due_order() -> None:
    driver = TestDriver(cart_app())
    pipe(driver, "ann", "add", 0)
    pipe(driver, "bob", "add", 1 * MINUTE)
    pipe(driver, "ann", "add", 2 * MINUTE)  # moves ann's timer to 32 minutes
    pipe(driver, "cid", "view", 40 * MINUTE)
    assert [(a.key, a.value["at"]) for a in driver.read("alerts")] == [
        ("bob", 31 * MINUTE),
        ("ann", 32 * MINUTE),
    ]


def wall_app() -> App:
    carts, alerts = topics()

    def remind(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
        schedule_timer("remind", after=timedelta(minutes=5), clock="wall")
        return None, (state or 0) + 1

    def fire(key: str, state: int, timer: Timer) -> tuple[Any, Any]:
        return {"user": key, "count": state, "clock": timer.clock}, state

    flow = StatefulMap(name="remind", source=carts, sink=alerts, fn=remind, on_timer=fire)
    return App("shop", topics=[carts, alerts], flows=[flow])


def test_a_wall_clock_timer_fires_when_the_driver_advances_the_clock() -> None:
    driver = TestDriver(wall_app())
    driver.pipe("carts", {"event": "add"}, key="ann")
    driver.advance(timedelta(minutes=4))
    assert driver.read("alerts") == []
    driver.advance(timedelta(minutes=2))
    assert [a.value for a in driver.read("alerts")] == [
        {"user": "ann", "count": 1, "clock": "wall"}
    ]
    driver.advance(timedelta(hours=1))
    assert driver.read("alerts") == []


@pytest.mark.parametrize(
    "point", ["between_commits", "crash_in_kafka_commit", "kafka_commit", "db_commit"]
)
def test_a_timer_fires_exactly_once_across_a_fault_in_its_tick(point: FaultPoint) -> None:
    driver = TestDriver(wall_app())
    for user in ("ann", "bob", "cid"):
        driver.pipe("carts", {"event": "add"}, key=user)
    driver.faults.inject(point, flow="remind")
    driver.advance(timedelta(minutes=6))  # the tick that fires all three meets the fault
    driver.advance(timedelta(minutes=1))
    assert driver.faults.fired == [(point, "remind")]
    if point in ("between_commits", "crash_in_kafka_commit"):
        assert driver.replaced
    users = [json.loads(r.value or b"")["user"] for r in driver.read_all("alerts")]
    assert sorted(users) == ["ann", "bob", "cid"]


def test_ttl_by_stream_time_forgets_idle_keys_and_they_start_again() -> None:
    carts, alerts = topics()

    def count(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
        new = (state or 0) + 1
        return new, new

    flow = StatefulMap(
        name="count",
        source=carts,
        sink=alerts,
        fn=count,
        timestamp=lambda r: r.value["ts"],
        ttl=timedelta(minutes=10),
    )
    driver = TestDriver(App("shop", topics=[carts, alerts], flows=[flow]))
    for ts in (0, MINUTE, 2 * MINUTE):
        driver.pipe("carts", {"ts": ts}, key="ann")
    driver.pipe("carts", {"ts": 11 * MINUTE}, key="bob")  # ann idle 9 minutes: kept
    assert driver.state("count", "ann") == 3
    driver.pipe("carts", {"ts": 12 * MINUTE}, key="bob")  # ann idle 10 minutes: expired
    assert driver.state("count", "ann") is None
    assert driver.states("count") == {"bob": 2}
    driver.pipe("carts", {"ts": 13 * MINUTE}, key="ann")
    assert [r.value for r in driver.read("alerts") if r.key == "ann"] == [1, 2, 3, 1]


def test_ttl_by_the_wall_clock_expires_on_a_tick() -> None:
    carts, alerts = topics()
    flow = StatefulMap(
        name="last",
        source=carts,
        sink=alerts,
        fn=lambda record, state: (None, record.value),
        ttl=timedelta(minutes=10),
        ttl_clock="wall",
    )
    driver = TestDriver(App("shop", topics=[carts, alerts], flows=[flow]))
    driver.pipe("carts", {"a": 1}, key="ann")
    driver.advance(timedelta(minutes=9))
    assert driver.state("last", "ann") == {"a": 1}
    driver.advance(timedelta(minutes=2))
    assert driver.states("last") == {}


def test_timers_outside_a_stateful_function_are_refused() -> None:
    with pytest.raises(TimerError, match="only inside"):
        schedule_timer("x", after=timedelta(minutes=1))
    with pytest.raises(TimerError, match="only inside"):
        cancel_timer("x")


def test_bad_time_options_fail_at_load() -> None:
    with pytest.raises(WiringError, match="ttl_clock"):
        cart_app(ttl=timedelta(minutes=1), ttl_clock="sundial")
    carts, alerts = topics()

    def one_argument(key: Any) -> Any:
        return key

    flow = StatefulMap(name="x", source=carts, sink=alerts, fn=watch_carts, on_timer=one_argument)  # type: ignore[arg-type]
    with pytest.raises(WiringError, match="on_timer"):
        App("a", topics=[carts, alerts], flows=[flow])


def test_a_failing_timer_is_dead_lettered_and_the_flow_goes_on() -> None:
    carts, alerts = topics()

    def boom(key: str, state: Any, timer: Timer) -> tuple[Any, Any]:
        raise RuntimeError("no alert today")

    flow = StatefulMap(
        name="carts",
        source=carts,
        sink=alerts,
        fn=watch_carts,
        on_timer=boom,
        timestamp=lambda r: r.value["ts"],
    )
    driver = TestDriver(App("shop", topics=[carts, alerts], flows=[flow]))
    pipe(driver, "ann", "add", 0)
    pipe(driver, "bob", "view", 31 * MINUTE)
    (dead,) = driver.read_all("carts.dlq")
    headers = dict(dead.headers)
    assert headers["flows.error.type"] == b"RuntimeError"
    assert json.loads(dead.value or b"")["timer"] == "abandoned"
    assert driver.timers("carts", "ann") == []


def dedupe_app() -> App:
    source = Topic("payments", key_format=STR, value_format=JSON, partitions=2)
    sink = Topic("unique", key_format=STR, value_format=JSON, partitions=2)
    flow = Deduplicate(
        name="dedupe",
        source=source,
        sink=sink,
        key=lambda r: r.value["id"],
        timestamp=lambda r: r.value["ts"],
        ttl=timedelta(minutes=5),
    )
    return App("pay", topics=[source, sink], flows=[flow])


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_deduplicate_passes_the_first_record_of_a_key_within_the_ttl(batch_size: int) -> None:
    driver = TestDriver(dedupe_app(), batch_size=batch_size)
    sent = [("p1", 0), ("p1", MINUTE), ("p2", MINUTE), ("p1", 4 * MINUTE), ("p1", 5 * MINUTE)]
    sent += [("p2", 2 * MINUTE), ("p3", 10 * MINUTE), ("p2", 10 * MINUTE)]
    for i, (pid, ts) in enumerate(sent):
        driver.pipe_raw(
            "payments", json.dumps({"id": pid, "ts": ts, "n": i}).encode(), b"acct", run=False
        )
    driver.run()
    passed = [(r.value["id"], r.value["n"]) for r in driver.read("unique")]
    # p1 at 5 min is exactly ttl after the first: it passes; p2 at 10 min was forgotten
    assert passed == [("p1", 0), ("p2", 2), ("p1", 4), ("p3", 6), ("p2", 7)]
    assert driver.counts["filtered"] == 3


def test_deduplicate_remembers_across_a_restart() -> None:
    driver = TestDriver(dedupe_app())
    driver.pipe("payments", {"id": "p1", "ts": 0}, key="acct")
    driver.crash()
    driver.pipe("payments", {"id": "p1", "ts": MINUTE}, key="acct")
    assert len(driver.read("unique")) == 1
    assert driver.replaced


def test_a_state_key_flow_with_a_ttl_expires_through_its_re_key_step() -> None:
    """Time options on a flow with state_key: the timed step reads the re-key envelopes,
    and event time is the source record's."""
    carts, alerts = topics()
    flow = StatefulMap(
        name="per-item",
        source=carts,
        sink=alerts,
        fn=lambda record, state: ((state or 0) + 1, (state or 0) + 1),
        state_key=lambda record: record.value["item"],
        timestamp=lambda record: record.value["ts"],
        ttl=timedelta(minutes=1),
    )
    driver = TestDriver(App("shop", topics=[carts, alerts], flows=[flow]))
    for user, item, ts in (("ann", "hat", 0), ("bob", "hat", 1_000), ("ann", "hat", 2 * MINUTE)):
        driver.pipe("carts", {"item": item, "ts": ts}, key=user)
    assert [r.value for r in driver.read("alerts")] == [1, 2, 1]  # expired in between
    assert driver.states("per-item") == {"hat": 1}


def test_expired_states_read_as_absent_at_once_and_are_deleted_in_bounded_batches() -> None:
    """2,500 keys expire together: every one reads as absent from then on, while their rows
    go at most 1,000 per partition and commit (the engine's expire_limit)."""
    carts, alerts = topics()
    flow = StatefulMap(
        name="seen",
        source=carts,
        sink=alerts,
        fn=lambda record, state: (None if state is None else "again", True),
        timestamp=lambda r: r.value["ts"],
        ttl=timedelta(minutes=1),
    )
    driver = TestDriver(App("shop", topics=[carts, alerts], flows=[flow]), batch_size=5_000)
    for i in range(2_500):
        driver.pipe_raw("carts", json.dumps({"ts": 0}).encode(), f"k{i}".encode(), run=False)
    driver.run()
    table = driver.store.window_tables["shop_seen_timed"]
    assert len(table) == 2_500
    sizes = []
    for n in range(4):  # one record per batch, each a commit that expires the next 1,000
        driver.pipe("carts", {"ts": 2 * MINUTE + n}, key="k0")
        sizes.append(len(table))
    assert sizes == [1_500, 500, 1, 1]  # k0 is written again each time: it stays
    assert driver.states("seen") == {"k0": True}
    assert [r.value for r in driver.read("alerts")] == ["again"] * 3  # k0 was absent once
