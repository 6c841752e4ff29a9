"""Runs each (case, variant, system) against the local broker and database, and measures it.

The :class:`Harness` produces each case's input once (:meth:`Harness.prepare`), starts a
system as a child process (its argv and environment from :mod:`bench.commands`; a py-spy
profiler beside flows with ``--profile``), hands the run to what measures its case, and
removes what the runs created (:meth:`Harness.cleanup`). A throughput run (every case but
the two below; the keyspace case is one) is :mod:`bench.throughput`, which says how the
window, records/s, CPU and peak RSS are measured.

A latency run starts the system, waits until it is consuming, sends warm-up records, then
offers ``rate`` records/s for ``seconds`` from a producer thread whose keys carry the send
time (ns); a consumer of the output computes receive time minus send time.

The failover case (a worker killed, a replacement timed) is :mod:`bench.failover`. What
runs (systems, cases, variants), the options and a run's :class:`Result` are
:mod:`bench.runs`; this module re-exports them.

A run that fails (a crash, a timeout, a peer that cannot be installed) is recorded with
its error and the log's tail; the harness goes on with the next run.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from bench import broker as kafka
from bench import commands, data, failover, throughput
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
        return self.o.workdir / "state" / self._names(result)[0]

    def _names(self, result: Result) -> tuple[str, str, str]:
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
                self._latency(result, log)
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

    def _start(
        self,
        result: Result,
        log: Path,
        source: str,
        sink: str | None,
    ) -> tuple[Child, str, str]:
        case, variant, system = result.case, result.variant, result.system
        group, out, table = self._names(result)
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

    # --- latency -------------------------------------------------------------------------

    def _latency(self, result: Result, log: Path) -> None:
        o = self.o
        group, out, _ = self._names(result)
        source = f"{group}-in"
        self.broker.create_topics([source], o.partitions)
        self.topics.add(source)
        total = int(o.latency_rate * o.latency_seconds)
        result.input_records = result.outputs_expected = total
        child, watched, _ = self._start(result, log, source, out)
        try:
            self._offer_load(result, child, watched, source, out, total)
        finally:
            end = child.stop()
            result.exit_code = end.code
            result.cpu_total_s = round(end.cpu_total_s, 2)
            result.peak_rss_mb = round(child.peak_rss_mb(), 1) or None

    def _offer_load(
        self, result: Result, child: Child, group: str, source: str, sink: str, total: int
    ) -> None:
        from confluent_kafka import Consumer, Producer, TopicPartition

        o = self.o
        deadline = time.monotonic() + min(o.timeout, 180)
        while not self.broker.group_active(group):
            if child.poll() is not None or time.monotonic() > deadline:
                result.status = "failed" if child.poll() is not None else "timeout"
                result.error = f"the system never started consuming:\n{child.tail()}"
                return
            time.sleep(0.1)
        latencies: list[int] = []
        warm = threading.Event()
        done = threading.Event()
        stop = threading.Event()

        def consume() -> None:
            consumer = Consumer(
                {
                    "bootstrap.servers": o.bootstrap,
                    "group.id": f"{sink}-lat",
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 5,
                    "enable.auto.commit": False,
                }
            )
            consumer.assign([TopicPartition(sink, p, 0) for p in range(o.partitions)])
            try:
                while not stop.is_set():
                    # consume(n, timeout) waits out its timeout until it has n records: the
                    # first of them would be timed up to 50 ms late. What is fetched is read
                    # at once; otherwise the wait is for one record only.
                    messages = consumer.consume(1000, 0) or consumer.consume(1, 0.05)
                    received = time.time_ns()
                    for message in messages:
                        key = message.key()
                        if message.error() is not None or not key:
                            continue
                        if key.startswith(b"w"):
                            warm.set()
                        else:
                            latencies.append(received - int(key))
                    if len(latencies) >= total:
                        done.set()
            finally:
                consumer.close()

        reader = threading.Thread(target=consume, name="latency-consumer", daemon=True)
        reader.start()
        producer = Producer(
            {
                "bootstrap.servers": o.bootstrap,
                "linger.ms": 1,
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
            }
        )
        rng = random.Random(o.seed)
        try:
            warm_until = time.monotonic() + 60
            while not warm.is_set() and time.monotonic() < warm_until:  # warm-up records
                for i in range(10):
                    value = json.dumps(data.json_record(rng, i), separators=(",", ":"))
                    producer.produce(source, value.encode(), f"w{i}".encode())
                producer.flush(5)
                warm.wait(1.0)
            if not warm.is_set():
                result.status = "failed"
                result.error = f"no warm-up record came through in 60 s:\n{child.tail()}"
                return
            values = [
                json.dumps(data.json_record(rng, i), separators=(",", ":")).encode()
                for i in range(min(total, 10000))
            ]
            cpu_before, started = child.cpu(), time.monotonic()
            tick = 0.005
            per_tick = max(1, round(o.latency_rate * tick))
            sent = 0
            while sent < total:
                due = started + sent / o.latency_rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                for _ in range(min(per_tick, total - sent)):
                    producer.produce(
                        source, values[sent % len(values)], str(time.time_ns()).encode()
                    )
                    sent += 1
                producer.poll(0)
            producer.flush(30)
            offered = time.monotonic() - started
            done.wait(max(30.0, o.latency_seconds))
            result.cpu_s = round(child.cpu() - cpu_before, 2)
            result.wall_s = round(offered, 3)
        finally:
            stop.set()
            reader.join(10)
        result.outputs_seen = len(latencies)
        code = child.poll()
        if code is not None:
            result.status = "failed"
            result.error = (
                f"{result.system} exited with {code} under load ({len(latencies)} of "
                f"{total} outputs arrived):\n{child.tail()}"
            )
        elif len(latencies) < total:
            result.status = "saturated"
            result.error = (
                f"could not keep up with {o.latency_rate:,} records/s: {len(latencies)} of "
                f"{total} outputs arrived by 30 s after the load ended (latencies of those)"
            )
        if latencies:
            ordered = sorted(latencies)

            def pct(q: float) -> float:
                return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 2)

            result.latency_ms = {
                "p50": pct(0.50),
                "p90": pct(0.90),
                "p99": pct(0.99),
                "max": round(ordered[-1] / 1e6, 2),
                "offered_per_s": round(total / result.wall_s, 1) if result.wall_s else 0.0,
            }
            if result.cpu_s is not None:
                result.cpu_s_per_million = round(result.cpu_s / total * 1e6, 2)

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
