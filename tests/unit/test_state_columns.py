"""How a stateful flow's formats decide its table's columns, and what the core refuses so
that a text key or a JSONB value never reaches the store unfit (no services)."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from flows import BYTES, JSON, STR, App, FlowFailedError, Record, StatefulMap, Topic, protobuf
from flows._proto.flows_envelope_pb2 import Envelope
from flows.formats import jsonb_problem
from flows.ports import BYTES_COLUMNS, StateColumns
from flows.steps import StatefulStep
from flows.testing import TestDriver

IN = Topic("in", key_format=STR, value_format=STR)
OUT = Topic("out", key_format=STR, value_format=STR)


def count(record: Record[str, str], state: int | None) -> tuple[str, int]:
    total = (state or 0) + 1
    return str(total), total


def _step(app: App, flow: str) -> StatefulStep:
    return next(s for s in app.steps if isinstance(s, StatefulStep) and s.flow == flow)


def test_formats_decide_the_columns() -> None:
    by_json_key = Topic("j", key_format=JSON, value_format=JSON)
    by_bytes = Topic("b", key_format=BYTES, value_format=BYTES)
    app = App(
        "cols",
        [
            StatefulMap(name="counts", source=IN, sink=OUT, fn=count),
            StatefulMap(name="jkeys", source=by_json_key, sink=OUT, fn=count),
            StatefulMap(name="raw", source=by_bytes, sink=OUT, fn=count),
            StatefulMap(
                name="proto", source=IN, sink=OUT, fn=count, state_format=protobuf(Envelope)
            ),
            StatefulMap(name="text", source=IN, sink=OUT, fn=count, state_format=STR),
            # re-keyed: the intermediate topic's key format, the flow's key_format
            StatefulMap(
                name="rekeyed", source=by_bytes, sink=OUT, fn=count, state_key=lambda r: "k"
            ),
            # timers or a TTL: a window table, bytes whatever the formats
            StatefulMap(name="ttl", source=IN, sink=OUT, fn=count, ttl=timedelta(minutes=1)),
        ],
    )
    assert {flow: _step(app, flow).columns for flow in ("counts", "jkeys", "raw")} == {
        "counts": StateColumns("text", "json"),
        "jkeys": StateColumns("text", "json"),
        "raw": StateColumns("bytes", "json"),
    }
    assert _step(app, "proto").columns == StateColumns("text", "bytes")
    assert _step(app, "text").columns == StateColumns("text", "bytes")
    assert _step(app, "rekeyed").columns == StateColumns("text", "json")
    assert _step(app, "ttl").columns == BYTES_COLUMNS


def test_the_store_is_asked_for_the_flows_columns() -> None:
    driver = TestDriver(App("cols", [StatefulMap(name="counts", source=IN, sink=OUT, fn=count)]))
    driver.pipe("in", "x", key="k")
    assert driver.store.columns == {"cols_counts_state": StateColumns("text", "json")}


def test_a_key_with_a_nul_character_is_dead_lettered_and_the_flow_goes_on() -> None:
    driver = TestDriver(App("nul", [StatefulMap(name="counts", source=IN, sink=OUT, fn=count)]))
    driver.pipe("in", "x", key="a\x00b")
    driver.pipe("in", "y", key="ab")
    assert [r.value for r in driver.read("out")] == ["1"]
    (dead,) = driver.read("in.dlq")
    message = dead.header("flows.error.message") or b""
    assert b"NUL character" in message and b"nul_counts_state" in message
    assert driver.state("counts", "ab") == 1


def test_bytes_keys_may_hold_nul() -> None:
    raw = Topic("raw", key_format=BYTES, value_format=BYTES)
    out = Topic("raw-out", key_format=BYTES, value_format=STR)
    driver = TestDriver(App("nul", [StatefulMap(name="counts", source=raw, sink=out, fn=count)]))
    driver.pipe_raw("raw", b"x", key=b"a\x00b")
    assert driver.state("counts", b"a\x00b") == 1


@pytest.mark.parametrize(
    "state",
    [math.nan, {"mean": math.inf}, [-math.inf], {"name": "a\x00b"}, {"k\x00": 1}],
    ids=["nan", "inf", "-inf", "nul", "nul-key"],
)
def test_a_json_state_that_jsonb_cannot_hold_stops_the_flow(state: Any) -> None:
    def keep(record: Record[str, str], _: Any) -> tuple[None, Any]:
        return None, state

    driver = TestDriver(App("bad", [StatefulMap(name="keep", source=IN, sink=OUT, fn=keep)]))
    with pytest.raises(FlowFailedError, match="cannot be stored as JSON in table 'bad_keep_state'"):
        driver.pipe("in", "x", key="k")
    assert driver.state("keep", "k") is None


def test_jsonb_problem_looks_closer_only_when_it_must() -> None:
    assert jsonb_problem(b'{"a":[1,2.5,"NaN","Infinity","\\\\u0000"]}') is None
    assert jsonb_problem(b"NaN") is not None
    assert jsonb_problem(b'{"a":[-Infinity]}') is not None
    assert jsonb_problem(b'["\\u0000"]') is not None
    assert jsonb_problem(b'{"\\u0000":1}') is not None


def test_versions_name_the_last_record_of_each_key() -> None:
    driver = TestDriver(App("v", [StatefulMap(name="counts", source=IN, sink=OUT, fn=count)]))
    for key in ("a", "b", "a"):
        driver.pipe("in", "x", key=key)
    last = {raw.key: f"{raw.partition}-{raw.offset}" for raw in driver.read_all("in")}
    table = driver.store.versions["v_counts_state"]
    assert table == last
    stored = driver.store.state("v_counts_state", b"a")
    assert stored is not None and stored.version == table[b"a"]
