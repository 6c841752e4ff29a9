"""The pure window semantics (flows.windows): hand-computed cases and a comparison with an
independent brute-force simulation (tests/window_reference.py) on seeded random streams."""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from flows.errors import ConfigError, StateError
from flows.windows import (
    Hopping,
    Session,
    Sliding,
    Step,
    Tumbling,
    WindowConfigError,
    Windowing,
    WindowKind,
    WindowState,
    WindowStateError,
)
from tests import window_reference as ref

ms = timedelta(milliseconds=1)
END = 10**15  # a stream time past every close time: flushes all windows


def count(kind: WindowKind, grace: int = 0) -> Windowing[Any, int]:
    return Windowing(kind, lambda: 0, lambda r, acc: acc + 1, grace * ms, merge=operator.add)


def collect(kind: WindowKind, grace: int = 0) -> Windowing[Any, tuple[Any, ...]]:
    """Aggregates the records themselves, in arrival order (sessions: sorted)."""
    if isinstance(kind, Session):
        return Windowing(
            kind,
            tuple,
            lambda r, acc: tuple(sorted((*acc, r))),
            grace * ms,
            merge=lambda a, b: tuple(sorted(a + b)),
        )
    return Windowing(kind, tuple, lambda r, acc: (*acc, r), grace * ms)


class Run:
    """Drives one key space through a Windowing as the engine will, checking the row protocol."""

    def __init__(self, windowing: Windowing[Any, Any], close_every: int = 1):
        self.w = windowing
        self.rows: dict[Any, tuple[WindowState[Any], ...]] = {}
        self.st: int | None = None
        self.finals: dict[tuple[Any, int, int], Any] = {}
        self.order: list[tuple[Any, int]] = []
        self.late: set[int] = set()
        self.updates: list[Step[Any]] = []
        self.n = 0
        self.close_every = close_every

    def _emit(self, key: Any, windows: Sequence[WindowState[Any]]) -> None:
        for w in windows:
            ident = (key, w.start, w.end)
            assert ident not in self.finals, f"{ident} emitted twice"
            self.finals[ident] = w.value
            self.order.append((key, w.start))

    def _store(self, key: Any, step: Step[Any]) -> None:
        # Applying upserted and removed to the stored rows must give the rows the step reports.
        stored = {w.start: w for w in self.rows.get(key, ())}
        for start in step.removed:
            del stored[start]
        for w in step.upserted:
            stored[w.start] = w
        assert tuple(stored[s] for s in sorted(stored)) == step.windows
        self.rows[key] = step.windows

    def record(self, key: Any, ts: int, value: Any = None) -> Step[Any]:
        value = self.n if value is None else value
        step = self.w.apply(self.rows.get(key, ()), ts, value, self.st)
        self._emit(key, step.closed)
        if step.late:
            self.late.add(self.n)
        self._store(key, step)
        self.updates.append(step)
        self.st = ts if self.st is None else max(self.st, ts)
        self.n += 1
        if self.close_every and self.n % self.close_every == 0:
            self.close(self.st)
        return step

    def close(self, stream_time: int) -> None:
        for key in sorted(self.rows, key=repr):
            closing = self.w.close(self.rows[key], stream_time)
            self._emit(key, closing.emitted)
            stored = {w.start: w for w in self.rows[key]}
            for start in closing.removed:
                del stored[start]
            for w in closing.upserted:
                stored[w.start] = w
            assert tuple(stored[s] for s in sorted(stored)) == closing.windows
            self.rows[key] = closing.windows

    def flush(self) -> dict[tuple[Any, int, int], Any]:
        self.close(END)
        assert all(not w.pending for rows in self.rows.values() for w in rows)
        return self.finals


def feed(windowing: Windowing[Any, Any], stamps: Sequence[int], key: str = "k") -> Run:
    run = Run(windowing)
    for ts in stamps:
        run.record(key, ts)
    return run


# --- tumbling and hopping -------------------------------------------------------------------


def test_tumbling_assigns_each_timestamp_to_one_window_and_handles_out_of_order() -> None:
    run = feed(collect(Tumbling(100 * ms), grace=0), [5, 120, 99, 150, 250])
    assert run.flush() == {
        ("k", 0, 100): (0,),  # 99 arrived when stream time 120 had closed [0, 100): late
        ("k", 100, 200): (1, 3),
        ("k", 200, 300): (4,),
    }
    assert run.late == {2}


