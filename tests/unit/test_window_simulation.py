"""The end-to-end window simulation (tests/window_simulation.py): small cases worked out by
hand from the contract, and a cross-check with the brute-force reference
(tests/window_reference.py) on seeded random streams, for what both compute."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from tests import window_reference as ref
from tests.window_simulation import (
    Emitted,
    HoppingWindows,
    Incoming,
    Kind,
    SessionWindows,
    Spec,
    TumblingWindows,
    simulate,
    simulate_partition,
)


def records(*rows: tuple[str, int] | tuple[str, int, Any]) -> list[Incoming]:
    """``(key, ts[, value])`` rows at offsets 0, 1, 2, ..."""
    return [
        Incoming(offset, row[0].encode(), row[1], row[2] if len(row) > 2 else None)
        for offset, row in enumerate(rows)
    ]


def counting(kind: Kind, grace: int = 0, emit: Any = "final") -> Spec:
    return Spec(kind, lambda: 0, lambda r, acc: acc + 1, grace, emit)


def summing(kind: Kind, grace: int = 0) -> Spec:
    return Spec(kind, lambda: 0, lambda r, acc: acc + r.value, grace)


def out(key: str, start: int, end: int, value: Any) -> Emitted:
    return Emitted(key.encode(), start, end, value)


# --- tumbling ------------------------------------------------------------------------------


def test_tumbling_closes_on_stream_time_and_drops_late_records() -> None:
    result = simulate_partition(
        counting(TumblingWindows(10)),
        records(("a", 1), ("a", 5), ("b", 12), ("a", 9), ("a", 15), ("b", 25)),
    )
    # b@12 moves st to 12 and closes a[0,10); a@9 falls into that closed window: late
    assert [r.offset for r in result.late] == [3]
    assert result.emitted == [
        out("a", 0, 10, 2),
        out("a", 10, 20, 1),  # closed by b@25 with b[10,20): same close time, key order
        out("b", 10, 20, 1),
        out("b", 20, 30, 1),  # left open at the end: emitted by the finish
    ]


def test_tumbling_grace_accepts_out_of_order_records_until_end_plus_grace() -> None:
    result = simulate_partition(
        counting(TumblingWindows(10), grace=5),
        records(("a", 1), ("a", 12), ("a", 8), ("a", 16), ("a", 3), ("a", 19)),
    )
    # a@8 comes at st 12 < 15 (close of [0,10)): accepted; a@16 closes it; a@3 is late
    assert [r.offset for r in result.late] == [4]
    assert result.emitted == [out("a", 0, 10, 2), out("a", 10, 20, 3)]


def test_a_late_record_changes_nothing() -> None:
    # c@1 is late at st 20 (its window [0,10) closed at 10): no window of c ever appears
    result = simulate_partition(
        counting(TumblingWindows(10)),
        records(("a", 20), ("c", 1), ("b", 25), ("b", 29)),
    )
    assert [r.offset for r in result.late] == [1]
    assert result.emitted == [out("a", 20, 30, 1), out("b", 20, 30, 2)]


def test_windows_closing_together_come_out_by_close_time_then_key_then_start() -> None:
    result = simulate_partition(
        counting(TumblingWindows(10), grace=20),
        records(("z", 5), ("a", 15), ("b", 1), ("a", 2), ("c", 100)),
    )
    # c@100 closes z[0,10), a[0,10), b[0,10) (close 30) and a[10,20) (close 40) at once
    assert result.emitted == [
        out("a", 0, 10, 1),
        out("b", 0, 10, 1),
        out("z", 0, 10, 1),
        out("a", 10, 20, 1),
        out("c", 100, 110, 1),
    ]
    assert result.late == []


def test_the_first_record_is_never_late() -> None:
    result = simulate_partition(counting(TumblingWindows(10)), records(("a", 0)))
    assert result.emitted == [out("a", 0, 10, 1)]


# --- hopping -------------------------------------------------------------------------------


def test_hopping_folds_into_open_windows_only_and_is_late_when_all_are_closed() -> None:
    result = simulate_partition(
        summing(HoppingWindows(10, 5)),
        records(("a", 12, 1), ("a", 17, 2), ("a", 14, 4), ("a", 21, 8), ("a", 13, 16)),
    )
    # a@14 is in [5,15) (closed at st 17) and [10,20) (open): folded into [10,20) only;
    # a@13 comes at st 21, when both its windows have closed: late
    assert [r.offset for r in result.late] == [4]
    assert result.emitted == [
        out("a", 5, 15, 1),
        out("a", 10, 20, 1 + 2 + 4),
        out("a", 15, 25, 2 + 8),
        out("a", 20, 30, 8),
    ]


def test_hopping_size_not_a_multiple_of_hop() -> None:
    # size 10, hop 4: ts 9 is in [0,10) and [4,14) and [8,18)
    result = simulate_partition(counting(HoppingWindows(10, 4)), records(("a", 9)))
    assert result.emitted == [out("a", 0, 10, 1), out("a", 4, 14, 1), out("a", 8, 18, 1)]


def test_hopping_update_emits_changed_windows_in_order_of_start() -> None:
    result = simulate_partition(
        counting(HoppingWindows(10, 5), emit="update"),
        records(("a", 12), ("a", 17)),
    )
    assert result.emitted == [
        out("a", 5, 15, 1),
        out("a", 10, 20, 1),
        out("a", 10, 20, 2),  # a@17 closed [5,15) (no output in update mode) after these
        out("a", 15, 25, 1),
    ]


# --- sessions ------------------------------------------------------------------------------


def test_sessions_grow_split_and_drop_records_out_of_reach() -> None:
    result = simulate_partition(
        counting(SessionWindows(10)),
        records(("a", 100), ("a", 105), ("a", 130), ("a", 120), ("a", 50), ("a", 145)),
    )
    # a@130 is beyond 105 + 10: a new session, and st 130 closes [100,105] (close 115);
    # a@120 reaches [130,130] (130 - 10 <= 120); a@50 reaches nothing and 60 <= 130: late
    assert [r.offset for r in result.late] == [4]
    assert result.emitted == [out("a", 100, 105, 2), out("a", 120, 130, 2), out("a", 145, 145, 1)]


def test_a_record_in_reach_of_two_sessions_merges_them() -> None:
    result = simulate_partition(
        Spec(SessionWindows(10), list, lambda r, acc: [*acc, r.offset], grace=25),
        records(("b", 200), ("b", 220), ("b", 210), ("b", 300)),
    )
    # [200,200] and [220,220] are 20 apart (> gap): two sessions; b@210 reaches both. The
    # merged aggregate is the fold of all three records in offset order.
    assert result.emitted == [out("b", 200, 220, [0, 1, 2]), out("b", 300, 300, [3])]
    assert result.late == []


def test_a_session_record_in_reach_of_an_open_session_is_not_late() -> None:
    # st 150 after b@150; a@95 is 95 + 10 + 0 <= 150, but a's session [100,100] is still
    # open (close 100 + 10 + 50 = 160) and in reach: accepted, the session becomes [95,100]
    result = simulate_partition(
        counting(SessionWindows(10), grace=50),
        records(("a", 100), ("b", 150), ("a", 95), ("a", 80)),
    )
    assert [r.offset for r in result.late] == [3]  # a@80 reaches nothing: 80 + 60 <= 150
    assert result.emitted == [out("a", 95, 100, 2), out("b", 150, 150, 1)]


def test_session_update_emits_the_merged_session() -> None:
    result = simulate_partition(
        counting(SessionWindows(10), grace=20, emit="update"),
        records(("a", 100), ("a", 120), ("a", 110)),
    )
    assert result.emitted == [
        out("a", 100, 100, 1),
        out("a", 120, 120, 1),
        out("a", 100, 120, 3),
    ]


def test_a_session_may_reach_back_over_a_session_already_emitted() -> None:
    # Per the contract, only open sessions are in reach, and a record in reach of one is
    # never late. b@111 closes a[100,100] (close 110); a@105 is not late (115 > 111) and
    # starts a new session; a@96 reaches it (105 - 10 <= 96) and stretches it back over the
    # emitted [100,100]. So a key's sessions come out in order of close time, not of start.
    result = simulate_partition(
        counting(SessionWindows(10)),
        records(("a", 100), ("b", 111), ("a", 105), ("a", 96)),
    )
    assert result.late == []
    assert result.emitted == [out("a", 100, 100, 1), out("a", 96, 105, 2), out("b", 111, 111, 1)]


def test_partitions_are_independent() -> None:
    outcome = simulate(
        counting(TumblingWindows(10)),
        {1: records(("a", 100)), 0: records(("a", 5), ("a", 3))},
    )
    assert list(outcome) == [0, 1]
    assert outcome[0].emitted == [out("a", 0, 10, 2)]  # partition 1's st does not reach it
    assert outcome[1].emitted == [out("a", 100, 110, 1)]


def test_offsets_must_increase() -> None:
    with pytest.raises(ValueError, match="offset"):
        simulate_partition(
            counting(TumblingWindows(10)), [Incoming(3, b"a", 1), Incoming(3, b"a", 2)]
        )


# --- against the brute-force reference ----------------------------------------------------


def random_stream(rng: random.Random, n: int, keys: int) -> list[Incoming]:
    """Mostly increasing timestamps with jitter, some far behind (late), a few repeats."""
    clock = 1_000
    rows = []
    for offset in range(n):
        clock += rng.choice([0, 0, 1, 2, 3, 5, 8, 13])
        behind = rng.choice([0, 0, 0, 1, 3, 6, 10, 15, 25, 40])
        rows.append(Incoming(offset, f"k{rng.randrange(keys)}".encode(), clock - behind, offset))
    return rows


def as_reference(stream: Sequence[Incoming]) -> list[ref.Rec]:
    return [(r.key, r.timestamp, r.value) for r in stream]


def finals(emitted: list[Emitted]) -> dict[tuple[Any, int, int], Any]:
    found: dict[tuple[Any, int, int], Any] = {}
    for e in emitted:
        assert (e.key, e.start, e.end) not in found, f"{e} emitted twice"
        found[(e.key, e.start, e.end)] = e.value
    return found


def in_order_per_key(emitted: list[Emitted], sessions: bool) -> bool:
    """Each key's windows come out in order of start (sessions: of end, see above)."""
    last: dict[bytes, int] = {}
    for e in emitted:
        at = e.end if sessions else e.start
        if at <= last.get(e.key, at - 1):
            return False
        last[e.key] = at
    return True


