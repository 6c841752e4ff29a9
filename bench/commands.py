"""The command line and environment that start each system under test.

Every system is a child process configured only by ``BENCH_*`` environment variables
(the scripts in ``bench/systems/`` read them; flows' through its app file): the case it
runs, at-least-once or exactly-once, the broker and database, its input and output topics,
its consumer group and table, its local state directory. :func:`command` builds them and
the argv: ``flows run`` (with ``--processes``), raw, durable, Quix Streams and Faust in
their own virtualenvs (:mod:`bench.envs`), Kafka Streams' JVM (:mod:`bench.jvm`).

A command also records, on the harness, what the system will create beyond its own group
and table (flows' per-step groups and state tables, durable's bookkeeping), so that
:meth:`bench.harness.Harness.cleanup` removes them.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bench import data, failover, jvm
from bench.envs import REPO, peer_python
from bench.runs import FLOWS_PROCESSES, STATE_CASES, SYSTEM_CASE

if TYPE_CHECKING:
    from bench.harness import Harness

SYSTEMS_DIR = Path(__file__).resolve().parent / "systems"


def command(
    h: Harness,
    case: str,
    variant: str,
    system: str,
    source: str,
    sink: str,
    group: str,
    table: str,
    state_dir: Path,
    log: Path,
) -> tuple[list[str], dict[str, str], str]:
    """argv, environment and the consumer group whose activity opens the window."""
    db = urlsplit(h.o.database_url)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "BENCH_CASE": SYSTEM_CASE.get(case, case),
        # the state cases are exactly-once, as flows' stateful steps always are
        "BENCH_MODE": "eos" if variant.startswith("eos") or case in STATE_CASES else "alos",
        "BENCH_VARIANT": variant,
        "BENCH_BOOTSTRAP": h.o.bootstrap,
        "BENCH_DB_URL": h.o.database_url,
        "BENCH_DB_HOST": db.hostname or "localhost",
        "BENCH_DB_PORT": str(db.port or 5432),
        "BENCH_DB_NAME": db.path.lstrip("/") or "postgres",
        "BENCH_DB_USER": db.username or "postgres",
        "BENCH_DB_PASSWORD": db.password or "",
        "BENCH_IN": source,
        "BENCH_OUT": sink,
        "BENCH_GROUP": group,
        "BENCH_APP": group,
        "BENCH_TABLE": table,
        "BENCH_PARTITIONS": str(h.o.partitions),
        "BENCH_WINDOW_MS": str(data.WINDOW_MS),
        "BENCH_STATE_DIR": str(state_dir),
    }
    if case == "failover":  # the bench waits for a killed member's session to end
        timeout = str(failover.SESSION_TIMEOUT_MS)
        env.update({"BENCH_SESSION_TIMEOUT_MS": timeout, "FLOWS_SESSION_TIMEOUT_MS": timeout})
    if system in FLOWS_PROCESSES:
        env.update(
            {
                "FLOWS_BOOTSTRAP_SERVERS": h.o.bootstrap,
                "FLOWS_DATABASE_URL": h.o.database_url,
                "FLOWS_INSTANCE_ID": "bench",
                # no HTTP server: parallel runs (and other tests) would fight for a port
                "FLOWS_HTTP_PORT": "0",
                # this checkout's flows, not the one the venv's editable install points
                # at (a worktree shares the main checkout's venv)
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
                ),
            }
        )
        argv = [
            # a memory profiler in front (heaptrack): what --profile is for CPU
            *shlex.split(os.environ.get("BENCH_FLOWS_WRAP", "")),
            str(Path(sys.executable).parent / "flows"),
            "run",
            str(SYSTEMS_DIR / "flows_app.py"),
            "--until-idle",
            "300",
            # flows-x2: two worker processes under a supervisor (its children's CPU and
            # memory count, see measure.Child)
            "--processes",
            str(FLOWS_PROCESSES[system]),
        ]
        first = {
            "stateless-json": "shout",
            "wordcount": "split",
            "materialise": "store",
            "windowed": "per_minute",
            "count": "count",
        }
        watched = f"{group}.{first[env['BENCH_CASE']]}"
        h.flows_groups.update(
            f"{group}.{s}" for s in ("shout", "split", "count", "store", "per_minute")
        )
        if env["BENCH_CASE"] in ("wordcount", "count"):
            h.flows_tables.add(re.sub(r"[^a-zA-Z0-9_]", "_", group).lower() + "_count_state")
        return argv, env, watched
    if system == "raw":
        return [sys.executable, str(SYSTEMS_DIR / "raw.py")], env, group
    if system == "durable":  # its second stage's group and its bookkeeping tables
        h.groups.add(f"{group}.count")
        h.tables.update({f"{table}_offsets", f"{table}_pending"})
        # the count case runs its count stage alone: that group's activity opens the window
        watched = f"{group}.count" if env["BENCH_CASE"] == "count" else group
        return [sys.executable, str(SYSTEMS_DIR / "durable.py")], env, watched
    if system == "kafka-streams":  # the JVM itself is the child: its CPU and RSS count
        return jvm.command(system, log), env, group
    python = peer_python(system, log)
    script = {"quixstreams": "quix.py", "faust": "faust_app.py"}[system]
    return [str(python), str(SYSTEMS_DIR / script)], env, group
