"""Wordcount killed, paused and replaced: the counts and the outputs stay exact.

Each test resets the wordcount app (its topic names are the example's contract), produces a
seeded text, disturbs the workers, lets a last run finish with ``--until-idle``, and checks
the table and a ``read_committed`` reading of the output against counts computed here.
"""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.faults.crashing_worker import KILLING, REFUSED, RESUMED, STOPPING
from tests.helpers import (
    CRASHING_WORKER,
    committed_offsets,
    consume_all,
    database_sessions,
    fenced_lines,
    flows_env,
    high_watermarks,
    kill,
    owned_partitions,
    produce,
    reemitted,
    run_cli,
    start_cli,
    stopped,
    stored_watermarks,
    wait_until,
)
from tests.wordcount_check import (
    check_history,
    check_output,
    expected_counts,
    table_counts,
    text_lines,
)

#: the wordcount example's flows (each a consumer group ``wordcount.<flow>``) and topics
FLOWS = ("split", "count", "store")
COUNT_GROUP = "wordcount.count"
WORDS = "word-count-words"


@pytest.fixture
def wordcount_env(bootstrap_servers: str, database_url: str) -> dict[str, str]:
    # small batches: many commits for the kills to fall between
    env = flows_env(
        bootstrap_servers, database_url, FLOWS_BATCH_SIZE="500", FLOWS_STATEFUL_BATCH_SIZE="500"
    )
    reset = run_cli(["reset", "wordcount", "--yes"], env)
    assert reset.returncode == 0, reset.stderr
    return env


def _produce_lines(bootstrap: str, lines: list[str]) -> None:
    produce(bootstrap, "word-count-input", ((None, line.encode()) for line in lines))


