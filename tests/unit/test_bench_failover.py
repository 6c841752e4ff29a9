"""The failover and keyspace cases' pure parts: their inputs, sizes and output checks."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from bench import data
from bench.failover import Watch, expected_outputs
from bench.harness import Options, keyspace_records, variants

OPTIONS = Options(
    seed=1,
    records=10,
    lines=10,
    keys=10,
    partitions=4,
    latency_rate=10,
    latency_seconds=1.0,
    timeout=10.0,
    bootstrap="localhost:9092",
    database_url="postgresql://localhost/flows",
    run_id="r",
    workdir=Path("/nonexistent"),
)


def test_passes_touch_every_key_once_before_any_twice() -> None:
    records = list(data.keyed_passes(7, 25, 10, b"k"))
    keys = [key or b"" for key, _ in records]
    assert len(records) == 25
    assert {value for _, value in records} == {b"k"}
    assert (
        sorted(keys[:10]) == sorted(keys[10:20]) == [data.key_name(i).encode() for i in range(10)]
    )
    assert len(set(keys[20:])) == 5  # a part of the third pass, no key twice in it
    assert keys[:10] != keys[10:20]  # each pass is its own shuffle


def test_passes_are_the_same_for_the_same_seed() -> None:
    assert list(data.keyed_passes(3, 30, 7, b"v")) == list(data.keyed_passes(3, 30, 7, b"v"))
    assert list(data.keyed_passes(3, 30, 7, b"v")) != list(data.keyed_passes(4, 30, 7, b"v"))


def test_fresh_keys_are_distinct_built_keys_and_differ_per_phase() -> None:
    first, second = data.fresh_keys(1, 1, 50, 1000), data.fresh_keys(1, 2, 50, 1000)
    assert len(set(first)) == 50 and all(0 <= k < 1000 for k in first)
    assert first != second
    assert sorted(data.fresh_keys(1, 1, 50, 20)) == list(range(20))  # no more than the keys


def test_a_fresh_output_counts_the_build_and_every_appended_record() -> None:
    appended = Counter({data.key_name(3).encode(): 2, data.key_name(5).encode(): 1})
    assert expected_outputs([3, 5], appended, b"f2") == {b"k0000003": b"3 f2", b"k0000005": b"2 f2"}


def test_the_watch_is_done_once_every_fresh_output_came_right() -> None:
    watch = Watch({b"a": b"2 f1", b"b": b"3 f1"})
    watch.take(b"a", b"2 f1", 10.0)
    assert not watch.done and watch.first_at == 10.0
    watch.take(b"b", b"3 f1", 10.5)
    assert watch.done and (watch.last_at, watch.wrong, watch.problems) == (10.5, 0, [])


def test_the_watch_counts_wrong_counts_repeats_and_strangers() -> None:
    watch = Watch({b"a": b"2 f1", b"b": b"2 f1"})
    watch.take(b"a", b"1 f1", 1.0)  # state lost: counted from scratch
    watch.take(b"a", b"2 f1", 2.0)  # a repeat, even with the right value
    watch.take(b"z", b"2 f1", 3.0)  # not a fresh record's key
    assert watch.wrong == 3
    assert watch.problems == [
        "b'a': b'1 f1' (expected b'2 f1')",
        "b'a': b'2 f1' (a repeat)",
        "b'z': b'2 f1' (not a fresh key)",
    ]
    assert watch.done  # more outputs than expected: waiting longer would not mend it


def test_the_state_cases_run_their_sizes_as_variants() -> None:
    options = replace(OPTIONS, failover_keys=(100, 1000), keyspaces=(5, 50))
    assert variants("failover", options) == ("100", "1000")
    assert variants("keyspace", options) == ("5", "50")
    assert variants("wordcount", options) == ("eos", "eos-table")


def test_a_keyspace_gets_two_passes_at_least() -> None:
    options = replace(OPTIONS, keyspace_records=1_000_000)
    assert keyspace_records(5_000, options) == 1_000_000
    assert keyspace_records(2_000_000, options) == 4_000_000
