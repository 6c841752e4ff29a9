"""Wordcount killed, paused and replaced: the counts and the outputs stay exact.

Each test resets the wordcount app (its topic names are the example's contract), produces a
seeded text, disturbs the workers, lets a last run finish with ``--until-idle``, and checks
the table and a ``read_committed`` reading of the output against counts computed here.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import consume_all, flows_env, kill, produce, run_cli, start_cli, wait_until
from tests.wordcount_check import check_output, expected_counts, table_counts, text_lines


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
) -> None:
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


def test_sigkill_at_random_moments(wordcount_env, bootstrap_servers, engine, tmp_path):
    lines = text_lines(100_000, seed=20261124, words_per_line=3)
    _produce_lines(bootstrap_servers, lines)
    rng = random.Random(7)
    log = tmp_path / "workers.log"
    for _ in range(6):
        worker = start_cli(["run", "wordcount"], wordcount_env, log)
        time.sleep(rng.uniform(3.0, 9.0))
        kill(worker)
    _finish_and_check(wordcount_env, bootstrap_servers, engine, lines, log)


def test_kill_between_the_database_commit_and_the_kafka_commit(
    wordcount_env, bootstrap_servers, engine, tmp_path
):
    lines = text_lines(5_000, seed=3)
    _produce_lines(bootstrap_servers, lines)
    log = tmp_path / "workers.log"
    split = run_cli(["run", "wordcount", "--flow", "split", "--until-idle", "3"], wordcount_env)
    assert split.returncode == 0, split.stderr[-3000:]
    for commits in (1, 4):
        crashing = start_cli(
            ["run", "wordcount", "--flow", "count"],
            {**wordcount_env, "FLOWS_TEST_CRASH_AFTER_DB_COMMITS": str(commits)},
            log,
        )
        crashing.wait(timeout=300)
        assert crashing.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    _finish_and_check(wordcount_env, bootstrap_servers, engine, lines, log)
    assert "re-emits" in log.read_text() + "", "the restart never re-emitted pending outputs"


def test_two_workers_one_killed_the_other_takes_over(
    wordcount_env, bootstrap_servers, engine, tmp_path
):
    lines = text_lines(30_000, seed=11)
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
        time.sleep(4)
        kill(a)
        time.sleep(8)  # b takes a's partitions after the session timeout
    finally:
        kill(a)
        kill(b, signal.SIGTERM)
    assert b.returncode == 0, log_b.read_text()[-3000:]
    _finish_and_check(wordcount_env, bootstrap_servers, engine, lines, log_b, instance="a")


def test_a_paused_zombie_cannot_commit(wordcount_env, bootstrap_servers, engine, tmp_path):
    lines = text_lines(30_000, seed=5)
    _produce_lines(bootstrap_servers, lines)
    log_z, log_b = tmp_path / "zombie.log", tmp_path / "b.log"
    env = {**wordcount_env, "FLOWS_SESSION_TIMEOUT_MS": "6000"}
    zombie = start_cli(["run", "wordcount", "--instance-id", "z"], env, log_z)
    try:
        wait_until(lambda: "assigned" in log_z.read_text(), 60, "the first worker's assignment")
        time.sleep(2)
        zombie.send_signal(signal.SIGSTOP)  # mid-run: it may hold a batch it has not committed
        b = start_cli(["run", "wordcount", "--instance-id", "b"], env, log_b)
        wait_until(lambda: "assigned" in log_b.read_text(), 60, "the second worker's assignment")
        time.sleep(15)  # past the zombie's session timeout: b owns every partition
        zombie.send_signal(signal.SIGCONT)  # the zombie wakes up and tries to commit
        time.sleep(10)
        kill(b, signal.SIGTERM)
    finally:
        zombie.send_signal(signal.SIGCONT)
        kill(zombie, signal.SIGTERM)
    _finish_and_check(wordcount_env, bootstrap_servers, engine, lines, log_b)
