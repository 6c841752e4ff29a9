"""The command line of the benchmarks.

Examples::

    python -m bench                                   # everything; writes the report
    python -m bench --quick                           # 100,000 records, a few minutes
    python -m bench --case stateless-json --system flows
    python -m bench --case wordcount --profile bench-profiles   # py-spy on flows

A full run (no ``--quick``, ``--case`` or ``--system``) writes ``bench/results/latest.json``,
``BENCHMARKS.md`` and ``bench/results/*.png``; other runs write their JSON next to their
logs in ``.cache/bench-runs/<run>/`` (``--write-report`` writes the report all the same).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import jvm, report, report_state, targets
from bench.envs import DISTRIBUTIONS, REPO, VENVS, ensure_main, version_of
from bench.harness import (
    CASE_SYSTEMS,
    CASES,
    SYSTEM_CASES,
    SYSTEMS,
    VARIANT_SYSTEMS,
    Harness,
    Options,
    Result,
    result_dict,
    variants,
)

RESULTS = REPO / "bench" / "results"
ORDER = ("raw", "durable", "flows", "flows-x2", "quixstreams", "kafka-streams", "faust")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="flows benchmarks, side by side with hand-written confluent-kafka "
        "(raw, and durable raw for wordcount), Quix Streams, Kafka Streams and Faust",
    )
    p.add_argument(
        "--quick", action="store_true", help="100,000 records (20,000 lines), short latency runs"
    )
    p.add_argument("--case", action="append", choices=CASES, help="run only this case (repeatable)")
    p.add_argument(
        "--system", action="append", choices=SYSTEMS, help="run only this system (repeatable)"
    )
    p.add_argument(
        "--variant",
        action="append",
        help="run only this variant, such as eos or eos-table (repeatable)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each system this many times and report the median run (its notes list all)",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the generated data")
    p.add_argument(
        "--records", type=int, help="records of stateless-json, materialise and windowed"
    )
    p.add_argument("--lines", type=int, help="lines of wordcount")
    p.add_argument("--keys", type=int, help="distinct keys of materialise")
    p.add_argument(
        "--window-keys", type=int, default=1000, help="distinct keys of windowed (default 1000)"
    )
    p.add_argument(
        "--failover-keys",
        type=int,
        action="append",
        help="a state size of failover, in keys (repeatable; default 100,000 and 1,000,000, "
        "quick 10,000 and 100,000)",
    )
    p.add_argument(
        "--failover-fresh",
        type=int,
        help="records produced after each kill in failover (default 20,000, quick 5,000)",
    )
    p.add_argument(
        "--keyspace",
        type=int,
        action="append",
        help="a keyspace of the keyspace case, in distinct keys (repeatable; default 5,000, "
        "100,000 and 2,000,000, quick 1,000, 10,000 and 100,000)",
    )
    p.add_argument(
        "--keyspace-records",
        type=int,
        help="records of the keyspace case, at least (and at least two per key; default "
        "1,000,000, quick 100,000)",
    )
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--latency-rate", type=int, default=10_000, help="offered records/s")
    p.add_argument("--latency-seconds", type=float, help="how long the load is offered")
    p.add_argument("--timeout", type=float, help="seconds a single run may take")
    p.add_argument(
        "--bootstrap-servers", default=os.environ.get("FLOWS_BOOTSTRAP_SERVERS", "localhost:9092")
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "FLOWS_DATABASE_URL", "postgresql://postgres:postgres@localhost:5432/flows"
        ),
    )
    p.add_argument("--keep", action="store_true", help="keep the run's topics, groups and tables")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run flows under py-spy and write its raw profiles to DIR",
    )
    p.add_argument(
        "--profile-idle",
        action="store_true",
        help="with --profile: sample waiting threads too (py-spy --idle), to see where flows "
        "waits (PostgreSQL, Kafka) as well as where it computes",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="merge this run's results into bench/results/latest.json (replacing the same "
        "case, mode and system) and rewrite the report: reruns a failed case",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite BENCHMARKS.md and the charts from bench/results/latest.json",
    )
    p.add_argument(
        "--write-report",
        action="store_true",
        help="write latest.json and BENCHMARKS.md even for a partial run",
    )
    return p


def _meminfo_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _versions(systems: Sequence[str]) -> dict[str, str]:
    import confluent_kafka

    import flows

    found = {
        "flows": flows.__version__,
        "confluent-kafka (flows, raw)": version_of(Path(sys.executable), "confluent-kafka"),
        "librdkafka (flows, raw)": confluent_kafka.libversion()[0],
        "psycopg (flows, durable raw)": version_of(Path(sys.executable), "psycopg"),
    }
    for system in systems:
        python = VENVS / system / "bin" / "python"
        if system in DISTRIBUTIONS and python.exists():
            found[DISTRIBUTIONS[system]] = version_of(python, DISTRIBUTIONS[system])
            found[
                f"confluent-kafka ({system})" if system == "quixstreams" else f"aiokafka ({system})"
            ] = version_of(python, "confluent-kafka" if system == "quixstreams" else "aiokafka")
    if "kafka-streams" in systems:
        found.update(jvm.versions())
    try:
        import psycopg

        with psycopg.connect(
            os.environ.get(
                "FLOWS_DATABASE_URL", "postgresql://postgres:postgres@localhost:5432/flows"
            ),
            connect_timeout=5,
        ) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["PostgreSQL"] = str(row[0]).split()[0] if row else "?"
    except Exception:
        found["PostgreSQL"] = "?"
    return found


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update``'s runs in place of the same (case, variant, system)."""
    fresh = {(r["case"], r["variant"], r["system"]): r for r in update["results"]}
    results = []
    for r in base["results"]:
        key = (r["case"], r["variant"], r["system"])
        replaced = fresh.pop(key, None)
        if replaced is not None:
            replaced = {
                **replaced,
                "notes": [*replaced.get("notes", []), f"rerun {update['meta']['run_id']}"],
            }
        results.append(replaced or r)
    results.extend(fresh.values())
    meta = dict(base["meta"])
    meta["versions"] = {**meta.get("versions", {}), **update["meta"]["versions"]}
    meta["updated_by"] = [
        *meta.get("updated_by", []),
        {
            "run_id": update["meta"]["run_id"],
            "started_at": update["meta"]["started_at"],
            "runs": [f"{r['case']}/{r['variant']}/{r['system']}" for r in update["results"]],
        },
    ]
    doc = {"meta": meta, "results": results}
    doc["targets"] = targets.targets(results)
    return doc


