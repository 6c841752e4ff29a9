"""PostgreSQL and the broker go away for 20 s each mid-run: the flow resumes by itself."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import REPO, consume_all, flows_env, produce, run_cli, start_cli, wait_until
from tests.services import Services
from tests.wordcount_check import check_output, expected_counts, table_counts, text_lines


def _services(command: str) -> None:
    subprocess.run(
        ["bash", "scripts/services.sh", command],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )


def _progress(engine: sa.Engine) -> int:
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    sa.text("SELECT coalesce(sum(count), 0) FROM word_counts")
                ).scalar()
                or 0
            )
    except sa.exc.SQLAlchemyError:
        return 0


def test_database_and_broker_outages(
    flows_services: Services,
    bootstrap_servers: str,
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
) -> None:
    owned = (
        subprocess.run(
            ["bash", "scripts/services.sh", "owned"], cwd=REPO, check=False, capture_output=True
        ).returncode
        == 0
    )
    if {flows_services.kafka_source, flows_services.database_source} != {
        "scripts/services.sh"
    } or not owned:
        pytest.skip(
            "stops and restarts only services that this checkout's scripts/services.sh started"
        )
    # small batches: many commits, so each outage falls between and inside some
    env = flows_env(
        bootstrap_servers,
        database_url,
        FLOWS_BATCH_SIZE="200",
        FLOWS_STATEFUL_BATCH_SIZE="200",
    )
    assert run_cli(["reset", "wordcount", "--yes"], env).returncode == 0
    lines = text_lines(40_000, seed=2024)
    produce(bootstrap_servers, "word-count-input", ((None, line.encode()) for line in lines))
    log = tmp_path / "worker.log"
    expected = expected_counts(lines)
    total = sum(expected.values())
    worker = start_cli(["run", "wordcount"], env, log)
    try:
        wait_until(lambda: _progress(engine) > 1000, 120, "the first counts")
        _services("pg-stop")
        try:
            time.sleep(20)
        finally:
            _services("pg-start")
        engine.dispose()
        before = _progress(engine)
        wait_until(lambda: _progress(engine) > before, 120, "counting to resume after PostgreSQL")
        _services("kafka-stop")
        try:
            time.sleep(20)
        finally:
            _services("kafka-start")
        # the same worker, never restarted, finishes the input by itself
        wait_until(lambda: _progress(engine) == total, 600, "every word to be counted")
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log.read_text()
    assert worker.returncode == 0, text[-4000:]
    assert "retry" in text  # it did fail, and it did come back by itself
    assert table_counts(engine) == expected
    check_output(
        consume_all(bootstrap_servers, "word-count-output", expected=sum(expected.values())),
        expected,
    )
