"""A counter with ``history=True`` killed and paused: its history holds every record's
change exactly once.

The history is written in the transaction of the states and the watermark, so whatever
stops a worker, the table must end up with one row per input record: no duplicate (a batch
applied twice, a zombie's batch), no gap (a batch whose states were kept and history lost),
each key's changes numbered 1, 2, 3 ... with each ``previous`` the value before.
"""

from __future__ import annotations

import random
import signal
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import TopicFactory, UniqueFn
from tests.faults.crashing_worker import KILLING, REFUSED, RESUMED, STOPPING
from tests.helpers import (
    CRASHING_WORKER,
    database_sessions,
    fenced_lines,
    flows_env,
    high_watermarks,
    kill,
    owned_partitions,
    produce,
    run_cli,
    start_cli,
    stopped,
    stored_watermarks,
    wait_until,
    write_app,
)

APP = """
from flows import JSON, STR, App, StatefulMap, Topic

events = Topic("{events}", key_format=STR, value_format=JSON, partitions=4)
counts = Topic("{counts}", key_format=STR, value_format=STR, partitions=4)


def count(record, state):
    total = (state or 0) + 1
    return str(total), total


app = App("{name}", [
    StatefulMap(name="count", source=events, sink=counts, fn=count, history=True),
])
"""


@dataclass
class Counter:
    path: Path
    events: str
    group: str
    table: str
    env: dict[str, str]
    bootstrap: str


@pytest.fixture
def counter(
    tmp_path: Path,
    unique: UniqueFn,
    topic_factory: TopicFactory,
    bootstrap_servers: str,
    database_url: str,
) -> Iterator[Counter]:
    # the input exists before records are produced, with the app's partitions
    events, counts, name = topic_factory("events", 4), unique("counts"), unique("hist")
    path = write_app(tmp_path / "app.py", APP.format(events=events, counts=counts, name=name))
    # small batches: many commits for the kills to fall between
    env = flows_env(bootstrap_servers, database_url, FLOWS_STATEFUL_BATCH_SIZE="300")
    table = f"{name.replace('-', '_')}_count_state"
    yield Counter(path, events, f"{name}.count", table, env, bootstrap_servers)


def _produce(counter: Counter, records: int, keys: int) -> None:
    produce(
        counter.bootstrap,
        counter.events,
        ((f"key-{n % keys}".encode(), b"{}") for n in range(records)),
    )


def _progress(counter: Counter, engine: sa.Engine) -> int:
    """Records the flow has committed, by PostgreSQL's watermarks."""
    return sum(stored_watermarks(engine, counter.group, counter.events).values())


def _finish_and_check(counter: Counter, engine: sa.Engine, log: Path, instance: str = "") -> None:
    identity = ["--instance-id", instance] if instance else []
    final = run_cli(["run", str(counter.path), "--until-idle", "8", *identity], counter.env, 600)
    assert final.returncode == 0, final.stderr[-3000:] + log.read_text()[-3000:]
    produced = high_watermarks(counter.bootstrap, counter.events)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT id, key, seq, previous, value, source_partition, source_offset"
                f" FROM {counter.table}_history ORDER BY id"
            )
        ).all()
        found = conn.execute(sa.text(f"SELECT key, value FROM {counter.table}")).all()
        states: dict[str, int] = {key: value for key, value in found}
    total = sum(produced.values())
    sources = [(r.source_partition, r.source_offset) for r in rows]
    assert len(set(sources)) == len(sources), "a record's change was written twice"
    assert set(sources) == {(p, o) for p, n in produced.items() for o in range(n)}, (
        f"{len(rows)} changes for {total} records: some record's change is missing"
    )
    by_key: dict[str, list[sa.Row[tuple[object, ...]]]] = defaultdict(list)
    for row in rows:
        by_key[row.key].append(row)
    for key, changes in by_key.items():
        n = len(changes)
        assert [c.seq for c in changes] == list(range(1, n + 1)), key
        assert [c.value for c in changes] == list(range(1, n + 1)), key
        assert [c.previous for c in changes] == [None, *range(1, n)], key
        offsets = [c.source_offset for c in changes]
        assert offsets == sorted(offsets), f"{key}: ids out of the order of its offsets"
        assert states[key] == n, key


