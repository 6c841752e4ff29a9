"""``flows status``: the lag a test creates, then caught up, read from Kafka and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import TopicFactory, UniqueFn
from tests.helpers import flows_env, produce, run_cli, write_app

#: a wordcount-like app of its own names: split (stateless), count (stateful), dead letters
APP = """
from flows import JSON, STR, App, Explode, Message, StatefulMap, Topic

lines = Topic("{lines}", value_format=STR, partitions=3)
words = Topic("{words}", key_format=STR, value_format=STR, partitions=2)
counts = Topic("{counts}", key_format=STR, value_format=STR, partitions=2)


def count(record, state):
    total = (state or 0) + 1
    return str(total), total


app = App("{name}", [
    Explode(name="split", source=lines, sink=words, exactly_once=True,
            fn=lambda r: [Message(w, key=w) for w in r.value.split()]),
    StatefulMap(name="count", source=words, sink=counts, fn=count, state_format=JSON),
])
"""


def _status(path: Path, env: dict[str, str]) -> dict[str, Any]:
    result = run_cli(["status", str(path), "--json"], env, timeout=60)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _flow(document: dict[str, Any], step: str) -> dict[str, Any]:
    [flow] = [f for f in document["flows"] if f["step"] == step]
    found: dict[str, Any] = flow
    return found


def test_status_shows_the_lag_then_a_caught_up_stateful_flow(
    tmp_path: Path,
    unique: UniqueFn,
    topic_factory: TopicFactory,
    bootstrap_servers: str,
    database_url: str,
) -> None:
    names = {k: unique(k) for k in ("words", "counts", "name")}
    names["lines"] = topic_factory("lines", partitions=3)
    path = write_app(tmp_path / "app.py", APP.format(**names))
    env = flows_env(bootstrap_servers, database_url)

    # no worker has run: the input topic exists, the rest is missing and shown as such
    before = _status(path, env)
    split = _flow(before, "split")
    assert split["group_state"] == "missing" and split["members"] == []
    assert [(p["partition"], p["lag"]) for p in split["partitions"]] == [(0, 0), (1, 0), (2, 0)]
    assert split["dead_letters"] == {f"{names['lines']}.dlq": None}
    count = _flow(before, "count")
    assert [p["partition"] for p in count["partitions"]] == [-1]  # words: no such topic
    assert count["state_rows"] is None and count["state_note"] == "missing"

    # records produced, still no worker: the lag is what was produced, per partition
    lines = [f"w{i % 7} w{i % 3}".encode() for i in range(60)]
    keyed = [(f"k{i}".encode(), line) for i, line in enumerate(lines)]
    produce(bootstrap_servers, names["lines"], keyed)
    produce(bootstrap_servers, names["lines"], [(b"bad", b"\xff\xfe not utf-8")])
    behind = _flow(_status(path, env), "split")
    assert {p["partition"]: p["lag"] for p in behind["partitions"]} == {
        p["partition"]: p["high"] for p in behind["partitions"]
    }
    assert sum(p["lag"] for p in behind["partitions"]) == len(lines) + 1
    assert all(p["lag"] > 0 for p in behind["partitions"])  # keys spread over all three
    assert all(p["committed"] is None for p in behind["partitions"])

    done = run_cli(["run", str(path), "--until-idle", "2"], env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    after = _status(path, env)
    split = _flow(after, "split")
    assert split["lag"] == 0 and split["group_state"] in ("empty", "stable")
    assert split["dead_letters"] == {f"{names['lines']}.dlq": 2}  # a record and its marker
    count = _flow(after, "count")
    assert count["keeps_watermarks"] and count["lag"] == 0
    assert count["state_rows"] == 7  # one state row per distinct word, w0..w6
    partitions = count["partitions"]
    assert [p["partition"] for p in partitions] == [0, 1]
    for p in partitions:
        assert p["committed"] == p["watermark"] and p["flag"] == ""
        assert p["committed"] is not None and p["committed"] > 0
