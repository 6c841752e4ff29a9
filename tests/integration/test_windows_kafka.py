"""Tumbling, hopping and session windows on the real broker and database, in one run.

A few thousand timestamped events (some out of order, some late) go to explicit partitions;
tests/apps/windowed_app.py runs once with ``--until-idle`` (its ``close_after_idle`` closes
the last windows); every sink partition and the dead-letter topic, read ``read_committed``,
must equal the independent simulation (tests/window_simulation.py) record for record.
"""

from __future__ import annotations

import time

from tests.conftest import UniqueFn
from tests.helpers import flows_env, run_cli
from tests.window_check import (
    APP,
    app_env,
    check_run,
    describe,
    expectations,
    produce_partitioned,
    read_inputs,
    recent_base,
    timestamped_events,
    windowed_topics,
)

PARTITIONS = 3


def test_windows_match_the_simulation(
    unique: UniqueFn, bootstrap_servers: str, database_url: str
) -> None:
    name = unique("win").replace("-", "_")
    env = flows_env(bootstrap_servers, database_url, **app_env(name, PARTITIONS))
    rows, sorts = timestamped_events(
        4_000, seed=13, partitions=PARTITIONS, keys=40, base=recent_base()
    )
    with windowed_topics(bootstrap_servers, name, PARTITIONS) as topics:
        produce_partitioned(bootstrap_servers, topics[0], rows)
        inputs = read_inputs(bootstrap_servers, name, rows)
        expected = expectations(inputs)
        summary = describe(expected, inputs)
        for flow, outcomes in expected.items():  # the data exercises what it should
            assert any(o.late for o in outcomes.values()), f"{flow}: no late record; {summary}"
        started = time.monotonic()
        run = run_cli(["run", APP, "--until-idle", "5"], env, timeout=600)
        took = time.monotonic() - started
        assert run.returncode == 0, run.stderr[-4000:]
        check_run(bootstrap_servers, name, expected)
        print(f"{summary}; {sorts}; the run took {took:.1f} s")
