"""History (flows.history) in the core and the test driver: what a flow's wiring may ask,
which changes a batch records, and that faults at every point of the exactly-once protocol
leave each applied record's change exactly once."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from flows import JSON, STR, App, Join, StatefulMap, StateKeys, Topic, Window
from flows.encryption import key_id_of
from flows.errors import WiringError
from flows.history import HistoryPolicy, history_table
from flows.steps import StatefulStep
from flows.testing import TestDriver
from flows.testing.faults import FaultPoint
from flows.windows import Tumbling

EVENTS = Topic("events", key_format=STR, value_format=JSON, partitions=2)
OUT = Topic("out", key_format=STR, value_format=STR, partitions=2)


def _count(record: Any, state: Any) -> tuple[str | None, Any]:
    """Counts a key's records; ``{"delete": true}`` deletes its state, ``{"skip": true}``
    leaves it as it is, ``{"fail": true}`` raises."""
    if record.value.get("fail"):
        raise ValueError("asked to fail")
    if record.value.get("delete"):
        return "deleted", None
    if record.value.get("skip"):
        return None, state
    total = (state or 0) + 1
    return str(total), total


def _app(**options: Any) -> App:
    return App("hist", [StatefulMap(name="count", source=EVENTS, sink=OUT, fn=_count, **options)])


def _step(app: App) -> StatefulStep:
    (step,) = [s for s in app.steps if isinstance(s, StatefulStep)]
    return step


# --- wiring ---------------------------------------------------------------------------------


def test_history_options_compile_into_the_step() -> None:
    assert _step(_app()).history is None and _step(_app()).history_table is None
    step = _step(_app(history=True, history_keep=5, history_max_age=timedelta(days=7)))
    assert step.history == HistoryPolicy(keep=5, max_age_ms=7 * 86_400_000)
    assert step.history_table == "hist_count_state_history" == history_table(step.table)
    assert _app(history=True).history_tables() == {"count": "hist_count_state_history"}


@pytest.mark.parametrize(
    ("options", "field", "problem"),
    [
        ({"history_keep": 3}, "history_keep", "needs history=True"),
        ({"history_max_age": timedelta(days=1)}, "history_max_age", "needs history=True"),
        ({"history": True, "history_keep": 0}, "history_keep", "1 or more"),
        ({"history": True, "history_keep": True}, "history_keep", "1 or more"),
        ({"history": True, "history_max_age": timedelta(0)}, "history_max_age", "positive"),
        ({"history": True, "history_max_age": 3600}, "history_max_age", "positive timedelta"),
        ({"history": True, "ttl": timedelta(hours=1)}, "history", "keep no history"),
        ({"history": True, "table": "t" * 60}, "table", "longer than 63"),
    ],
)
def test_bad_history_options_fail_at_load(
    options: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(WiringError) as caught:
        _app(**options)
    assert (caught.value.flow, caught.value.field) == ("count", field)
    assert problem in caught.value.problem


def test_a_history_table_is_claimed_like_a_state_table() -> None:
    with pytest.raises(WiringError, match="'hist_count_state_history' is already used"):
        App(
            "hist",
            [
                StatefulMap(name="count", source=EVENTS, sink=OUT, fn=_count, history=True),
                StatefulMap(
                    name="other",
                    source=EVENTS,
                    sink=OUT,
                    fn=_count,
                    table="hist_count_state_history",
                ),
            ],
        )


def test_windowed_flows_have_no_history_option() -> None:
    with pytest.raises(TypeError):
        Window(  # type: ignore[call-arg]
            name="w",
            source=EVENTS,
            sink=OUT,
            window=Tumbling(timedelta(seconds=1)),
            fn=lambda r, acc: acc,
            history=True,
        )


# --- what a batch records -------------------------------------------------------------------


def test_every_applied_record_is_one_change_in_order() -> None:
    driver = TestDriver(_app(history=True), batch_size=100)
    for value in ({}, {}, {"skip": True}, {"fail": True}, {"delete": True}, {}):
        driver.pipe("events", value, key="k")
    driver.pipe("events", {"delete": True}, key="never")  # absent before and after: no change
    changes = driver.history("count", "k")
    assert [(c["previous"], c["value"]) for c in changes] == [
        (None, 1),
        (1, 2),
        (2, 2),  # applied, state unchanged: still a change of record
        (2, None),  # a deletion; the failed record (dead-lettered) changed nothing
        (None, 1),
    ]
    assert [c["offset"] for c in changes] == [0, 1, 2, 4, 5]
    assert {(c["topic"], c["partition"]) for c in changes} == {("events", 0)}
    assert all(c["timestamp"] == 1_700_000_000_000 for c in changes)
    assert driver.history("count", "never") == []
    assert driver.state("count", "k") == 1


def test_changes_of_one_batch_chain_and_the_stored_state_is_the_last() -> None:
    driver = TestDriver(_app(history=True), batch_size=1000)
    driver.pipe_many("events", [{}] * 50, key="a")
    changes = driver.history("count", "a")
    assert [c["value"] for c in changes] == list(range(1, 51))
    assert all(b["previous"] == a["value"] for a, b in itertools.pairwise(changes))
    assert driver.state("count", "a") == 50


def test_a_join_records_the_source_record() -> None:
    orders = Topic("orders", key_format=STR, value_format=JSON)
    paid = Topic("paid", key_format=STR, value_format=JSON)

    def remember(record: Any, state: Any) -> tuple[None, Any]:
        return None, [*(state or []), record.topic]

    driver = TestDriver(
        App(
            "j",
            [
                Join(
                    name="j",
                    sources={
                        orders: lambda r: r.value["order"],
                        EVENTS: lambda r: r.value["order"],
                    },
                    sink=paid,
                    fn=remember,
                    history=True,
                )
            ],
        )
    )
    driver.pipe("orders", {"order": "o1"}, key="cust-1")
    driver.pipe("events", {"order": "o1"}, key="pay-9")
    changes = driver.history("j", "o1")
    assert [(c["topic"], c["offset"], c["value"]) for c in changes] == [
        ("orders", 0, ["orders"]),
        ("events", 0, ["orders", "events"]),
    ]


def test_keep_trims_each_key_to_its_newest_changes() -> None:
    driver = TestDriver(_app(history=True, history_keep=3), batch_size=2)
    driver.pipe_many("events", [{}] * 10, key="a")
    driver.pipe("events", {}, key="b")
    assert [c["value"] for c in driver.history("count", "a")] == [8, 9, 10]
    assert [c["value"] for c in driver.history("count", "b")] == [1]


def test_max_age_trims_by_the_drivers_clock() -> None:
    driver = TestDriver(_app(history=True, history_max_age=timedelta(hours=1)))
    driver.pipe("events", {}, key="a")
    driver.advance(timedelta(minutes=90))
    driver.pipe("events", {}, key="b")  # its commit removes what is older than an hour
    assert driver.history("count", "a") == []
    assert [c["value"] for c in driver.history("count", "b")] == [1]


def test_an_encrypted_flows_history_is_stored_encrypted_and_read_decrypted() -> None:
    keys = StateKeys.generate("k1")
    driver = TestDriver(_app(history=True, encrypt=True), state_keys=keys)
    driver.pipe_many("events", [{}] * 3, key="secret")
    assert [(c["previous"], c["value"]) for c in driver.history("count", "secret")] == [
        (None, 1),
        (1, 2),
        (2, 3),
    ]
    step = _step(driver.app)
    assert step.history_table is not None
    stored = driver.store.history(step.history_table, b"secret", None, 10)
    values = [e.change.value for e in stored] + [e.change.previous for e in stored[:-1]]
    assert all(v is not None and key_id_of(v) == "k1" for v in values)


def test_history_of_a_flow_without_it_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="keeps no history"):
        TestDriver(_app()).history("count", "a")


@pytest.mark.parametrize(
    "point",
    [
        "db_commit",
        "rebalance_mid_batch",
        "between_commits",
        "kafka_commit",
        "crash_in_kafka_commit",
    ],
)
def test_faults_leave_every_change_exactly_once(point: FaultPoint) -> None:
    driver = TestDriver(_app(history=True), batch_size=7)
    driver.faults.inject(point, "count", times=2)
    for n in range(40):
        driver.pipe("events", {}, key=f"k{n % 3}")
    assert driver.faults.fired, "the fault never fired"
    for key in ("k0", "k1", "k2"):
        changes = driver.history("count", key)
        assert [c["value"] for c in changes] == list(range(1, len(changes) + 1))
        assert [c["previous"] for c in changes] == [None, *range(1, len(changes))]
        offsets = [(c["partition"], c["offset"]) for c in changes]
        assert len(set(offsets)) == len(offsets)
        assert driver.state("count", key) == len(changes)
    assert sum(len(driver.history("count", k)) for k in ("k0", "k1", "k2")) == 40
