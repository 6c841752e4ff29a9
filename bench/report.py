"""Turns a run's results into ``latest.json``, ``BENCHMARKS.md`` and bar charts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report_state

LABELS = {
    "raw": "raw (confluent-kafka)",
    "durable": "durable raw (confluent-kafka + psycopg)",
    "flows": "flows",
    "flows-x2": "flows, 2 processes",
    "quixstreams": "Quix Streams",
    "kafka-streams": "Kafka Streams",
    "faust": "Faust",
}
#: The systems a table compares each row with: raw and Quix Streams always, the others
#: where the case has a row of theirs.
VERSUS = {
    "raw": "raw",
    "durable": "durable raw",
    "quixstreams": "Quix Streams",
    "kafka-streams": "Kafka Streams",
}
ALWAYS_VERSUS = ("raw", "quixstreams")
VARIANT_LABELS = {
    "alos": "at-least-once",
    "eos": "exactly-once",
    "eos-table": "exactly-once + table",
    "upsert": "upsert",
}


def _find(
    results: Sequence[dict[str, Any]], case: str, variant: str, system: str
) -> dict[str, Any] | None:
    for r in results:
        if (r["case"], r["variant"], r["system"]) == (case, variant, system):
            return r
    return None


def _rate(r: dict[str, Any] | None) -> float | None:
    if r is None or r.get("status") != "ok":
        return None
    value = r.get("records_per_s")
    return float(value) if value else None


def ratio(
    results: Sequence[dict[str, Any]], case: str, variant: str, system: str, versus: str
) -> float | None:
    """``system``'s records/s over ``versus``'s, same case and variant."""
    mine, theirs = (
        _rate(_find(results, case, variant, system)),
        _rate(_find(results, case, variant, versus)),
    )
    if mine is None or theirs is None:
        return None
    return round(mine / theirs, 2)


def targets(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for flows, each with its measured value and met / not met."""
    found: list[dict[str, Any]] = []

    def add(
        name: str, value: float | None, goal: float, below: bool = False, unit: str = "x"
    ) -> None:
        met = None if value is None else (value < goal if below else value >= goal)
        found.append({"target": name, "value": value, "goal": goal, "unit": unit, "met": met})

    for variant in ("alos", "eos"):
        add(
            f"stateless-json ({VARIANT_LABELS[variant]}) >= 0.8x raw",
            ratio(results, "stateless-json", variant, "flows", "raw"),
            0.8,
        )
    add(
        "wordcount >= 3x Quix Streams exactly-once",
        ratio(results, "wordcount", "eos", "flows", "quixstreams"),
        3.0,
    )
    add(
        "wordcount >= 0.8x durable raw (the same guarantees, no framework)",
        ratio(results, "wordcount", "eos", "flows", "durable"),
        0.8,
    )
    add("materialise >= 0.8x raw", ratio(results, "materialise", "upsert", "flows", "raw"), 0.8)
    add(
        "windowed >= 3x Quix Streams exactly-once",
        ratio(results, "windowed", "eos", "flows", "quixstreams"),
        3.0,
    )
    rss = [
        r["peak_rss_mb"]
        for r in results
        if r["system"] == "flows" and r.get("peak_rss_mb") and r["status"] == "ok"
    ]
    add("flows peak RSS < 150 MB", max(rss) if rss else None, 150.0, below=True, unit="MB")
    report_state.targets(results, add)
    return found


def versus_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The systems a case's table compares each row with (see :data:`VERSUS`), in order."""
    present = {r["system"] for r in rows}
    return [v for v in VERSUS if v in ALWAYS_VERSUS or v in present]


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _target_value(t: dict[str, Any]) -> str:
    if t["value"] is None:
        return "-"
    if t["unit"] == "x":
        return f"{t['value']:.2f}x"
    if t["unit"] == "s":
        return f"{t['value']:.2f} s"
    return f"{t['value']:.0f} MB"


def _status(r: dict[str, Any]) -> str:
    if r["status"] == "ok":
        return "ok"
    first = (r.get("error") or "").strip().splitlines()
    return f"{r['status']}: {first[0][:90] if first else ''}"


def _state_setup(meta: dict[str, Any]) -> str:
    """The state cases' sizes, for the setup line (empty for older results)."""
    text = ""
    if meta.get("failover_keys"):
        text += (
            "; failover with "
            + " and ".join(f"{n:,}" for n in meta["failover_keys"])
            + f" keys of state, {meta['failover_fresh']:,} fresh records per kill"
        )
    if meta.get("keyspaces"):
        text += (
            "; keyspace over "
            + ", ".join(f"{n:,}" for n in meta["keyspaces"])
            + f" keys, {meta['keyspace_records']:,} records or two per key, whichever is more"
        )
    return text