def test_history_is_exact_after_kills_at_random_moments_and_between_the_commits(
    counter: Counter, engine: sa.Engine, tmp_path: Path
) -> None:
    records = 40_000
    _produce(counter, records, keys=150)
    rng = random.Random(14)
    log = tmp_path / "workers.log"
    for run in range(3):
        target = _progress(counter, engine) + rng.randint(1_000, 8_000)
        worker = start_cli(["run", str(counter.path)], counter.env, log)
        wait_until(
            lambda w=worker, t=target: _progress(counter, engine) >= t or w.poll() is not None,
            300,
            f"run {run} to commit up to watermark sum {target}",
        )
        kill(worker)
        assert worker.returncode == -signal.SIGKILL, log.read_text()[-3000:]  # not its own end
    # then a kill exactly between a batch's PostgreSQL commit and its Kafka commit: the
    # restart re-emits that batch's outputs from PostgreSQL and must not apply it again
    mark = len(log.read_text())
    crashing = start_cli(
        ["--kill-after", "3", str(counter.path)], counter.env, log, command=CRASHING_WORKER
    )
    crashing.wait(timeout=300)
    assert crashing.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert f"{KILLING} 3 " in log.read_text()[mark:]
    assert _progress(counter, engine) < records, "the last kill came after the end"
    _finish_and_check(counter, engine, log)


def test_a_paused_zombies_batch_leaves_no_history(
    counter: Counter, engine: sa.Engine, tmp_path: Path
) -> None:
    _produce(counter, 20_000, keys=100)
    env = {**counter.env, "FLOWS_SESSION_TIMEOUT_MS": "6000"}
    log_z, log_b = tmp_path / "zombie.log", tmp_path / "b.log"
    # the zombie stops itself (SIGSTOP) holding its 4th batch, computed and not committed
    zombie = start_cli(
        ["--stop-before", "4", str(counter.path), "--instance-id", "z"],
        env,
        log_z,
        command=CRASHING_WORKER,
    )
    b: subprocess.Popen[bytes] | None = None
    try:
        wait_until(
            lambda: (
                (STOPPING in log_z.read_text() and stopped(zombie)) or zombie.poll() is not None
            ),
            120,
            "the zombie to stop itself before a database commit",
        )
        assert zombie.poll() is None, log_z.read_text()[-3000:]
        held = owned_partitions(log_z.read_text(), "count")
        paused_at = stored_watermarks(engine, counter.group, counter.events)
        b = start_cli(["run", str(counter.path), "--instance-id", "b"], env, log_b)
        wait_until(
            lambda: held <= owned_partitions(log_b.read_text(), "count"),
            120,
            f"b to be assigned the zombie's {sorted(held)}",
        )
        wait_until(  # b committed past every watermark the zombie's batch read
            lambda: all(
                stored_watermarks(engine, counter.group, counter.events)[p] > paused_at[p]
                for _, p in held
            ),
            120,
            "b to commit batches of every partition the zombie held",
            logs=(log_b, log_z),
            details=lambda: database_sessions(engine),
        )
        mark = len(log_z.read_text())
        zombie.send_signal(signal.SIGCONT)  # it wakes up into its commit
        wait_until(
            lambda: fenced_lines(log_z.read_text()[mark:], "count") or zombie.poll() is not None,
            60,
            "the zombie to be fenced",
        )
        whole = log_z.read_text()
        # it stopped where it said it would: it resumes only now, into its commit
        assert RESUMED not in whole[:mark], whole[-3000:]
        assert RESUMED in whole and REFUSED in whole[whole.index(RESUMED) :], whole[-3000:]
        kill(b, signal.SIGTERM)
        assert b.returncode == 0, log_b.read_text()[-3000:]
    finally:
        zombie.send_signal(signal.SIGCONT)
        kill(zombie, signal.SIGTERM)
        if b is not None:
            kill(b, signal.SIGTERM)
    _finish_and_check(counter, engine, log_b)
