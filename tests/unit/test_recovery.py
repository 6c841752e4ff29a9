"""Every recovery branch of the exactly-once protocol, through the test driver.

The driver runs the engine's own worker loop over the in-memory broker and store; faults
break it at named points (``flows.testing.faults``). Each test checks that the fault
actually fired, and that a ``read_committed`` reader sees every output exactly once.
"""

from __future__ import annotations

import collections
import logging

import pytest

from examples.wordcount.app import app as wordcount
from flows.errors import FlowFailedError, OffsetsAheadError
from flows.testing import TestDriver
from flows.testing.faults import FaultPoint

TEXT = ["the cat and the hat", "the end of the cat", "a hat a cat a bat"]


def expected_outputs(lines: list[str]) -> list[tuple[str, str]]:
    """(word, running count) in input order, computed independently of flows."""
    seen: collections.Counter[str] = collections.Counter()
    out = []
    for line in lines:
        for word in line.split():
            seen[word] += 1
            out.append((word, str(seen[word])))
    return out


def outputs(driver: TestDriver) -> list[tuple[str, str]]:
    return [(r.key, r.value) for r in driver.read("word-count-output")]


def per_word(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = collections.defaultdict(list)
    for word, value in pairs:
        found[word].append(value)
    return dict(found)


def run_text(driver: TestDriver) -> None:
    for line in TEXT:
        driver.pipe("word-count-input", line)


def assert_exact(driver: TestDriver) -> None:
    assert per_word(outputs(driver)) == per_word(expected_outputs(TEXT))
    counts = collections.Counter(w for line in TEXT for w in line.split())
    assert driver.states("count") == dict(counts)
    assert {r["word"]: r["count"] for r in driver.rows("store")} == dict(counts)


def test_without_faults_the_counts_and_outputs_are_exact() -> None:
    driver = TestDriver(wordcount)
    run_text(driver)
    assert_exact(driver)
    assert driver.faults.fired == [] and driver.replaced == []


@pytest.mark.parametrize("point", ["between_commits", "crash_in_kafka_commit"])
def test_a_kill_after_the_database_commit_re_emits_the_stored_outputs_once(
    point: FaultPoint, caplog: pytest.LogCaptureFixture
) -> None:
    driver = TestDriver(wordcount)
    driver.faults.inject(point, flow="count")
    with caplog.at_level(logging.INFO, logger="flows.worker"):
        run_text(driver)
    assert driver.faults.fired == [(point, "count")]
    assert [w.step.name for w in driver.replaced] == ["count"]  # the worker died
    reemitted = [r.getMessage() for r in caplog.records if "re-emits" in r.getMessage()]
    assert len(reemitted) == 1 and "re-emits 5 stored outputs" in reemitted[0]
    assert_exact(driver)


def test_a_failed_kafka_commit_is_re_emitted_by_the_same_worker() -> None:
    driver = TestDriver(wordcount)
    driver.faults.inject("kafka_commit", flow="count", times=2)
    run_text(driver)
    assert driver.faults.fired == [("kafka_commit", "count")] * 2
    assert driver.replaced == []  # retried with fresh clients, not killed
    assert_exact(driver)


def test_a_failed_database_commit_is_retried_and_applied_once() -> None:
    driver = TestDriver(wordcount)
    driver.faults.inject("db_commit", flow="count", times=3)
    run_text(driver)
    assert driver.faults.fired == [("db_commit", "count")] * 3
    assert_exact(driver)


def test_a_zombie_is_fenced_by_the_watermark_and_the_new_owner_stays_exact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = TestDriver(wordcount)
    driver.pipe("word-count-input", TEXT[0])
    driver.faults.inject("rebalance_mid_batch", flow="count")
    with caplog.at_level(logging.WARNING, logger="flows.worker"):
        for line in TEXT[1:]:
            driver.pipe("word-count-input", line)
    assert driver.faults.fired == [("rebalance_mid_batch", "count")]
    fenced = [r for r in caplog.records if "lost a partition to another worker" in r.message]
    assert fenced and "watermark" in fenced[0].getMessage()  # refused by PostgreSQL
    assert len([w for w in driver.workers if w.step.name == "count"]) == 2
    group = next(s.group_id for s in driver.steps if s.name == "count")
    members = driver.broker.members(group)
    assert len(members) == 2  # the successor, and the zombie that rejoined
    held = [driver.broker.assignment(group, m) for m in members]
    assert not held[0] & held[1] and len(held[0] | held[1]) == driver.broker.partitions(
        "word-count-words"
    )
    taken = [m for g, m, what, _ in driver.broker.rebalances if g == group and what == "assigned"]
    assert len(set(taken)) == 3  # the first worker, its successor, the zombie once rejoined
    assert_exact(driver)


def test_a_kill_while_outputs_are_owed_leaves_them_to_the_next_owner() -> None:
    driver = TestDriver(wordcount)
    driver.faults.inject("kafka_commit", flow="count")
    driver.faults.inject("between_commits", flow="count")
    run_text(driver)
    driver.crash()  # every worker killed where it stands and restarted
    driver.pipe("word-count-input", "")
    assert_exact(driver)


def test_a_database_behind_kafka_stops_the_flow_with_offsets_ahead() -> None:
    driver = TestDriver(wordcount)
    run_text(driver)
    count = next(s for s in driver.steps if s.name == "count")
    moved = {k: v for k, v in driver.store.watermarks.items() if k[0] == count.group_id and v}
    for where in moved:  # the database restored from a backup older than Kafka's offsets
        driver.store.watermarks[where] = 0
    driver.crash("count")
    with pytest.raises(OffsetsAheadError, match="ahead of PostgreSQL's watermark"):
        driver.pipe("word-count-input", "more words")


def test_a_step_that_is_fenced_forever_fails_after_its_retries() -> None:
    driver = TestDriver(wordcount)
    driver.faults.inject("db_commit", flow="count", times=1000)
    with pytest.raises(FlowFailedError, match="'count' failed 11 times"):
        run_text(driver)