def _finish_and_check(
    env: dict[str, str],
    bootstrap: str,
    engine: sa.Engine,
    lines: list[str],
    log: Path,
    instance: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs the app until it is idle; checks the table and the output; returns the run."""
    # A killed worker's open transactions hold read_committed readers back until its
    # instance restarts (its transactional ids are then fenced) or they time out: the last
    # run takes over the killed instance's id, as a restarted replica would.
    identity = ["--instance-id", instance] if instance else []
    final = run_cli(["run", "wordcount", "--until-idle", "10", *identity], env, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:] + log.read_text()[-3000:]
    expected = expected_counts(lines)
    counted = table_counts(engine)
    if counted != expected:
        wrong = {w for w in expected.keys() | counted.keys() if counted[w] != expected[w]}
        pytest.fail(
            f"{len(wrong)} of {len(expected)} words counted wrong "
            f"({sum(counted.values())} counted, {sum(expected.values())} expected), "
            f"e.g. {[(w, counted[w], expected[w]) for w in sorted(wrong)[:5]]}\n"
            f"last run:\n{final.stderr[-4000:]}"
        )
    out = consume_all(bootstrap, "word-count-output", expected=sum(expected.values()))
    check_output(out, expected)
    check_history(engine, expected)  # written with the counts: as exact as they are
    return final


def _count_progress(engine: sa.Engine) -> int:
    """How far the count flow is, by PostgreSQL's watermarks (0 before its first batch)."""
    return sum(stored_watermarks(engine, COUNT_GROUP, WORDS).values())


def _behind(bootstrap: str, engine: sa.Engine) -> dict[tuple[str, int], tuple[int, int]]:
    """The count flow's partitions where Kafka's committed offset C is behind PostgreSQL's
    watermark W, as (C, W): the batches a restart must re-emit. C is negative where Kafka
    has no committed offset; the batches then start at offset 0."""
    committed = committed_offsets(bootstrap, COUNT_GROUP, WORDS)
    stored = stored_watermarks(engine, COUNT_GROUP, WORDS)
    return {
        (WORDS, p): (max(committed[p], 0), w)
        for p, w in sorted(stored.items())
        if max(committed[p], 0) < w
    }


def _held(log: Path) -> dict[str, set[tuple[str, int]]]:
    """The partitions each flow of the worker logging to ``log`` holds, by its log."""
    text = log.read_text()
    return {flow: owned_partitions(text, flow) for flow in FLOWS}


def _holds_all_of(log: Path, held: dict[str, set[tuple[str, int]]]) -> bool:
    now = _held(log)
    return all(held[flow] <= now[flow] for flow in FLOWS)


def test_sigkill_at_random_moments(
    wordcount_env: dict[str, str], bootstrap_servers: str, engine: sa.Engine, tmp_path: Path
) -> None:
    lines = text_lines(100_000, seed=20261124, words_per_line=3)
    _produce_lines(bootstrap_servers, lines)
    rng = random.Random(7)
    log = tmp_path / "workers.log"
    for run in range(6):
        # Each run is killed after a random amount of counting (records of the count flow,
        # by PostgreSQL's watermarks), not of time: a run spends its first seconds waiting
        # for the killed one to leave the group. Six runs of at most 30,000 records stay
        # inside the input (about 330,000 words), so every kill falls mid-run.
        target = _count_progress(engine) + rng.randint(500, 30_000)
        worker = start_cli(["run", "wordcount"], wordcount_env, log)
        wait_until(
            lambda w=worker, t=target: _count_progress(engine) >= t or w.poll() is not None,
            300,
            f"run {run} to count up to watermark sum {target}",
        )
        kill(worker)
        assert worker.returncode == -signal.SIGKILL, log.read_text()[-3000:]  # not its own end
    counted = sum(table_counts(engine).values())
    assert counted < sum(expected_counts(lines).values()), "the last kill came after the end"
    _finish_and_check(wordcount_env, bootstrap_servers, engine, lines, log)


def _assert_reemitted(text: str, behind: dict[tuple[str, int], tuple[int, int]]) -> None:
    """The run that logged ``text`` re-emitted exactly the batches ``behind`` (Kafka's
    committed offset C and PostgreSQL's watermark W per partition, read after the kill)."""
    count, ranges = reemitted(text, "count")
    # The line lists every partition behind, owing outputs or not (no committed offset and
    # a watermark of 0 on a first assignment): there is nothing in [0, 0) to re-emit.
    ranges = [(t, p, c, w) for t, p, c, w in ranges if c < w]
    found = {(topic, p): (c, w) for topic, p, c, w in ranges}
    assert len(found) == len(ranges), f"a partition re-emitted twice: {ranges}"
    assert found == behind, f"re-emitted {found}, expected {behind}\n{text[-3000:]}"
    assert (count > 0) == bool(behind), f"{count} outputs re-emitted for {behind}"


def test_kill_between_the_database_commit_and_the_kafka_commit(
    wordcount_env: dict[str, str], bootstrap_servers: str, engine: sa.Engine, tmp_path: Path
) -> None:
    lines = text_lines(5_000, seed=3)
    _produce_lines(bootstrap_servers, lines)
    log = tmp_path / "workers.log"
    split = run_cli(["run", "wordcount", "--flow", "split", "--until-idle", "3"], wordcount_env)
    assert split.returncode == 0, split.stderr[-3000:]
    behind: dict[tuple[str, int], tuple[int, int]] = {}  # nothing to re-emit on the first run
    for commits in (1, 4):
        mark = len(log.read_text()) if log.exists() else 0
        crashing = start_cli(
            ["--kill-after", str(commits), "wordcount", "--flow", "count"],
            wordcount_env,
            log,
            command=CRASHING_WORKER,
        )
        crashing.wait(timeout=300)
        text = log.read_text()[mark:]
        assert crashing.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        assert f"{KILLING} {commits} " in text, text[-3000:]  # the test's store, at that commit
        _assert_reemitted(text, behind)  # the previous kill's batches, no more, no less
        behind = _behind(bootstrap_servers, engine)
        assert behind, f"Kafka caught up with PostgreSQL: the kill did not fall between\n{text}"
    final = _finish_and_check(wordcount_env, bootstrap_servers, engine, lines, log)
    _assert_reemitted(final.stderr, behind)
    assert "re-emits" in log.read_text() + "", "the restart never re-emitted pending outputs"


def test_two_workers_one_killed_the_other_takes_over(
    wordcount_env: dict[str, str], bootstrap_servers: str, engine: sa.Engine, tmp_path: Path
) -> None:
    lines = text_lines(30_000, seed=11)
    more = text_lines(30_000, seed=12)
    _produce_lines(bootstrap_servers, lines)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_cli(["run", "wordcount", "--instance-id", "a"], wordcount_env, log_a)
    b = start_cli(["run", "wordcount", "--instance-id", "b"], wordcount_env, log_b)
    try:
        wait_until(
            lambda: "assigned" in log_a.read_text() and "assigned" in log_b.read_text(),
            60,
            "both workers to be assigned partitions",
        )

        def shared() -> bool:  # each flow's partitions split between a and b, none twice
            held_a, held_b = _held(log_a), _held(log_b)
            return all(held_a[f] and held_b[f] and not held_a[f] & held_b[f] for f in FLOWS)

        wait_until(shared, 120, "a and b to share the partitions of every flow")
        held = _held(log_a)
        mine = sorted(p for _, p in held["count"])
        started = stored_watermarks(engine, COUNT_GROUP, WORDS)
        # More input now that the partitions are shared: the first lines may all be counted
        # while the group settles, and then a would have nothing left to commit, nor b to
        # take over (seen once on a fresh clone)
        _produce_lines(bootstrap_servers, more)
        wait_until(  # a is counting: its partitions' watermarks moved (it has outputs out)
            lambda: all(
                stored_watermarks(engine, COUNT_GROUP, WORDS).get(p, -1) > started.get(p, -1)
                for p in mine
            ),
            120,
            f"a to commit batches of word-count-words {mine}",
        )
        held = _held(log_a)  # what a holds when it dies
        kill(a)
        at_kill = committed_offsets(bootstrap_servers, COUNT_GROUP, WORDS)
        outputs_at_kill = sum(high_watermarks(bootstrap_servers, "word-count-output").values())
        wait_until(lambda: _holds_all_of(log_b, held), 120, f"b to be assigned a's {held}")
        wait_until(  # only b is alive: these commits, and their outputs, are b's
            lambda: all(
                committed_offsets(bootstrap_servers, COUNT_GROUP, WORDS)[p] > at_kill[p]
                for _, p in held["count"]
            ),
            120,
            f"b to commit, in Kafka, batches of a's word-count-words {sorted(held['count'])}",
        )
        outputs = sum(high_watermarks(bootstrap_servers, "word-count-output").values())
        assert outputs > outputs_at_kill, "b produced nothing after a was killed"
    finally:
        kill(a)
        kill(b, signal.SIGTERM)
    assert b.returncode == 0, log_b.read_text()[-3000:]
    _finish_and_check(wordcount_env, bootstrap_servers, engine, lines + more, log_b, instance="a")


def test_a_paused_zombie_cannot_commit(
    wordcount_env: dict[str, str], bootstrap_servers: str, engine: sa.Engine, tmp_path: Path
) -> None:
    lines = text_lines(30_000, seed=5)
    _produce_lines(bootstrap_servers, lines)
    log_z, log_b = tmp_path / "zombie.log", tmp_path / "b.log"
    env = {**wordcount_env, "FLOWS_SESSION_TIMEOUT_MS": "6000"}
    # The zombie stops itself (SIGSTOP) on its 5th count batch, computed and not committed:
    # paused mid-run, holding a batch, every time.
    zombie = start_cli(
        ["--stop-before", "5", "wordcount", "--instance-id", "z"],
        env,
        log_z,
        command=CRASHING_WORKER,
    )
    b: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: "assigned" in log_z.read_text(), 60, "the first worker's assignment")
        wait_until(
            lambda: (
                (STOPPING in log_z.read_text() and stopped(zombie)) or zombie.poll() is not None
            ),
            120,
            "the zombie to stop itself before a database commit",
        )
        assert zombie.poll() is None, log_z.read_text()[-3000:]
        held = _held(log_z)
        assert all(held.values()), f"the zombie holds {held}"
        paused_at = stored_watermarks(engine, COUNT_GROUP, WORDS)
        b = start_cli(["run", "wordcount", "--instance-id", "b"], env, log_b)
        wait_until(lambda: "assigned" in log_b.read_text(), 60, "the second worker's assignment")
        # past the zombie's session timeout: b holds every partition the zombie held ...
        wait_until(
            lambda: _holds_all_of(log_b, held), 120, f"b to be assigned {held}", logs=(log_b,)
        )
        wait_until(  # ... and has moved every watermark the zombie's batch read
            lambda: all(
                stored_watermarks(engine, COUNT_GROUP, WORDS)[p] > paused_at[p]
                for _, p in held["count"]
            ),
            120,
            "b to commit batches of every partition the zombie held",
            logs=(log_b, log_z),
            details=lambda: (
                f"paused at {paused_at}, now {stored_watermarks(engine, COUNT_GROUP, WORDS)}, "
                f"words {high_watermarks(bootstrap_servers, WORDS)}\n{database_sessions(engine)}"
            ),
        )
        assert stopped(zombie), "the zombie woke up before b took over"
        mark = len(log_z.read_text())
        zombie.send_signal(signal.SIGCONT)  # the zombie wakes up and tries to commit
        wait_until(
            lambda: fenced_lines(log_z.read_text()[mark:], "count") or zombie.poll() is not None,
            60,
            "the zombie to be fenced",
        )
        whole = log_z.read_text()
        woke = whole[mark:]
        # the zombie stopped where it said it would: it resumes only now, before its commit
        assert RESUMED not in whole[:mark] and RESUMED in woke, woke[-3000:]
        assert REFUSED in woke, woke[-3000:]  # PostgreSQL refused its batch: watermark moved
        assert fenced_lines(woke, "count"), woke[-3000:]
        assert woke.index(REFUSED) < woke.index(fenced_lines(woke, "count")[0]), woke[-3000:]
        kill(b, signal.SIGTERM)
    finally:
        zombie.send_signal(signal.SIGCONT)
        kill(zombie, signal.SIGTERM)
        if b is not None:
            kill(b, signal.SIGTERM)
    _finish_and_check(wordcount_env, bootstrap_servers, engine, lines, log_b)
