"""``flows run --processes N`` against the real broker and database: wordcount split over
two worker processes counts exactly, and a SIGTERM to the supervisor stops both cleanly."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka.admin import AdminClient

from tests.conftest import UniqueFn
from tests.helpers import (
    consume_all,
    flows_env,
    owned_partitions,
    produce,
    run_cli,
    start_cli,
    wait_until,
    write_app,
)
from tests.wordcount_check import check_output, expected_counts, text_lines

#: examples/wordcount's split and count under names of the test's own, 4 partitions each
APP = """
from examples.wordcount.app import count, split
from flows import JSON, STR, App, Explode, StatefulMap, Topic

lines = Topic("{lines}", value_format=STR, partitions=4)
words = Topic("{words}", key_format=STR, value_format=STR, partitions=4)
counts = Topic("{counts}", key_format=STR, value_format=STR, partitions=4)

app = App("{name}", [
    Explode(name="split", source=lines, sink=words, fn=split, exactly_once=True),
    StatefulMap(name="count", source=words, sink=counts, fn=count, state_format=JSON),
])
"""


def _app(tmp_path: Path, unique: UniqueFn) -> tuple[Path, dict[str, str]]:
    names = {k: unique(k) for k in ("lines", "words", "counts", "name")}
    return write_app(tmp_path / "app.py", APP.format(**names)), names


def _process_log(log: str, index: int) -> str:
    """The lines child ``index`` logged (text format: ``<date> <time> <LEVEL> p<i> ...``)."""
    tag = re.compile(rf"^\S+ \S+ \w+\s+p{index} ")
    return "\n".join(line for line in log.splitlines() if tag.match(line))


def _members(bootstrap: str, group: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return sorted(m.client_id for m in description.members)


def test_two_processes_count_exactly_and_each_takes_a_share(
    tmp_path: Path, unique: UniqueFn, bootstrap_servers: str, database_url: str, engine: sa.Engine
) -> None:
    path, names = _app(tmp_path, unique)
    env = flows_env(bootstrap_servers, database_url)
    lines = text_lines(3000, seed=7)
    assert run_cli(["run", str(path), "--until-idle", "1"], env).returncode == 0  # the topics
    produce(bootstrap_servers, names["lines"], ((None, line.encode()) for line in lines))
    done = run_cli(["run", str(path), "--processes", "2", "--until-idle", "3"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_counts(lines)
    check_output(
        consume_all(bootstrap_servers, names["counts"], expected=sum(expected.values())),
        expected,
    )
    for index in (0, 1):  # both worked: each held partitions of both flows at some point
        mine = _process_log(done.stderr, index)
        assert re.search(r" split assigned .*\[\d\]", mine), done.stderr[-3000:]
        assert re.search(r" count assigned .*\[\d\]", mine), done.stderr[-3000:]
        assert re.search(rf"app {re.escape(names['name'])} stopped$", mine, re.M)


def test_sigterm_to_the_supervisor_stops_both_processes_cleanly(
    tmp_path: Path, unique: UniqueFn, bootstrap_servers: str, database_url: str
) -> None:
    path, names = _app(tmp_path, unique)
    env = flows_env(bootstrap_servers, database_url, FLOWS_INSTANCE_ID="itest")
    log = tmp_path / "run.log"
    supervisor = start_cli(["run", str(path), "--processes", "2"], env, log)
    split_group = f"{names['name']}.split"

    def shared() -> bool:  # both processes hold partitions of split
        text = log.read_text()
        return all(owned_partitions(_process_log(text, i), "split") for i in (0, 1))

    wait_until(shared, 90, "both processes to hold partitions")
    # distinct instance ids, from the base id and the process index
    assert _members(bootstrap_servers, split_group) == [
        f"{split_group}.itest.0",
        f"{split_group}.itest.1",
    ]
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=90) == 0, log.read_text()[-3000:]
    text = log.read_text()
    for index in (0, 1):
        mine = _process_log(text, index)
        assert "received SIGTERM" in mine, text[-3000:]
        assert re.search(rf"app {re.escape(names['name'])} stopped$", mine, re.M), text[-3000:]
