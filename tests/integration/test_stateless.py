"""Stateless flows against the real broker, through `flows run`."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.conftest import UniqueFn
from tests.helpers import (
    consume_all,
    flows_env,
    high_watermarks,
    kill,
    produce,
    run_cli,
    start_cli,
    wait_until,
    write_app,
)

APP = """
from flows import STR, App, Map, Topic

source = Topic("{source}", key_format=STR, value_format=STR, partitions=3)
sink = Topic("{sink}", key_format=STR, value_format=STR, partitions=3)


def shout(record):
    if record.value == "drop":
        return None
    if record.value == "boom":
        raise ValueError("boom is not allowed")
    return record.value.upper()


app = App("{name}", [Map(name="shout", source=source, sink=sink, fn=shout,
                         exactly_once={exactly_once})])
"""


def _app(tmp_path: Path, unique: UniqueFn, exactly_once: bool) -> tuple[Path, str, str]:
    source, sink = unique("in"), unique("out")
    path = write_app(
        tmp_path / "app.py",
        APP.format(source=source, sink=sink, name=unique("app"), exactly_once=exactly_once),
    )
    return path, source, sink


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_every_input_is_reflected_in_the_output(
    tmp_path: Path, unique: UniqueFn, bootstrap_servers: str, database_url: str, exactly_once: bool
) -> None:
    path, source, sink = _app(tmp_path, unique, exactly_once)
    env = flows_env(bootstrap_servers, database_url)
    # the app creates its topics; a first idle run does that
    first = run_cli(["run", str(path), "--until-idle", "1"], env)
    assert first.returncode == 0, first.stderr
    values = [f"line {i}" for i in range(3000)] + ["drop", "boom"]
    produce(
        bootstrap_servers, source, ((f"k{i}".encode(), v.encode()) for i, v in enumerate(values))
    )
    done = run_cli(["run", str(path), "--until-idle", "3"], env)
    assert done.returncode == 0, done.stderr
    out = consume_all(bootstrap_servers, sink, expected=3000)
    got = sorted(r.value.decode() for r in out if r.value is not None)
    assert got == sorted(f"LINE {i}" for i in range(3000))
    # keys pass through; the same key lands in the same partition as in the input
    assert {r.key for r in out} == {f"k{i}".encode() for i in range(3000)}
    dead = consume_all(bootstrap_servers, f"{source}.dlq", expected=1)
    assert [d.value for d in dead] == [b"boom"]
    headers = dict(dead[0].headers)
    assert headers["flows.error.type"] == b"ValueError"
    assert headers["flows.source.topic"] == source.encode()


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_a_killed_run_loses_nothing(
    tmp_path: Path, unique: UniqueFn, bootstrap_servers: str, database_url: str, exactly_once: bool
) -> None:
    path, source, sink = _app(tmp_path, unique, exactly_once)
    env = flows_env(bootstrap_servers, database_url, FLOWS_BATCH_SIZE="200")
    assert run_cli(["run", str(path), "--until-idle", "1"], env).returncode == 0
    # enough input that three runs killed soon after their first outputs cannot finish it
    # (at-least-once runs several times faster)
    count = 20_000 if exactly_once else 200_000
    produce(bootstrap_servers, source, ((str(i).encode(), f"v{i}".encode()) for i in range(count)))
    log = tmp_path / "worker.log"
    for _ in range(3):
        written = sum(high_watermarks(bootstrap_servers, sink).values())
        worker = start_cli(["run", str(path)], env, log)
        # killed mid-run, by what it did (a few batches more in the sink), not after a time
        wait_until(
            lambda w=written: sum(high_watermarks(bootstrap_servers, sink).values()) >= w + 1000,
            90,
            "the worker to produce 1,000 more outputs",
            logs=(log,),
        )
        kill(worker)
    final = run_cli(["run", str(path), "--until-idle", "3"], env)
    assert final.returncode == 0, final.stderr + log.read_text()
    out = consume_all(bootstrap_servers, sink, expected=count)
    values = [r.value for r in out]
    assert set(values) == {f"V{i}".encode() for i in range(count)}
    if exactly_once:  # read_committed readers see each output once
        assert len(values) == count


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_sigterm_commits_the_in_flight_batch_and_exits_zero(
    tmp_path: Path, unique: UniqueFn, bootstrap_servers: str, database_url: str, exactly_once: bool
) -> None:
    path, source, sink = _app(tmp_path, unique, exactly_once)
    env = flows_env(bootstrap_servers, database_url, FLOWS_BATCH_SIZE="100")
    assert run_cli(["run", str(path), "--until-idle", "1"], env).returncode == 0
    count = 100_000  # seconds of work left when the stop comes, even at-least-once
    produce(bootstrap_servers, source, ((b"k", f"v{i}".encode()) for i in range(count)))
    log = tmp_path / "worker.log"
    worker = start_cli(["run", str(path)], env, log)
    # stopped mid-run: at-least-once offsets are committed in the background, and what is
    # still queued must be committed on the way out, or the restart repeats it
    wait_until(
        lambda: sum(high_watermarks(bootstrap_servers, sink).values()) >= 2000,
        90,
        "the worker to produce 2,000 outputs",
        logs=(log,),
    )
    kill(worker, signal.SIGTERM)
    assert worker.returncode == 0, log.read_text()
    text = log.read_text()
    assert text.index("stopping workers") < text.index("stopping kafka-admin")
    stopped_at = sum(high_watermarks(bootstrap_servers, sink).values())
    # nothing is repeated after a clean stop: a restart emits exactly the rest
    assert run_cli(["run", str(path), "--until-idle", "3"], env).returncode == 0
    assert sum(high_watermarks(bootstrap_servers, sink).values()) > stopped_at, (
        "the worker had finished before it was stopped"
    )
    out = consume_all(bootstrap_servers, sink, expected=count)
    assert sorted(r.value or b"" for r in out) == sorted(f"V{i}".encode() for i in range(count))


def test_until_idle_waits_for_an_open_transaction_in_its_source(
    tmp_path: Path, unique: UniqueFn, bootstrap_servers: str, database_url: str
) -> None:
    """A read_committed reader sees nothing of an open transaction: a run that stopped
    then would leave its records behind. ``--until-idle`` waits until the transaction
    ends (here: commits after 6 s), well past the idle time of 1 s."""
    path, source, sink = _app(tmp_path, unique, exactly_once=True)
    env = flows_env(bootstrap_servers, database_url)
    first = run_cli(["run", str(path), "--until-idle", "1"], env)
    assert first.returncode == 0, first.stderr
    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "transactional.id": unique("open-txn")}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(200):
        producer.produce(source, f"late {i}".encode(), key=f"k{i}".encode())
    producer.flush(30)
    run = start_cli(["run", str(path), "--until-idle", "1"], env, tmp_path / "run.log")
    try:
        time.sleep(6)
        assert run.poll() is None, "the run stopped while a transaction in its source was open"
        producer.commit_transaction(30)
        run.wait(timeout=120)
    finally:
        kill(run)
    assert run.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
    out = consume_all(bootstrap_servers, sink, expected=200)
    assert sorted(r.value or b"" for r in out) == sorted(f"LATE {i}".encode() for i in range(200))