def median_run(runs: list[Result]) -> Result:
    """The median of repeated runs (by throughput, or by p99 latency), noting all of them:
    on a shared 2-core machine single runs of one case vary by about 15%."""
    if len(runs) == 1:
        return runs[0]
    ok = [r for r in runs if r.status == "ok"]
    if len(ok) < len(runs):
        failed = next(r for r in runs if r.status != "ok")
        failed.notes.append(f"{len(runs) - len(ok)} of {len(runs)} runs did not end ok")
        return failed

    def figure(r: Result) -> float:
        if r.latency_ms:
            return r.latency_ms["p99"]
        if r.failover:
            return report_state.failover_figure(r.failover) or 0.0
        return r.records_per_s or 0.0

    ranked = sorted(ok, key=figure)
    chosen = ranked[(len(ranked) - 1) // 2]
    unit = "ms p99" if chosen.latency_ms else "records/s"
    shown = ", ".join(f"{figure(r):,.0f}" for r in ok)
    if chosen.failover:
        unit = "s to the first output on a new host"
        shown = ", ".join(f"{figure(r):,.2f}" for r in ok)
    chosen.notes.append(f"median of {len(runs)} runs: {shown} {unit}")
    if figure(chosen):
        chosen.spread = round((figure(ranked[-1]) - figure(ranked[0])) / figure(chosen), 3)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.repeat < 1:
        print("bench: --repeat must be at least 1", file=sys.stderr)
        return 2
    if args.report_only:
        doc = json.loads((RESULTS / "latest.json").read_text())
        systems = sorted({r["system"] for r in doc["results"]})
        doc["meta"]["versions"] = {**doc["meta"].get("versions", {}), **_versions(systems)}
        doc["targets"] = targets.targets(doc["results"])
        ensure_main("matplotlib", "matplotlib")
        report.write(doc, RESULTS / "latest.json", REPO / "BENCHMARKS.md", RESULTS, REPO)
        print(report.summary(doc))
        return 0
    quick = args.quick
    partial = bool(args.case or args.system or args.variant)
    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    options = Options(
        seed=args.seed,
        records=args.records or (100_000 if quick else 1_000_000),
        lines=args.lines or (20_000 if quick else 200_000),
        keys=args.keys or (10_000 if quick else 100_000),
        partitions=args.partitions,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds or (3.0 if quick else 20.0),
        timeout=args.timeout or (180.0 if quick else 900.0),
        bootstrap=args.bootstrap_servers,
        database_url=args.database_url,
        run_id=run_id,
        workdir=REPO / ".cache" / "bench-runs" / run_id,
        quick=quick,
        keep=args.keep,
        profile=args.profile.resolve() if args.profile else None,
        profile_idle=args.profile_idle,
        window_keys=args.window_keys,
        failover_keys=tuple(
            args.failover_keys or ((10_000, 100_000) if quick else (100_000, 1_000_000))
        ),
        failover_fresh=args.failover_fresh or (5_000 if quick else 20_000),
        keyspaces=tuple(
            args.keyspace or ((1_000, 10_000, 100_000) if quick else (5_000, 100_000, 2_000_000))
        ),
        keyspace_records=args.keyspace_records or (100_000 if quick else 1_000_000),
    )
    if options.profile is not None:
        options.profile.mkdir(parents=True, exist_ok=True)
        if (
            not ensure_main("py-spy", "py_spy")
            and not (Path(sys.executable).parent / "py-spy").exists()
        ):
            print("bench: --profile needs py-spy", file=sys.stderr)
            return 2
    # Quick leaves Faust out unless asked for: at ~3,000 records/s it alone would take
    # longer than everything else together.
    systems = [
        s for s in ORDER if (s in args.system if args.system else not (quick and s == "faust"))
    ]
    cases = [c for c in CASES if not args.case or c in args.case]
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    began = time.monotonic()
    harness = Harness(options)
    results: list[dict[str, Any]] = []

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGTERM unwinds like Ctrl-C, so the running system is stopped and what ran reported.
    signal.signal(signal.SIGTERM, interrupted)
    try:
        for case in cases:
            for variant in variants(case, options):
                if args.variant and variant not in args.variant:
                    continue
                for system in systems:
                    if system not in VARIANT_SYSTEMS.get((case, variant), (system,)):
                        continue
                    if case not in SYSTEM_CASES.get(system, (case,)):
                        continue
                    if system not in CASE_SYSTEMS.get(case, (system,)):
                        continue
                    print(f"bench: {case} [{variant}] {system} ...", flush=True)
                    runs = [harness.run(case, variant, system)]
                    # a system that cannot run a case (n/a) is not run again
                    for attempt in range(1, args.repeat if runs[0].status != "n/a" else 1):
                        print(f"bench: {case} [{variant}] {system}, run {attempt + 1} ...")
                        runs.append(harness.run(case, variant, system, attempt))
                    result = median_run(runs)
                    results.append(result_dict(result))
                    shown = f"{result.records_per_s:,.0f} records/s" if result.records_per_s else ""
                    if result.failover:
                        shown = report_state.failover_line(result.failover)
                    if result.latency_ms:
                        shown = (
                            f"p50 {result.latency_ms['p50']:.1f} ms, "
                            f"p99 {result.latency_ms['p99']:.1f} ms"
                        )
                    first = (result.error or "").strip().splitlines()
                    print(
                        f"bench:   -> {result.status} {shown} "
                        f"cpu {result.cpu_s_per_million} s/1M, "
                        f"rss {result.peak_rss_mb} MB"
                        + (f" ({first[0][:200]})" if first and result.status != "ok" else ""),
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("bench: interrupted; reporting what ran", file=sys.stderr)
    finally:
        if not options.keep:
            harness.cleanup()
        harness.close()
    doc = {
        "meta": {
            "run_id": run_id,
            "started_at": started_at,
            "duration_s": round(time.monotonic() - began, 1),
            "quick": quick,
            "partial": partial,
            "cpus": os.cpu_count(),
            "memory_gb": round(_meminfo_gb(), 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": _versions(systems),
            "seed": options.seed,
            "repeat": args.repeat,
            "records": options.records,
            "lines": options.lines,
            "keys": options.keys,
            "window_keys": options.window_keys,
            "failover_keys": list(options.failover_keys),
            "failover_fresh": options.failover_fresh,
            "keyspaces": list(options.keyspaces),
            "keyspace_records": options.keyspace_records,
            "partitions": options.partitions,
            "latency_rate": options.latency_rate,
            "latency_seconds": options.latency_seconds,
            "timeout_s": options.timeout,
            "bootstrap_servers": options.bootstrap,
            "inputs": {
                case: {
                    "topic": p.topic,
                    "records": p.records,
                    "outputs": p.outputs,
                    "produce_s": round(p.produce_s, 2),
                }
                for case, p in harness.inputs.items()
            },
        },
        "results": results,
    }
    doc["targets"] = targets.targets(results)
    full = not quick and not partial
    if args.update and (RESULTS / "latest.json").exists():
        doc = merge(json.loads((RESULTS / "latest.json").read_text()), doc)
    if full or args.write_report or args.update:
        ensure_main("matplotlib", "matplotlib")
        report.write(doc, RESULTS / "latest.json", REPO / "BENCHMARKS.md", RESULTS, REPO)
        where = f"{RESULTS / 'latest.json'} and {REPO / 'BENCHMARKS.md'}"
    else:
        report.write(doc, options.workdir / "results.json", None, None, REPO)
        where = str(options.workdir / "results.json")
    print()
    print(report.summary(doc))
    print(f"\nbench: {len(results)} runs in {doc['meta']['duration_s']:.0f} s; written to {where}")
    return 0