CASES: list[tuple[Kind, int]] = [
    (TumblingWindows(10), 0),
    (TumblingWindows(10), 7),
    (TumblingWindows(25), 3),
    (HoppingWindows(20, 5), 0),
    (HoppingWindows(20, 5), 6),
    (HoppingWindows(10, 4), 2),
    (HoppingWindows(12, 12), 1),
    (SessionWindows(5), 0),
    (SessionWindows(5), 8),
    (SessionWindows(12), 3),
]


@pytest.mark.parametrize(("kind", "grace"), CASES, ids=repr)
@pytest.mark.parametrize("seed", range(12))
def test_the_simulation_agrees_with_the_reference(kind: Kind, grace: int, seed: int) -> None:
    rng = random.Random(seed)
    stream = random_stream(rng, rng.randint(1, 300), rng.randint(1, 4))
    # values: the offsets, folded into tuples, so that the order of folding is checked too
    spec = Spec(kind, tuple, lambda r, acc: (*acc, r.value), grace)
    outcome = simulate_partition(spec, stream)

    def fold(value: Any, acc: Any) -> Any:
        return (*acc, value)

    if isinstance(kind, SessionWindows):
        expected, late = ref.session(as_reference(stream), kind.gap, grace, tuple, fold)
    elif isinstance(kind, TumblingWindows):
        expected, late = ref.hopping(as_reference(stream), kind.size, kind.size, grace, tuple, fold)
    else:
        expected, late = ref.hopping(as_reference(stream), kind.size, kind.hop, grace, tuple, fold)
    assert finals(outcome.emitted) == expected
    assert {r.offset for r in outcome.late} == late
    assert [r.offset for r in outcome.late] == sorted(late)
    assert in_order_per_key(outcome.emitted, isinstance(kind, SessionWindows))
    if isinstance(kind, HoppingWindows) and kind.size == kind.hop:
        tumbling = Spec(TumblingWindows(kind.size), tuple, lambda r, acc: (*acc, r.value), grace)
        assert simulate_partition(tumbling, stream) == outcome
