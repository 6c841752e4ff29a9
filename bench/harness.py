"""Runs each (case, variant, system) against the local broker and database, and measures it.

How one throughput run is measured:

1. The case's input is produced once per harness run (seeded) into a fresh topic, before
   any system starts; every system reads the same topic with its own consumer group and
   writes its own fresh output topic (or table).
2. The system starts as a child process. The window opens when its consumer group is
   stable with partitions assigned (consumption starts there; the first output is the
   fallback) and closes when the output is complete: the output topic's last stable
   offset stops at or past the expected count and a read_committed count confirms it
   (so exactly-once outputs count only once committed), or, for a table, when its rows
   and the sum of their ``seq`` equal what the input implies. Window results are then
   checked one by one against what the input implies (outside the window): every
   ``(key, start)`` once, with the right count; a run that differs fails.
3. ``records/s`` = input records / window; CPU = the child's user+system seconds in the
   window; peak RSS = the child's ``VmHWM`` (whole life). The child then gets SIGTERM.

A latency run starts the system, waits until it is consuming, sends warm-up records, then
offers ``rate`` records/s for ``seconds`` from a producer thread whose keys carry the send
time (ns); a consumer of the output computes receive time minus send time.

The failover case (a worker killed, a replacement timed) is :mod:`bench.failover`; the
keyspace case is a throughput run of the same count over a keyspace of its variant's size.

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
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import broker as kafka
from bench import commands, data, failover
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
                self._throughput(result, log)
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

    def _throughput(self, result: Result, log: Path) -> None:
        scale = SCALE.get(result.system, 1.0)
        prepared = self.prepare(result.case, scale, result.variant)
        if scale != 1.0:
            result.notes.append(
                f"reads the first {scale:.0%} of the input ({prepared.records:,} records)"
            )
        result.input_records = prepared.records
        result.outputs_expected = prepared.outputs
        child, watched, table = self._start(result, log, prepared.topic, None)
        sink = self._names(result)[1]
        try:
            if result.case == "materialise":
                expect = prepared.expect
                assert expect is not None

                def progress() -> tuple[int, ...]:
                    return self.db.table_progress(table)

                def complete(value: tuple[int, ...]) -> bool:
                    return value == (expect.rows, expect.seq_sum)

                def started(value: tuple[int, ...]) -> bool:
                    return value[0] > 0

                self._watch(result, child, watched, progress, complete, started, exact=True)
                result.outputs_seen = progress()[0]
            else:
                # the example's table holds each word's last count: they add up to the words
                tabled = result.variant == "eos-table"

                def progress() -> tuple[int, ...]:
                    if tabled:
                        return (
                            self.broker.end_offsets(sink),
                            self.db.column_sum(table, "count"),
                        )
                    return (self.broker.end_offsets(sink),)

                def complete(value: tuple[int, ...]) -> bool:
                    return value[0] >= prepared.outputs and (
                        not tabled or value[1] == prepared.outputs
                    )

                def started(value: tuple[int, ...]) -> bool:
                    return self.broker.end_offsets(sink, committed=False) > 0

                read: list[tuple[bytes | None, bytes]] = []

                def count() -> int:
                    if prepared.windows is None:
                        return self.broker.count(sink)
                    read[:] = self.broker.read(sink)  # kept for the check below
                    return len(read)

                self._watch(
                    result, child, watched, progress, complete, started, exact=False, count=count
                )
                if prepared.windows is not None:
                    if result.status == "ok":
                        self._check_windows(result, read, prepared.windows)
                    else:  # what was missing, for the error (the run failed anyway)
                        found = Result(result.case, result.variant, result.system)
                        self._check_windows(found, list(self.broker.read(sink)), prepared.windows)
                        result.error = f"{found.error or 'the results were right'}\n{result.error}"
        finally:
            end = child.stop()
            result.exit_code = end.code
            result.cpu_total_s = round(end.cpu_total_s, 2)
            result.peak_rss_mb = round(child.peak_rss_mb(), 1) or None
        if result.status != "ok" and not result.error:
            result.error = child.tail()
        if result.wall_s:
            result.records_per_s = round(result.input_records / result.wall_s, 1)
            if result.cpu_s is not None:
                result.cpu_s_per_million = round(result.cpu_s / result.input_records * 1e6, 2)

    @staticmethod
    def _check_windows(
        result: Result, read: list[tuple[bytes | None, bytes]], expect: data.WindowExpectation
    ) -> None:
        """Fails ``result`` unless ``read`` holds each expected window result once, right.

        A result is the window's key and a JSON ``{"start", "end", "value"}`` (the shape both
        flows and Quix Streams give), ``value`` the window's count.
        """
        seen: dict[tuple[str, int], int] = {}
        duplicates, malformed = 0, 0
        for key, value in read:
            try:
                doc = json.loads(value)
                window = ((key or b"").decode(), int(doc["start"]))
                counted = int(doc["value"])
                if int(doc["end"]) != window[1] + data.WINDOW_MS:
                    raise ValueError(doc)
            except (ValueError, KeyError, TypeError):
                malformed += 1
                continue
            duplicates += window in seen
            seen[window] = counted
        wanted = expect.counts
        missing = [w for w in wanted if w not in seen]
        unexpected = [w for w in seen if w not in wanted]
        wrong = [w for w, n in seen.items() if w in wanted and wanted[w] != n]
        result.outputs_seen = len(read)
        if duplicates or malformed or missing or unexpected or wrong:
            result.status = "failed"
            example = (missing or unexpected or wrong)[:3]
            result.error = (
                f"wrong window results: {len(read):,} read, {len(wanted):,} expected; "
                f"{duplicates:,} duplicates, {malformed:,} malformed, {len(missing):,} missing, "
                f"{len(unexpected):,} unexpected, {len(wrong):,} with a wrong count "
                f"(for example {example})"
            )
        else:
            result.notes.append(
                f"all {len(wanted):,} window results checked: each once, the right count"
            )

    def _watch(
        self,
        result: Result,
        child: Child,
        group: str,
        progress: Callable[[], tuple[int, ...]],
        complete: Callable[[tuple[int, ...]], bool],
        started: Callable[[tuple[int, ...]], bool],
        exact: bool,
        count: Callable[[], int] | None = None,
        settle: float = 2.5,
    ) -> None:
        """Polls until complete; fills wall_s and cpu_s (or status and error)."""
        begin = time.monotonic()
        deadline = begin + self.o.timeout
        window_start: tuple[float, float] | None = None
        last: tuple[int, ...] | None = None
        changed = (begin, 0.0)
        while True:
            now, cpu = time.monotonic(), child.cpu()
            value = progress()
            if value[0] < 0:  # the broker could not tell this time
                time.sleep(0.05)
                continue
            if window_start is None and (self.broker.group_active(group) or started(value)):
                window_start = (now, cpu)
            if value != last:
                last, changed = value, (now, cpu)
            if complete(value) and window_start is not None:
                if exact:
                    break
                if now - changed[0] >= settle:  # stopped moving: count what is committed
                    seen = count() if count is not None else value[0]
                    result.outputs_seen = seen
                    if seen >= result.outputs_expected:
                        break
                    changed = (time.monotonic(), changed[1])
            code = child.poll()
            if code is not None:
                result.status = "failed"
                result.error = (
                    f"{result.system} exited with {code} before the output was "
                    f"complete ({value} of {result.outputs_expected}):\n{child.tail()}"
                )
                return
            if now > deadline:
                result.status = "timeout"
                result.error = (
                    f"not complete after {self.o.timeout:.0f} s ({value} of "
                    f"{result.outputs_expected} expected):\n{child.tail()}"
                )
                return
            time.sleep(0.05)
        assert window_start is not None
        result.wall_s = round(changed[0] - window_start[0], 3)
        result.cpu_s = round(changed[1] - window_start[1], 2)
        if not exact:
            result.outputs_seen = max(result.outputs_seen, 0)

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