def markdown(doc: dict[str, Any], charts: Sequence[str]) -> str:
    meta, results = doc["meta"], doc["results"]
    lines = [
        "# Benchmarks",
        "",
        "flows side by side with its peers, generated by `python -m bench` (`make bench`); do",
        "not edit by hand. The figures are from one run on one machine; read the ratios, not",
        "the absolute numbers.",
        "",
        "## Setup",
        "",
        f"- run `{meta['run_id']}` at {meta['started_at']}, {meta['duration_s']:.0f} s in all"
        + (" (**quick mode**: small inputs)" if meta.get("quick") else ""),
        f"- machine: {meta['cpus']} cores, {meta['memory_gb']:.1f} GB, {meta['platform']}; "
        "the broker, PostgreSQL, the harness and the system under test share it",
        f"- Python {meta['python']}; "
        + ", ".join(f"{name} {version}" for name, version in meta["versions"].items()),
        f"- seed {meta['seed']}; {meta['records']:,} records (stateless-json, materialise with "
        f"{meta['keys']:,} keys), {meta['lines']:,} lines of 10 words from a 5,000-word "
        f"vocabulary (wordcount); {meta['records']:,} events of "
        f"{meta.get('window_keys', 1000):,} keys, about 10 per key per one-minute window, "
        "and a closing event per key (windowed); "
        f"{meta['partitions']} partitions; latency at "
        f"{meta['latency_rate']:,} records/s for {meta['latency_seconds']:g} s"
        + _state_setup(meta),
        "",
        "How it is measured: every system reads the same pre-produced input topic (its own "
        "consumer group) in its own process. The window opens when the system's consumer "
        "group is stable with partitions assigned and closes when the last output is "
        "committed (exactly-once outputs only count once their transaction commits; a "
        "table is complete when its rows and the sum of their `seq` match the input). "
        "records/s = input records / window; CPU = the process's user+system seconds in the "
        "window, per million input records; peak RSS = the kernel's high-water mark of the "
        "process (whole life). Latency: a producer offers a fixed rate with the send time "
        "in each key, a read_committed consumer of the output measures arrival minus send. "
        "Window results are checked one by one against the input (each `(key, window)` "
        "once, with its count); a run with any difference fails.",
        "",
        "Systems: **raw** is a hand-written confluent-kafka loop (batch consume, transform, "
        "produce, commit; transactions per batch for exactly-once; a dict for word counts "
        "and one per partition for open windows; "
        "psycopg 3 `INSERT ... SELECT FROM unnest ... ON CONFLICT` for materialise): the "
        "Python ceiling. **durable raw** (wordcount only, `bench/systems/durable.py`) is "
        "the ceiling with flows' guarantees, hand-written with confluent-kafka and psycopg 3: "
        "split and re-key through a words topic in Kafka transactions, counts in PostgreSQL "
        "written per batch in one transaction with the partitions' watermarks and the "
        "batch's pending outputs, then the outputs and offsets in one Kafka transaction, "
        "the pending outputs re-emitted on assignment when Kafka is behind PostgreSQL. "
        "**flows** runs `bench/systems/flows_app.py` with `flows run` "
        "(wordcount is `examples/wordcount`'s split and count flows in one process, counts "
        "in PostgreSQL, exactly what the peers do; its `exactly-once + table` row adds the "
        "example's third flow, which materialises every count into a PostgreSQL table, work "
        "no peer does here). **flows, 2 processes** is the same with `flows run --processes 2` "
        "(stateless-json and wordcount): two worker processes sharing the consumer groups, "
        "CPU and peak RSS summed over the supervisor and both; on this 2-core machine they "
        "share the cores with the broker, PostgreSQL and the harness, so it shows what a "
        "second process gains here, not what a second core would. **Quix Streams** and "
        "**Faust** run in their own "
        "virtualenvs (`.cache/bench-venvs/`), written as their docs show "
        "(`bench/systems/quix.py`, `bench/systems/faust_app.py`): Quix Streams with RocksDB "
        "state and its `PostgreSQLSink`; Faust with an in-memory `Table` (its RocksDB store "
        "needs a native build) and no PostgreSQL sink. **Kafka Streams** runs "
        "`bench/systems/kafka_streams/` in a JVM with the defaults (RocksDB state, "
        "`exactly_once_v2` or `at_least_once`), but the record cache off for wordcount "
        "(it would merge a word's updates into one output); the bench builds it with Maven "
        "(`.cache/bench-jvm/`).",
        "",
    ]
    cases = [
        ("stateless-json", "stateless-json: JSON in, one field transformed, JSON out"),
        (
            "wordcount",
            "wordcount: lines in, running count per word out (records = lines; "
            "each line gives 10 outputs)",
        ),
        ("materialise", "materialise: keyed JSON upserted into a PostgreSQL table"),
        (
            "windowed",
            "windowed: per-key count per one-minute tumbling window of the events' `ts`, "
            "final results only (records = events; about one result per 10)",
        ),
    ]
    for case, title in cases:
        rows = [r for r in results if r["case"] == case]
        if not rows:
            continue
        versus = versus_columns(rows)
        lines += [
            f"## {title}",
            "",
            "| system | mode | records/s | CPU s / 1M records | peak RSS MB | "
            + "".join(f"vs {VERSUS[v]} | " for v in versus)
            + "status |",
            "| --- | --- | ---: | ---: | ---: | " + "---: | " * len(versus) + "--- |",
        ]
        for r in rows:
            lines.append(
                f"| {LABELS[r['system']]} | {VARIANT_LABELS[r['variant']]} | "
                f"{_fmt(r.get('records_per_s'))} | {_fmt(r.get('cpu_s_per_million'), 1)} | "
                f"{_fmt(r.get('peak_rss_mb'))} | "
                + "".join(
                    f"{_fmt(ratio(results, case, r['variant'], r['system'], v), 2)} | "
                    for v in versus
                )
                + f"{_status(r)} |"
            )
        lines.append("")
    latency = [r for r in results if r["case"] == "stateless-json-latency"]
    if latency:
        lines += [
            "## stateless-json latency at a fixed offered load",
            "",
            "| system | mode | p50 ms | p90 ms | p99 ms | max ms | CPU s / 1M records | "
            "peak RSS MB | status |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in latency:
            lat = r.get("latency_ms") or {}
            lines.append(
                f"| {LABELS[r['system']]} | {VARIANT_LABELS[r['variant']]} | "
                f"{_fmt(lat.get('p50'), 1)} | {_fmt(lat.get('p90'), 1)} | "
                f"{_fmt(lat.get('p99'), 1)} | {_fmt(lat.get('max'), 1)} | "
                f"{_fmt(r.get('cpu_s_per_million'), 1)} | {_fmt(r.get('peak_rss_mb'))} | "
                f"{_status(r)} |"
            )
        lines.append("")
    lines += report_state.markdown(results, LABELS, _status)
    lines += ["## Targets", "", "| target | measured | met |", "| --- | ---: | --- |"]
    for t in doc["targets"]:
        value = _target_value(t)
        met = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {value} | {met} |")
    lines.append("")
    if charts:
        lines += ["## Charts", ""]
        lines += [f"![{Path(c).stem}]({c})" for c in charts]
        lines.append("")
    for update in meta.get("updated_by", []):
        lines.append(
            f"Rerun in `{update['run_id']}` at {update['started_at']} (`--update`): "
            + ", ".join(update["runs"])
            + "."
        )
    if meta.get("updated_by"):
        lines.append("")
    repeated = [
        f"- {r['case']} {r['variant']} {r['system']}: {note}"
        for r in doc["results"]
        for note in r.get("notes", [])
        if note.startswith("median of")
    ]
    if repeated:
        lines += ["Repeated runs (`--repeat`; the tables show the median run):", "", *repeated, ""]
    lines += [
        "All figures, with versions and settings: `bench/results/latest.json`. Logs of "
        "each system's process: `.cache/bench-runs/<run>/`.",
        "",
    ]
    return "\n".join(lines)


def charts(doc: dict[str, Any], out: Path, root: Path) -> list[str]:
    """PNG bar charts (records/s per case, latency); returns their paths relative to root."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    results = doc["results"]
    made: list[str] = []
    colours = {
        "raw": "#888888",
        "durable": "#555555",
        "flows": "#1f77b4",
        "flows-x2": "#aec7e8",
        "quixstreams": "#ff7f0e",
        "kafka-streams": "#9467bd",
        "faust": "#2ca02c",
    }
    for case in ("stateless-json", "wordcount", "materialise", "windowed"):
        rows = [r for r in results if r["case"] == case and _rate(r)]
        if not rows:
            continue
        labels = [f"{LABELS[r['system']]}\n{VARIANT_LABELS[r['variant']]}" for r in rows]
        values = [r["records_per_s"] for r in rows]
        fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4))
        bars = ax.bar(labels, values, color=[colours[r["system"]] for r in rows])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.set_ylabel("records/s (higher is better)")
        ax.set_title(f"{case}: throughput")
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        path = out / f"{case}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(str(path.relative_to(root)))
    rows = [r for r in results if r["case"] == "stateless-json-latency" and r.get("latency_ms")]
    if rows:
        labels = [f"{LABELS[r['system']]}\n{VARIANT_LABELS[r['variant']]}" for r in rows]
        fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4))
        xs = range(len(rows))
        width = 0.4
        p50 = [r["latency_ms"]["p50"] for r in rows]
        p99 = [r["latency_ms"]["p99"] for r in rows]
        b1 = ax.bar([x - width / 2 for x in xs], p50, width, label="p50")
        b2 = ax.bar([x + width / 2 for x in xs], p99, width, label="p99")
        ax.bar_label(b1, labels=[f"{v:,.0f}" for v in p50], fontsize=7)
        ax.bar_label(b2, labels=[f"{v:,.0f}" for v in p99], fontsize=7)
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_ylabel("ms (lower is better)")
        ax.set_yscale("log")
        ax.set_title("stateless-json: end-to-end latency at a fixed offered load")
        ax.legend()
        fig.tight_layout()
        path = out / "stateless-json-latency.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(str(path.relative_to(root)))
    # the state cases' memory is in their own chart, against their sizes
    rows = [
        r
        for r in results
        if r.get("peak_rss_mb")
        and r["status"] == "ok"
        and r["case"] not in ("stateless-json-latency", "failover", "keyspace")
    ]
    if rows:
        labels = [f"{r['case']}\n{LABELS[r['system']]} {r['variant']}" for r in rows]
        fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(rows)), 4.5))
        bars = ax.bar(
            labels, [r["peak_rss_mb"] for r in rows], color=[colours[r["system"]] for r in rows]
        )
        ax.bar_label(bars, labels=[f"{r['peak_rss_mb']:.0f}" for r in rows], fontsize=7)
        ax.axhline(150, color="red", linestyle="--", linewidth=1, label="flows target 150 MB")
        ax.set_ylabel("peak RSS, MB (lower is better)")
        ax.set_title("peak resident memory per process")
        ax.tick_params(axis="x", labelsize=6, rotation=60)
        ax.legend()
        fig.tight_layout()
        path = out / "peak-rss.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(str(path.relative_to(root)))
    made += report_state.charts(results, out, root, LABELS, colours)
    return made


def summary(doc: dict[str, Any]) -> str:
    """A plain-text digest for the terminal: each run, the ratios, the targets."""
    results = doc["results"]
    out = [
        f"{'case':<24}{'mode':<10}{'system':<13}{'records/s':>11}{'CPU s/1M':>10}"
        f"{'RSS MB':>8}{'p50 ms':>9}{'p99 ms':>9}{'vs raw':>8}{'vs quix':>8}  status"
    ]
    for r in results:
        lat = r.get("latency_ms") or {}
        out.append(
            f"{r['case']:<24}{r['variant']:<10}{r['system']:<13}"
            f"{_fmt(r.get('records_per_s')):>11}{_fmt(r.get('cpu_s_per_million'), 1):>10}"
            f"{_fmt(r.get('peak_rss_mb')):>8}{_fmt(lat.get('p50'), 1):>9}"
            f"{_fmt(lat.get('p99'), 1):>9}"
            f"{_fmt(ratio(results, r['case'], r['variant'], r['system'], 'raw'), 2):>8}"
            f"{_fmt(ratio(results, r['case'], r['variant'], r['system'], 'quixstreams'), 2):>8}"
            f"  {_status(r)}"
        )
    out.append("")
    for t in doc["targets"]:
        met = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        out.append(f"target {t['target']}: {value} -> {met}")
    return "\n".join(out)


def write(
    doc: dict[str, Any],
    json_path: Path,
    markdown_path: Path | None,
    chart_dir: Path | None,
    root: Path,
) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(json_path)
    if markdown_path is not None:
        made = charts(doc, chart_dir, root) if chart_dir is not None else []
        markdown_path.write_text(markdown(doc, made))
