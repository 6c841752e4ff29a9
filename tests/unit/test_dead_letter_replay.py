"""Dead letters read back: parsing, grouping, filters and the replayed record's headers."""

from __future__ import annotations

import pytest

from flows import STR, App, Map, Record, Topic
from flows.dead_letter_replay import (
    FAILURE_HEADERS,
    DeadLetter,
    ReplayFilter,
    parse_since,
    replay_group,
    replayed,
    summarise,
)
from flows.errors import ConfigError
from flows.records import RawRecord
from flows.testing import TestDriver

IN = Topic("in", key_format=STR, value_format=STR)
OUT = Topic("out", key_format=STR, value_format=STR)


def _letter(
    flow: str = "shout",
    error: str = "ValueError",
    offset: int = 0,
    timestamp: int = 1000,
    attempts: bytes = b"1",
    key: bytes | None = b"k",
    own: tuple[tuple[str, bytes], ...] = (("trace", b"t1"),),
) -> RawRecord:
    return RawRecord(
        "in.dlq",
        0,
        offset,
        key,
        b"v",
        (
            *own,
            ("flows.flow", flow.encode()),
            ("flows.error.type", error.encode()),
            ("flows.error.message", b"ValueError: bad\nsecond line"),
            ("flows.source.topic", b"in"),
            ("flows.source.partition", b"2"),
            ("flows.source.offset", str(40 + offset).encode()),
            ("flows.attempts", attempts),
        ),
        timestamp,
    )


def test_a_dead_letter_is_parsed_from_its_headers() -> None:
    letter = DeadLetter.parse(_letter(offset=1))
    assert letter is not None
    assert (letter.flow, letter.error_type, letter.source_topic) == ("shout", "ValueError", "in")
    assert (letter.source_partition, letter.source_offset, letter.attempts) == (2, 41, 1)


def test_a_record_without_flow_or_source_is_not_a_dead_letter() -> None:
    assert DeadLetter.parse(RawRecord("in.dlq", 0, 0, None, b"v", (("x", b"y"),))) is None


def test_replay_keeps_key_value_timestamp_and_own_headers_and_counts_the_attempt() -> None:
    letter = DeadLetter.parse(_letter(attempts=b"2"))
    assert letter is not None
    message = replayed(letter)
    assert (message.topic, message.key, message.value, message.timestamp) == (
        "in",
        b"k",
        b"v",
        1000,
    )
    assert message.headers == (("trace", b"t1"), ("flows.attempts", b"3"))
    assert not {n for n, _ in message.headers if n != "flows.attempts"} & set(FAILURE_HEADERS)


def test_a_replayed_record_that_fails_again_says_attempts_2() -> None:
    def fail(record: Record[str, str]) -> str:
        raise ValueError("still bad")

    driver = TestDriver(App("test", [Map(name="fail", source=IN, sink=OUT, fn=fail)]))
    driver.pipe("in", "a", key="k", headers=(("trace", b"t1"),))
    (first,) = driver.read_all("in.dlq")
    letter = DeadLetter.parse(first)
    assert letter is not None and letter.attempts == 1
    again = replayed(letter)
    driver.pipe("in", "a", key="k", headers=again.headers)
    (_, second) = driver.read_all("in.dlq")
    attempts = [v for n, v in second.headers if n == "flows.attempts"]
    assert attempts == [b"2"]  # replaced, not repeated
    assert ("trace", b"t1") in second.headers


def test_filters_select_flow_error_type_and_time() -> None:
    letters = [
        DeadLetter.parse(_letter(flow="shout", error="ValueError", timestamp=10)),
        DeadLetter.parse(_letter(flow="shout", error="KeyError", timestamp=20)),
        DeadLetter.parse(_letter(flow="other", error="ValueError", timestamp=30)),
    ]
    assert all(letters)
    found = [x for x in letters if x is not None]
    assert [x.error_type for x in found if ReplayFilter("shout").matches(x)] == [
        "ValueError",
        "KeyError",
    ]
    assert [x.record.timestamp for x in found if ReplayFilter("shout", "KeyError").matches(x)] == [
        20
    ]
    assert [x.record.timestamp for x in found if ReplayFilter("shout", since_ms=15).matches(x)] == [
        20
    ]


def test_summarise_groups_by_flow_and_error_type_with_counts_and_samples() -> None:
    records = [_letter(error="ValueError", offset=i) for i in range(5)]
    records += [_letter(flow="other", error="KeyError", offset=9, key=b"\xff")]
    groups = summarise([x for r in records if (x := DeadLetter.parse(r))], samples=2)
    assert [(g.flow, g.error_type, g.count) for g in groups] == [
        ("other", "KeyError", 1),
        ("shout", "ValueError", 5),
    ]
    assert [s.source_offset for s in groups[1].samples] == [40, 41]
    assert groups[1].samples[0].message == "ValueError: bad second line"
    assert groups[0].samples[0].key == "0xff"
    assert groups[1].topics == {"in.dlq": 5}


def test_each_error_type_has_a_replay_group_of_its_own() -> None:
    assert replay_group("wc", "split", "DecodeError") == "wc.dlq-replay.split.DecodeError"
    assert replay_group("wc", "split", "a b/c") == "wc.dlq-replay.split.a_b_c"


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1700000000000", 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
    ],
)
def test_since_takes_milliseconds_or_iso_8601(text: str, ms: int) -> None:
    assert parse_since(text) == ms


def test_a_bad_since_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="--since"):
        parse_since("yesterday")


def test_summarise_counts_what_the_replay_group_read_past_and_samples_what_is_left() -> None:
    records = [_letter(offset=i) for i in range(4)]

    def committed(flow: str, error_type: str) -> dict[tuple[str, int], int]:
        assert (flow, error_type) == ("shout", "ValueError")
        return {("in.dlq", 0): 3}

    (group,) = summarise(
        [x for r in records if (x := DeadLetter.parse(r))], samples=2, committed=committed
    )
    assert (group.count, group.replayed) == (4, 3)
    assert [s.source_offset for s in group.samples] == [43]
