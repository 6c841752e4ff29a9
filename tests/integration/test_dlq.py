"""`flows dlq`: dead letters listed by flow and error type, and replayed exactly once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import TopicFactory, UniqueFn
from tests.helpers import consume_all, flows_env, produce, run_cli, write_app

# Two flows read one source, so their dead letters share one DLQ topic: a replay of one
# flow must skip the other's.
APP = """
from flows import STR, App, Map, Topic

source = Topic("{source}", value_format=STR, partitions=2)
loud = Topic("{loud}", value_format=STR, partitions=2)
quiet = Topic("{quiet}", value_format=STR, partitions=2)


def shout(record):
    if record.value == "boom":
        raise ValueError("boom is not allowed")
    return record.value.upper()


def whisper(record):
    if record.value == "kaput":
        raise LookupError("kaput is not a word")
    return record.value.lower()


app = App("{name}", [
    Map(name="shout", source=source, sink=loud, fn=shout),
    Map(name="whisper", source=source, sink=quiet, fn=whisper),
])
"""

NOT_UTF8 = [b"\xff\xfe one", b"\xc3\x28 two"]


def _json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_dead_letters_are_listed_and_replayed_exactly_once(
    tmp_path: Path,
    unique: UniqueFn,
    topic_factory: TopicFactory,
    bootstrap_servers: str,
    database_url: str,
) -> None:
    source = topic_factory("dlq-in", partitions=2)
    name = unique("dlqapp")
    path = write_app(
        tmp_path / "app.py",
        APP.format(source=source, loud=unique("loud"), quiet=unique("quiet"), name=name),
    )
    env = flows_env(bootstrap_servers, database_url)
    values = [b"ok", b"boom", b"boom", b"boom", b"kaput", *NOT_UTF8]
    produce(bootstrap_servers, source, ((f"k{i}".encode(), v) for i, v in enumerate(values)))
    ran = run_cli(["run", str(path), "--until-idle", "2"], env)
    assert ran.returncode == 0, ran.stderr

    listed = _json(run_cli(["dlq", str(path), "--json"], env))
    counts = {(g["flow"], g["error_type"]): g["count"] for g in listed["groups"]}
    assert counts == {
        ("shout", "ValueError"): 3,
        ("shout", "DecodeError"): 2,
        ("whisper", "DecodeError"): 2,
        ("whisper", "LookupError"): 1,
    }
    assert all(g["replayed"] == 0 for g in listed["groups"])
    assert listed["total"] == 8 and listed["topics"] == [f"{source}.dlq"]
    (boom,) = [g for g in listed["groups"] if g["error_type"] == "ValueError"]
    sample = boom["samples"][0]
    assert sample["source_topic"] == source and sample["attempts"] == 1
    assert "boom is not allowed" in sample["message"] and sample["key"].startswith("k")

    # a filtered replay sends the one error type, and its group is that error type's alone
    first = _json(
        run_cli(["dlq", "replay", str(path), "shout", "--error-type", "ValueError", "--json"], env)
    )
    assert [(r["error_type"], r["sent"]) for r in first["replays"]] == [("ValueError", {source: 3})]
    assert first["replays"][0]["group"] == f"{name}.dlq-replay.shout.ValueError"
    # unfiltered: what the filtered replay sent is not sent again, the rest is
    second = _json(run_cli(["dlq", "replay", str(path), "shout", "--json"], env))
    assert {r["error_type"]: r["sent"] for r in second["replays"]} == {
        "DecodeError": {source: 2},
        "ValueError": {},
    }
    # a replay started again sends nothing
    third = _json(run_cli(["dlq", "replay", str(path), "shout", "--json"], env))
    assert all(r["sent"] == {} for r in third["replays"]), third

    relisted = _json(run_cli(["dlq", str(path), "--json"], env))
    assert {(g["flow"], g["error_type"]): g["replayed"] for g in relisted["groups"]} == {
        ("shout", "ValueError"): 3,
        ("shout", "DecodeError"): 2,
        ("whisper", "DecodeError"): 0,
        ("whisper", "LookupError"): 0,
    }

    back = consume_all(bootstrap_servers, source, expected=len(values) + 5)
    originals = {(r.key, r.value) for r in back if not r.headers}
    again = [r for r in back if r.headers]
    assert len(back) == len(values) + 5
    assert originals == {(f"k{i}".encode(), v) for i, v in enumerate(values)}
    # each shout dead letter exactly once more, key and value as they were, attempts 2
    assert Counter((r.key, r.value) for r in again) == Counter(
        (f"k{i}".encode(), v) for i, v in enumerate(values) if v == b"boom" or v in NOT_UTF8
    )
    assert all(r.headers == (("flows.attempts", b"2"),) for r in again)

    # the replayed records fail again: their dead letters say attempts=2
    rerun = run_cli(["run", str(path), "--until-idle", "2"], env)
    assert rerun.returncode == 0, rerun.stderr
    dead = consume_all(bootstrap_servers, f"{source}.dlq", expected=8 + 5 + 2)
    attempts = Counter(
        (h["flows.flow"], h["flows.attempts"]) for h in (dict(d.headers) for d in dead)
    )
    assert attempts == {
        (b"shout", b"1"): 5,
        (b"whisper", b"1"): 3,
        (b"shout", b"2"): 5,  # boom x3 and the two lines that are not UTF-8
        (b"whisper", b"2"): 2,  # the lines that are not UTF-8
    }
    assert all(sum(1 for n, _ in d.headers if n == "flows.attempts") == 1 for d in dead)