def test_grace_keeps_a_window_open_for_out_of_order_records() -> None:
    run = feed(collect(Tumbling(100 * ms), grace=30), [5, 120, 99, 129, 60, 130, 70])
    # [0, 100) closes at 130: 99 (stream time 120) and 60 (129) are in time, 70 (130) is late
    assert run.flush() == {("k", 0, 100): (0, 2, 4), ("k", 100, 200): (1, 3, 5)}
    assert run.late == {6}


def test_a_final_result_is_emitted_once_when_stream_time_reaches_close_time() -> None:
    run = Run(count(Tumbling(100 * ms), grace=10))
    run.record("k", 50)
    run.record("k", 109)
    assert run.finals == {}  # close time 110 not reached
    run.record("other", 110)
    assert run.finals == {("k", 0, 100): 1}
    run.record("k", 120)
    assert run.finals == {("k", 0, 100): 1}


def test_hopping_windows_overlap() -> None:
    run = feed(collect(Hopping(100 * ms, 50 * ms)), [120, 149, 60, 150, 10])
    assert run.flush() == {
        # 60 is in [0, 100), closed by stream time 149, and in [50, 150), still open
        ("k", 50, 150): (0, 1, 2),
        ("k", 100, 200): (0, 1, 3),
        ("k", 150, 250): (3,),
    }
    assert run.late == {4}  # 10: [-50, 50) and [0, 100) both closed


def test_hopping_with_a_size_that_is_not_a_multiple_of_hop() -> None:
    assert Hopping(100 * ms, 30 * ms).starts(95) == [0, 30, 60, 90]
    assert Hopping(100 * ms, 30 * ms).starts(90) == [0, 30, 60, 90]
    assert Hopping(100 * ms, 30 * ms).starts(100) == [30, 60, 90]


def test_update_emission_reports_the_windows_a_record_changed() -> None:
    run = Run(count(Hopping(100 * ms, 50 * ms)))
    step = run.record("k", 120)
    assert [(w.start, w.value) for w in step.changed] == [(50, 1), (100, 1)]
    step = run.record("k", 160)
    assert [(w.start, w.value) for w in step.changed] == [(100, 2), (150, 1)]
    step = run.record("k", 40)  # [0, 100) and [-50, 50) closed by stream time 160: late
    assert step.late and step.changed == () and step.upserted == ()


# --- sessions -------------------------------------------------------------------------------


def test_a_record_bridging_two_sessions_merges_them() -> None:
    run = feed(collect(Session(10 * ms), grace=100), [100, 108, 128, 118])
    step = run.updates[-1]
    assert [(w.start, w.end, w.value) for w in step.windows] == [(100, 128, (0, 1, 2, 3))]
    assert step.removed == (128,)
    assert run.flush() == {("k", 100, 128): (0, 1, 2, 3)}


def test_sessions_further_apart_than_gap_stay_apart() -> None:
    run = feed(collect(Session(10 * ms), grace=100), [100, 110, 121, 140])
    assert run.flush() == {("k", 100, 110): (0, 1), ("k", 121, 121): (2,), ("k", 140, 140): (3,)}


def test_session_reach_is_inclusive_on_both_sides() -> None:
    run = feed(count(Session(10 * ms), grace=100), [100, 90, 120, 110])
    assert run.flush() == {("k", 90, 120): 4}


def test_session_close_time_includes_the_gap_and_closed_sessions_are_final() -> None:
    run = Run(count(Session(10 * ms), grace=5))
    run.record("k", 100)
    run.record("other", 114)
    assert run.finals == {}
    run.record("other", 115)  # 100 + 10 + 5
    assert run.finals == {("k", 100, 100): 1}
    step = run.record("k", 109)  # within the gap of the closed session: a new session
    assert not step.late and [(w.start, w.end) for w in step.windows] == [(109, 109)]
    assert run.record("k", 90).late  # its own session would close at 105 <= 115


def test_session_windows_need_a_merge_function() -> None:
    with pytest.raises(WindowConfigError, match="merge="):
        Windowing(Session(timedelta(minutes=30)), lambda: 0, lambda r, a: a + 1)


# --- sliding (hand-computed as Kafka Streams' SlidingWindows would) ------------------------


