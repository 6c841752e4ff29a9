"""Runs each (case, variant, system) against the local broker and database, and measures it.

The :class:`Harness` produces each case's input once (:meth:`Harness.prepare`), starts a
system as a child process (its argv and environment from :mod:`bench.commands`; a py-spy
profiler beside flows with ``--profile``), hands the run to what measures its case, and
removes what the runs created (:meth:`Harness.cleanup`). A throughput run (every case but
the two below; the keyspace case is one) is :mod:`bench.throughput`, which says how the
window, records/s, CPU and peak RSS are measured; a latency run
(``stateless-json-latency``) is :mod:`bench.latency`.

The failover case (a worker killed, a replacement timed) is :mod:`bench.failover`. What
runs (systems, cases, variants), the options and a run's :class:`Result` are
:mod:`bench.runs`; this module re-exports them.

A run that fails (a crash, a timeout, a peer that cannot be installed) is recorded with
its error and the log's tail; the harness goes on with the next run.
"""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from bench import broker as kafka
from bench import commands, data, failover, latency, throughput
from bench.commands import SYSTEMS_DIR
from bench.envs import REPO, EnvError
from bench.measure import Child
from bench.runs import (
    CASE_SYSTEMS,
    CASES,
    FLOWS_PROCESSES,
    NOT_APPLICABLE,
    SCALE,
    STATE_CASES,
    SYSTEM_CASE,
    SYSTEM_CASES,
    SYSTEMS,
    VARIANT_SYSTEMS,
    VARIANTS,
    Options,
    Prepared,
    Result,
    keyspace_records,
    result_dict,
    variants,
)

# bench.runs holds these now; its importers (bench.cli, bench.failover, the tests) keep
# importing them from here
__all__ = [
    "CASES",
    "CASE_SYSTEMS",
    "FLOWS_PROCESSES",
    "NOT_APPLICABLE",
    "SCALE",
    "STATE_CASES",
    "SYSTEMS",
    "SYSTEMS_DIR",
    "SYSTEM_CASE",
    "SYSTEM_CASES",
    "VARIANTS",
    "VARIANT_SYSTEMS",
    "Harness",
    "Options",
    "Prepared",
    "Result",
    "keyspace_records",
    "result_dict",
    "variants",
]


