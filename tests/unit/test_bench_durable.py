"""The durable wordcount ceiling's pure parts: recovery decisions, pending outputs, the fold."""

from __future__ import annotations

import pytest

from bench.systems.durable import (
    DatabaseBehindError,
    decode_outputs,
    encode_outputs,
    fold,
    recovery,
)


def test_nothing_is_re_emitted_when_kafka_and_postgresql_agree() -> None:
    assert recovery(committed=120, watermark=120) is None


def test_batches_postgresql_committed_alone_are_re_emitted_from_kafkas_offset() -> None:
    assert recovery(committed=100, watermark=130) == 100


def test_kafka_ahead_of_postgresql_stops_with_both_offsets() -> None:
    with pytest.raises(DatabaseBehindError, match=r"offset 140 .* watermark 130"):
        recovery(committed=140, watermark=130)


@pytest.mark.parametrize(
    "outputs",
    [
        [(b"apple", b"1"), (b"pear", b"1"), (b"apple", b"2")],
        [(b"\xc3\xa9t\xc3\xa9", b"12")],  # a non-ASCII word, as UTF-8
        [],
    ],
    ids=["several", "utf-8", "empty"],
)
def test_pending_outputs_round_trip(outputs: list[tuple[bytes, bytes]]) -> None:
    assert decode_outputs(encode_outputs(outputs)) == outputs


def test_the_fold_counts_on_from_the_stored_count_in_order() -> None:
    stored = {"apple": 4, "pear": 0}
    changed: dict[str, int] = {}
    outputs = fold(["apple", "pear", "apple"], stored.__getitem__, changed)
    assert outputs == [(b"apple", b"5"), (b"pear", b"1"), (b"apple", b"6")]
    assert changed == {"apple": 6, "pear": 1}
    assert stored == {"apple": 4, "pear": 0}  # memory changes only after both commits


def test_the_keyed_fold_puts_each_inputs_value_after_its_count() -> None:
    changed: dict[str, int] = {}
    outputs = fold(["k1", "k2", "k1"], {"k1": 1, "k2": 0}.__getitem__, changed, [b"a", b"b", b"c"])
    assert outputs == [(b"k1", b"2 a"), (b"k2", b"1 b"), (b"k1", b"3 c")]