def test_sliding_in_order_left_and_right_windows() -> None:
    run = feed(collect(Sliding(10 * ms), grace=1000), [100, 105, 120])
    assert run.flush() == {
        ("k", 90, 100): (0,),
        ("k", 95, 105): (0, 1),
        ("k", 101, 111): (1,),  # the right window of 100
        ("k", 110, 120): (2,),
    }


def test_sliding_out_of_order_record_creates_and_copies_windows() -> None:
    run = feed(collect(Sliding(10 * ms), grace=1000), [100, 120, 110])
    assert run.flush() == {
        ("k", 90, 100): (0,),
        ("k", 100, 110): (0, 2),  # left window of 110, its aggregate copied from [90, 100]
        ("k", 101, 111): (2,),  # right window of 100
        ("k", 110, 120): (1, 2),
        ("k", 111, 121): (1,),  # right window of 110, copied from [110, 120] before 110
    }


def test_sliding_windows_are_inclusive_on_both_ends() -> None:
    run = feed(count(Sliding(10 * ms), grace=1000), [100, 110])
    # 110 is both on the end of 110's left window [100, 110], which also holds 100, and in
    # 100's right window [101, 111]
    assert run.flush() == {("k", 90, 100): 1, ("k", 100, 110): 2, ("k", 101, 111): 1}


def test_sliding_duplicate_timestamps_share_windows() -> None:
    run = feed(count(Sliding(10 * ms), grace=1000), [100, 100, 105])
    assert run.flush() == {("k", 90, 100): 2, ("k", 95, 105): 3, ("k", 101, 111): 1}


def test_sliding_close_time_and_lateness() -> None:
    # size 10, grace 0: [s, s+10] closes at s + 11
    run = feed(collect(Sliding(10 * ms), grace=0), [100, 112, 101, 102])
    # 101: [91, 101] closed at 102 and [101, 111] at 112; stream time is 112: late.
    # 102: [102, 112] is open (closes at 113), so 102 is accepted into it and creates its
    # right window [103, 113] (holding 112); its own left window [92, 102] had closed.
    assert run.late == {2}
    assert run.flush() == {
        ("k", 90, 100): (0,),
        ("k", 102, 112): (1, 3),
        ("k", 103, 113): (1,),
    }


def test_sliding_keeps_closed_windows_until_retention_and_refuses_missing_rows() -> None:
    w = collect(Sliding(10 * ms), grace=0)
    run = Run(w)
    run.record("k", 100)
    run.record("other", 105)
    # [90, 100] closed at 101 and was emitted, but stays as a copy source
    assert run.finals == {("k", 90, 100): (0,)}
    assert [(r.start, r.pending) for r in run.rows["k"]] == [(90, False)]
    # 106's left window [96, 106] holds 100 too: its aggregate comes from the closed row
    step = run.record("k", 106)
    assert [(r.start, r.value) for r in step.changed] == [(96, (0, 2)), (101, (2,))]
    with pytest.raises(WindowStateError, match="pass every row"):
        # 108's left window [98, 108] holds 100 and 106, as only the row at 96 does
        w.apply([r for r in run.rows["k"] if r.start != 96], 108, "x", 106)
    assert issubclass(WindowStateError, StateError)
    # [90, 100] closed at 101; it is kept 2 * size + 1 longer, until 122
    run.close(121)
    assert any(r.start == 90 for r in run.rows["k"])
    run.close(122)
    assert all(r.start != 90 for r in run.rows["k"])


# --- closing --------------------------------------------------------------------------------


def test_closing_returns_due_windows_in_order_of_start() -> None:
    w = count(Hopping(100 * ms, 25 * ms), grace=200)
    run = Run(w, close_every=0)
    for ts in [130, 10, 75, 199, 260]:
        run.record("k", ts)
    assert run.finals == {}
    closing = w.close(run.rows["k"], 425)  # closes every window with start + 300 <= 425
    assert [x.start for x in closing.emitted] == [-75, -50, -25, 0, 25, 50, 75, 100, 125]
    assert [x.start for x in closing.windows] == [150, 175, 200, 225, 250]
    assert w.close(closing.windows, 425).emitted == ()
    assert closing.removed == tuple(x.start for x in closing.emitted)


