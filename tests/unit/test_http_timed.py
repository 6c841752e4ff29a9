"""State queries of windowed flows and of stateful flows with timers and a TTL, answered
from the driver's in-memory store by the HTTP API (no socket needed)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from flows import JSON, STR, App, StatefulMap, Topic, Tumbling, Window, schedule_timer
from flows.records import Record
from flows.testing import TestDriver
from runtimes.http import HttpApi
from runtimes.metrics import PrometheusMetrics
from tests.unit.test_http_unit import FakeBroker

MINUTE = 60_000


def remember(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
    schedule_timer("nudge", after=timedelta(minutes=5), data={"why": "idle"})
    return None, record.value


def app() -> App:
    events = Topic("events", key_format=STR, value_format=JSON, partitions=1)
    out = Topic("out", key_format=STR, value_format=JSON, partitions=1)
    return App(
        "q",
        [
            Window(
                name="per-minute",
                source=events,
                sink=out,
                window=Tumbling(timedelta(minutes=1)),
                timestamp=lambda r: r.value["ts"],
                initial=lambda: 0,
                fn=lambda r, acc: acc + 1,
            ),
            StatefulMap(
                name="last",
                source=events,
                sink=out,
                fn=remember,
                on_timer=lambda key, state, timer: (None, state),
                timestamp=lambda r: r.value["ts"],
                ttl=timedelta(minutes=10),
            ),
        ],
        topics=[events, out],
    )


def query(driver: TestDriver, path: str) -> tuple[int, Any]:
    api = HttpApi(
        driver.app, (), metrics=PrometheusMetrics(), broker=FakeBroker(), query_store=driver.store
    )
    answer = api.state(path, "")
    return answer.status, json.loads(answer.body)


def test_a_windowed_flow_answers_a_keys_open_windows() -> None:
    driver = TestDriver(app())
    for ts in (1_000, 2_000, 61_000):  # the last closes the first minute (no grace)
        driver.pipe("events", {"ts": ts}, key="ann")
    status, body = query(driver, "/state/per-minute/ann")
    assert status == 200
    assert body == {
        "flow": "per-minute",
        "key": "ann",
        "windows": [
            {"start": 60_000, "end": 120_000, "value": 1, "partition": 0},
        ],
    }
    assert query(driver, "/state/per-minute/bob")[0] == 404
    assert query(driver, "/state/per-minute")[0] == 400  # no listing of every key


def test_a_timed_flow_answers_state_and_timers_and_hides_expired_states() -> None:
    driver = TestDriver(app())
    driver.pipe("events", {"ts": 0, "v": 1}, key="ann")
    status, body = query(driver, "/state/last/ann")
    assert status == 200
    assert body == {
        "flow": "last",
        "key": "ann",
        "state": {"ts": 0, "v": 1},
        "timers": [{"name": "nudge", "due": 5 * MINUTE, "clock": "event", "data": {"why": "idle"}}],
    }
    driver.pipe("events", {"ts": 11 * MINUTE}, key="bob")  # ann's TTL and timer have run out
    assert query(driver, "/state/last/ann")[0] == 404
    assert query(driver, "/state/last/bob")[1]["state"] == {"ts": 11 * MINUTE}
