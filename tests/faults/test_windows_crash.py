"""Windowed flows SIGKILLed again and again: every window result exactly once, still.

100,000 seeded timestamped events (out of order and late ones included) are produced before
any worker starts, so no partition is ever caught up until its input is consumed and the
idle close (``close_after_idle``) cannot fire early. tests/apps/windowed_app.py (tumbling,
hopping and session windows) is started and SIGKILLed at moments chosen by its committed
progress (PostgreSQL's watermarks of its three flows): six times mid-input, and once more
after it has consumed all input, as soon as its sinks grow again (the idle close writing the
windows still open, or the last batches' commits landing); a last run finishes with
``--until-idle``. Read ``read_committed``, every sink partition and the dead-letter topic
must equal the independent simulation (tests/window_simulation.py) record for record:
every ``(key, window)`` once, with its aggregate, in order; late records only as dead
letters.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import sqlalchemy as sa

from tests.apps import windowed_spec as windowed
from tests.conftest import UniqueFn
from tests.helpers import flows_env, high_watermarks, kill, run_cli, start_cli, wait_until
from tests.window_check import (
    APP,
    app_env,
    check_run,
    describe,
    expectations,
    produce_partitioned,
    progress,
    read_inputs,
    recent_base,
    timestamped_events,
    windowed_topics,
)

PARTITIONS = 4
EVENTS = 100_000
#: kills while input is left: each run ends once every flow has consumed between MIN_STEP
#: and MAX_STEP more records (the first flow to rebalance then often several times that)
MID_INPUT_KILLS = 6
MIN_STEP, MAX_STEP = 1_500, 6_000


def _sink_writes(bootstrap: str, name: str) -> int:
    """Records written to the sinks so far, committed or not (high watermarks)."""
    return sum(
        sum(high_watermarks(bootstrap, windowed.sink_name(name, flow)).values())
        for flow in windowed.FLOWS
    )


def test_sigkilled_windows_match_the_simulation(
    unique: UniqueFn,
    bootstrap_servers: str,
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    name = unique("win").replace("-", "_")
    env = flows_env(
        bootstrap_servers,
        database_url,
        # small batches: many commits for the kills to fall between; a short session
        # timeout: a run need not wait long for the killed one to leave the group
        FLOWS_BATCH_SIZE="1000",
        FLOWS_STATEFUL_BATCH_SIZE="1000",
        FLOWS_SESSION_TIMEOUT_MS="6000",
        **app_env(name, PARTITIONS),
    )
    rows, sorts = timestamped_events(
        EVENTS, seed=20261206, partitions=PARTITIONS, keys=80, base=recent_base()
    )
    rng = random.Random(41)
    log = tmp_path / "workers.log"
    with windowed_topics(bootstrap_servers, name, PARTITIONS) as topics:
        produce_partitioned(bootstrap_servers, topics[0], rows)
        inputs = read_inputs(bootstrap_servers, name, rows)
        expected = expectations(inputs)
        summary = describe(expected, inputs)
        for flow, outcomes in expected.items():
            assert any(o.late for o in outcomes.values()), f"{flow}: no late record; {summary}"

        end = sum(records[-1].offset + 1 for records in inputs.values())  # per flow
        kills: list[dict[str, int]] = []
        for run in range(MID_INPUT_KILLS):
            # Bound to committed progress, not to time: a run first waits for the killed
            # one to leave each group, then replays what the kill lost. Every flow must have
            # committed new batches, so that the kill interrupts work in all three.
            before = progress(engine, name)
            # (at most the end: a flow that rebalanced early may be near it already)
            targets = {f: min(end, v + rng.randint(MIN_STEP, MAX_STEP)) for f, v in before.items()}
            worker = start_cli(["run", APP], env, log)
            wait_until(
                lambda w=worker, t=targets: (
                    all(v >= t[f] for f, v in progress(engine, name).items())
                    or w.poll() is not None
                ),
                300,
                f"run {run} to consume up to watermark sums {targets}",
            )
            kill(worker)
            assert worker.returncode == -signal.SIGKILL, log.read_text()[-3000:]
            kills.append(progress(engine, name))
            assert any(v < end for v in kills[-1].values()), f"run {run} came after the input"
        # How far a flow gets in a run depends on how soon its group rebalances, so a fast
        # flow may finish its input before the last kills; it must not finish before most.
        for flow in windowed.FLOWS:
            mid = sum(0 < k[flow] < end for k in kills)
            assert mid >= MID_INPUT_KILLS // 2, f"{flow} killed mid-input {mid} times: {kills}"

        # One more: let it consume everything, then kill it as the sinks grow again, most
        # likely its idle close (no input left, stream time following the wall clock)
        # writing the windows still open.
        worker = start_cli(["run", APP], env, log)
        wait_until(
            lambda: (
                all(v == end for v in progress(engine, name).values()) or worker.poll() is not None
            ),
            300,
            "the last killed run to consume the input",
        )
        # Right away: the last partition to finish has open windows that only its idle
        # close, a second or more from now, writes; so the sinks grow again, by that or by
        # the last batches' Kafka commits (which follow PostgreSQL's).
        written = _sink_writes(bootstrap_servers, name)
        wait_until(
            lambda: _sink_writes(bootstrap_servers, name) > written or worker.poll() is not None,
            60,
            "the idle close to write window results",
        )
        kill(worker)
        assert worker.returncode == -signal.SIGKILL, log.read_text()[-3000:]

        # the same instance id (the host name) as the killed runs: their open transactions
        # are fenced, so read_committed readers are not held back
        final = run_cli(["run", APP, "--until-idle", "5"], env, timeout=900)
        assert final.returncode == 0, final.stderr[-3000:] + log.read_text()[-3000:]
        held = check_run(bootstrap_servers, name, expected)
        print(
            f"{summary}; {sorts}; progress at the kills {kills}; held {held}; "
            f"{time.monotonic() - started:.0f} s in all"
        )