def test_apply_emits_windows_of_its_key_that_were_already_due() -> None:
    run = Run(count(Tumbling(100 * ms)), close_every=0)
    run.record("k", 10)
    run.record("other", 250)
    assert run.finals == {}
    step = run.record("k", 260)
    assert [(x.start, x.value) for x in step.closed] == [(0, 1)]
    assert run.finals == {("k", 0, 100): 1}


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Tumbling(timedelta(0)), r"Tumbling\(size=\.\.\.\) must be positive"),
        (lambda: Tumbling(-ms), "must be positive"),
        (lambda: Tumbling(timedelta(microseconds=1500)), "whole number of milliseconds"),
        (lambda: Tumbling(60), "must be a datetime.timedelta"),  # type: ignore[arg-type]
        (lambda: Hopping(10 * ms, 20 * ms), "hop must not exceed size"),
        (lambda: Hopping(10 * ms, timedelta(0)), r"Hopping\(hop=\.\.\.\) must be positive"),
        (lambda: Sliding(timedelta(0)), r"Sliding\(size=\.\.\.\) must be positive"),
        (lambda: Session(timedelta(microseconds=1)), "whole number of milliseconds"),
        (lambda: count(Tumbling(ms), grace=-1), "grace must be zero or more"),
        (lambda: Windowing("tumbling", int, max), "must be Tumbling, Hopping"),  # type: ignore[arg-type]
    ],
)
def test_invalid_configuration_says_what_to_fix(make: Any, message: str) -> None:
    with pytest.raises(WindowConfigError, match=message) as raised:
        make()
    assert isinstance(raised.value, ConfigError)


def test_kinds_are_frozen_and_comparable() -> None:
    assert Tumbling(timedelta(minutes=1)) == Tumbling(60_000 * ms)
    assert Tumbling(timedelta(minutes=1)).size_ms == 60_000
    assert len({Hopping(10 * ms, 5 * ms), Hopping(10 * ms, 5 * ms)}) == 1
    with pytest.raises(AttributeError):
        Session(ms).gap = 2 * ms  # type: ignore[misc]


# --- against the independent reference -----------------------------------------------------


def random_stream(seed: int, n: int = 3000) -> list[tuple[str, int, int]]:
    """Mostly in order, some out of order within a few windows, some far behind (late)."""
    rng = random.Random(seed)
    now = 1_000
    out = []
    for i in range(n):
        now += rng.choice([0, 0, 1, 2, 3, 5, 8, 13, 21, 40])
        roll = rng.random()
        lag = 0 if roll < 0.6 else rng.randint(0, 60) if roll < 0.93 else rng.randint(60, 600)
        out.append((rng.choice("abcd"), now - lag, i))
    return out


KINDS: list[tuple[str, WindowKind]] = [
    ("tumbling", Tumbling(100 * ms)),
    ("hopping", Hopping(100 * ms, 30 * ms)),
    ("sliding", Sliding(50 * ms)),
    ("session", Session(40 * ms)),
]


def reference(kind: WindowKind, records: list[Any], grace: int) -> tuple[Any, set[int]]:
    fold = collect(kind, grace).fn
    if isinstance(kind, Tumbling):
        return ref.hopping(records, kind.size_ms, kind.size_ms, grace, tuple, fold)
    if isinstance(kind, Hopping):
        return ref.hopping(records, kind.size_ms, kind.hop_ms, grace, tuple, fold)
    if isinstance(kind, Sliding):
        return ref.sliding(records, kind.size_ms, grace, tuple, fold)
    return ref.session(records, kind.gap_ms, grace, tuple, fold)


@pytest.mark.parametrize("grace", [0, 25])
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_matches_the_reference_simulation(
    name: str, kind: WindowKind, seed: int, grace: int
) -> None:
    records = random_stream(seed)
    expected, expected_late = reference(kind, records, grace)
    assert 50 < len(expected_late) < len(records) // 2  # the stream does exercise lateness
    # Closing after every record, after every 7, or only at the end: the same final results.
    for close_every in (1, 7, 0):
        run = Run(collect(kind, grace), close_every=close_every)
        for key, ts, value in records:
            run.record(key, ts, value)
        assert run.late == expected_late
        assert run.flush() == expected
        for key in "abcd":
            starts = [start for k, start in run.order if k == key]
            assert starts == sorted(starts), f"{name}: {key}'s windows out of order of start"