class Harness:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.broker = kafka.Broker(options.bootstrap)
        self.prefix = f"bench-{options.run_id}"
        self.inputs: dict[str, Prepared] = {}
        self.topics: set[str] = set()
        self.tables: set[str] = set()
        self.groups: set[str] = set()
        self.flows_groups: set[str] = set()
        self.flows_tables: set[str] = set()
        self.db = kafka.Database(options.database_url)
        self.profilers: list[Child] = []
        self.profiled: set[Path] = set()
        options.workdir.mkdir(parents=True, exist_ok=True)

    # --- inputs --------------------------------------------------------------------------

    def prepare(self, case: str, scale: float = 1.0, variant: str | None = None) -> Prepared:
        """The case's input topic, produced on first use (one topic for every system).

        ``scale`` < 1 gives a topic of the first records only (see :data:`SCALE`); the
        failover and keyspace cases have a topic per ``variant`` (a size in keys).
        """
        name = case if scale == 1.0 else f"{case}-x{scale:g}"
        if variant is not None and case in STATE_CASES:
            name = f"{case}-{variant}"
        if name in self.inputs:
            return self.inputs[name]
        o = self.o
        topic = f"{self.prefix}-{name}-in"
        self.broker.create_topics([topic], o.partitions)
        self.topics.add(topic)
        expect = None
        windows = None
        records: Iterator[tuple[bytes | None, bytes]]
        lines, count = max(1, int(o.lines * scale)), max(1, int(o.records * scale))
        if case == "stateless-json":
            records, outputs = data.stateless_json(o.seed, count), count
        elif case == "wordcount":
            records, count, outputs = data.wordcount_lines(o.seed, lines), lines, lines * 10
        elif case == "materialise":
            expect = data.MaterialiseExpectation()
            records = data.materialise_rows(o.seed, count, o.keys, expect)
            outputs = count
        elif case == "windowed":
            windows = data.WindowExpectation()
            records = data.windowed_events(o.seed, count, o.window_keys, windows)
            count, outputs = count + o.window_keys, 0  # the closing records; set below
        elif case == "failover":  # one record per key: the state to fail over with
            keys = int(variant or 0)
            records, count, outputs = data.keyed_passes(o.seed, keys, keys, b"b"), keys, keys
        elif case == "keyspace":
            keys = int(variant or 0)
            count = outputs = keyspace_records(keys, o)
            records = data.keyed_passes(o.seed, count, keys, b"k")
        else:
            raise ValueError(case)
        print(f"bench: producing {count:,} {case} records to {topic} ...", flush=True)
        started = time.monotonic()
        kafka.produce(o.bootstrap, topic, records)
        prepared = Prepared(topic, count, outputs, expect, windows, time.monotonic() - started)
        if expect is not None:
            prepared.outputs = expect.rows
        if windows is not None:
            prepared.outputs = len(windows.counts)
        self.inputs[name] = prepared
        return prepared

    # --- a run's names -------------------------------------------------------------------

    def state_dir(self, result: Result) -> Path:
        """The local state directory of ``result``'s system (RocksDB, for the peers)."""
        return self.o.workdir / "state" / self.names(result)[0]

    def names(self, result: Result) -> tuple[str, str, str]:
        """The run's consumer group (the base of its other names), output topic and table."""
        base = f"{self.prefix}-{result.case}-{result.variant}-{result.system}{result.suffix}"
        table = re.sub(r"[^a-z0-9_]", "_", base.lower())
        return base, f"{base}-out", table

    # --- one run -------------------------------------------------------------------------

    def run(self, case: str, variant: str, system: str, attempt: int = 0) -> Result:
        result = Result(case, variant, system, attempt=attempt)
        reason = NOT_APPLICABLE.get((case, system))
        if reason is not None:
            result.status, result.error = "n/a", reason
            return result
        log = self.o.workdir / f"{case}-{variant}-{system}{result.suffix}.log"
        result.log = str(log.relative_to(REPO)) if log.is_relative_to(REPO) else str(log)
        try:
            if case == "stateless-json-latency":
                latency.run(self, result, log)
            elif case == "failover":
                failover.run(self, result, log)
            else:
                throughput.run(self, result, log)
        except EnvError as error:
            result.status, result.error = "failed", str(error)
        except Exception as error:
            result.status = "failed"
            result.error = f"harness: {type(error).__name__}: {error}"
            traceback.print_exc()
        return result

    def start(
        self,
        result: Result,
        log: Path,
        source: str,
        sink: str | None,
    ) -> tuple[Child, str, str]:
        """Starts ``result``'s system reading ``source`` and writing ``sink`` (or the run's
        output topic): the child, the consumer group whose activity opens the window, and
        the run's table.

        Creates the output topics, and records every topic, group and table the run will
        create, for :meth:`cleanup`. :mod:`bench.throughput`, :mod:`bench.latency` and
        :mod:`bench.failover` start their systems here.
        """
        case, variant, system = result.case, result.variant, result.system
        group, out, table = self.names(result)
        sink = sink or out
        self.groups.add(group)
        if case != "materialise":
            self.broker.create_topics([sink], self.o.partitions)
        # Faust creates no topic it declares; durable creates none
        if case == "wordcount" and system in ("faust", "durable"):
            self.broker.create_topics([f"{sink}.words"], self.o.partitions)
        self.topics.update({sink, f"{sink}.words"})
        self.tables.add(table)
        state_dir = self.state_dir(result)
        state_dir.mkdir(parents=True, exist_ok=True)
        argv, env, watched = commands.command(
            self, case, variant, system, source, sink, group, table, state_dir, log
        )
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(argv)}\n")
        child = Child(argv, env, log, REPO)
        if self.o.profile is not None and system == "flows":  # py-spy follows one process
            # Sampled from outside (py-spy attaches by pid), so the figures stay comparable;
            # it writes collapsed stacks once the process exits.
            # the failover case starts several processes of one run: a file each
            name = f"{case}-{variant}-flows{result.suffix}"
            written = self.o.profile / f"{name}.txt"
            again = 1
            while written in self.profiled:
                again += 1
                written = self.o.profile / f"{name}-{again}.txt"
            self.profiled.add(written)
            self.profilers.append(
                Child(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(child.pid),
                        "--rate",
                        "100",
                        "--nonblocking",
                        "--threads",
                        *(["--idle"] if self.o.profile_idle else []),
                        "--format",
                        "raw",
                        "-o",
                        str(written),
                    ],
                    os.environ,
                    log.with_suffix(".py-spy.log"),
                    REPO,
                )
            )
        return child, watched, table

    # --- cleanup -------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Deletes this run's topics, groups and tables (best effort)."""
        try:
            mine = [t for t in self.broker.existing() if self.prefix in t]
            self.broker.delete_topics(mine)
            self.broker.delete_groups(sorted(self.groups | self.flows_groups))
            self.db.drop_tables(sorted(self.tables | self.flows_tables))
            if self.flows_groups:
                from runtimes.postgres import PostgresStateStore

                store = PostgresStateStore(self.o.database_url)
                try:
                    store.forget_groups(sorted(self.flows_groups))
                finally:
                    store.close()
        except Exception as error:
            print(f"bench: cleanup incomplete: {error}", file=sys.stderr)

    def close(self) -> None:
        for profiler in self.profilers:  # each ends (and writes) when its process ended
            profiler.stop(grace=60)
        self.broker.close()
        self.db.close()
