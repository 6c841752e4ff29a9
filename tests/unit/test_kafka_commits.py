"""Background commits (runtimes/kafka/commits.py): one in flight, the latest offsets of
each partition queued meanwhile, failures that pass retried, others raised by the next
call. A stand-in for confluent-kafka's consumer records what would be sent."""

from __future__ import annotations

from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaTopicPartition

from flows.broker import TopicPartition
from flows.errors import BrokerError
from runtimes.kafka import commits
from runtimes.kafka.commits import BackgroundCommits

A, B = ("t", 0), ("t", 1)


class Sent:
    """Records the asynchronous commits confluent-kafka would send."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    def commit(self, offsets: list[KafkaTopicPartition], asynchronous: bool) -> None:
        assert asynchronous
        self.commits.append({(p.topic, p.partition): p.offset for p in offsets})


def _commits(
    held: list[TopicPartition], now: list[float] | None = None
) -> tuple[BackgroundCommits, Sent]:
    sent = Sent()
    clock = now or [0.0]
    background = BackgroundCommits("test", lambda: held, lambda: clock[0])
    background.consumer = cast(Consumer, sent)
    return background, sent


def _answer(
    background: BackgroundCommits, offsets: dict[TopicPartition, int], code: int | None = None
) -> None:
    error = KafkaError(code) if code is not None else None
    background.done(error, [KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()])


def test_one_commit_in_flight_and_the_latest_offsets_queued() -> None:
    background, sent = _commits([A, B])
    background.add({A: 3})
    background.add({A: 5, B: 1})
    background.add({A: 7})
    assert sent.commits == [{A: 3}]
    _answer(background, {A: 3})
    background.send()  # what the next poll does
    assert sent.commits == [{A: 3}, {A: 7, B: 1}]


def test_a_commit_refused_by_a_rebalance_goes_again_for_the_partitions_still_held() -> None:
    now = [100.0]
    background, sent = _commits([A], now)  # B was revoked meanwhile
    background.add({A: 3, B: 4})
    _answer(background, {A: 3, B: 4}, KafkaError.REBALANCE_IN_PROGRESS)
    background.send()
    assert sent.commits == [{A: 3, B: 4}], "a retry waits a moment"
    now[0] += commits.RETRY_AFTER_S
    background.send()
    assert sent.commits == [{A: 3, B: 4}, {A: 3}]


def test_newer_offsets_win_over_a_failed_commits_and_go_at_once() -> None:
    background, sent = _commits([A])
    background.add({A: 3})
    _answer(background, {A: 3}, KafkaError.COORDINATOR_NOT_AVAILABLE)
    background.add({A: 9})
    assert sent.commits == [{A: 3}, {A: 9}]


def test_a_commit_that_cannot_pass_is_raised_by_the_next_call() -> None:
    background, sent = _commits([A])
    background.add({A: 3})
    _answer(background, {A: 3}, KafkaError.GROUP_AUTHORIZATION_FAILED)
    with pytest.raises(BrokerError, match="GROUP_AUTHORIZATION_FAILED"):
        background.add({A: 4})
    background.add({A: 5})  # raised once; the queue goes on
    assert sent.commits == [{A: 3}, {A: 5}]


def test_revoked_and_closing_consumers_take_what_is_queued() -> None:
    background, _ = _commits([A, B])
    background.add({A: 1})
    background.add({A: 2, B: 2})
    assert background.take([B]) == {B: 2}
    assert background.take_all() == {A: 2}
    assert background.take_all() == {}


def test_no_offset_is_no_failure() -> None:
    background, sent = _commits([A])
    background.add({A: 3})
    _answer(background, {A: 3}, KafkaError._NO_OFFSET)
    background.add({A: 4})
    assert sent.commits == [{A: 3}, {A: 4}]
