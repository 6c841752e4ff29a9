"""The state cases in the report: failover and keyspace tables, charts and targets.

A failover result carries ``failover = {"keys", "fresh", "build_s", "phases": [{"phase",
"joined_s", "first_output_s", "caught_up_s", "peak_rss_mb"}, ...]}`` (see
:mod:`bench.failover`); a keyspace result is a throughput result whose variant is its
keyspace in keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: the failover phases as the report names them
PHASE_LABELS = {"same-host": "same host", "new-host": "new host"}
#: flows' failover targets: the first output within this many seconds at every size, and
#: at the largest size within this many seconds of the smallest's (independent of the state
#: size: a difference, not a ratio, as a second's noise would swing a ratio of small figures)
FIRST_OUTPUT_S = 3.0
SIZE_GROWTH_S = 1.0
#: flows' keyspace targets: the largest keyspace's throughput at least this share of the
#: smallest's, its peak RSS under this many MB
KEYSPACE_SHARE = 0.5
KEYSPACE_RSS_MB = 150.0


def phase(failover: dict[str, Any], name: str) -> dict[str, Any]:
    """The figures of one phase (empty when it did not run)."""
    for found in failover.get("phases", []):
        if found.get("phase") == name:
            return dict(found)
    return {}


def failover_figure(failover: dict[str, Any]) -> float | None:
    """The headline: seconds from a new host's start to its first new output."""
    value = phase(failover, "new-host").get("first_output_s")
    return float(value) if value is not None else None


def failover_line(failover: dict[str, Any]) -> str:
    """A terminal line: the build, then each phase's first output and catch-up."""
    parts = [f"{failover.get('keys', 0):,} keys built in {failover.get('build_s', '-')} s"]
    for found in failover.get("phases", []):
        parts.append(
            f"{found.get('phase')}: first output {found.get('first_output_s', '-')} s, "
            f"caught up {found.get('caught_up_s', '-')} s"
        )
    return "; ".join(parts)


def _ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok"


def _sizes(results: Sequence[dict[str, Any]], case: str, system: str) -> list[dict[str, Any]]:
    """``system``'s rows of ``case``, smallest size first."""
    rows = [r for r in results if r["case"] == case and r["system"] == system]
    return sorted(rows, key=lambda r: int(r["variant"]))


def _slowest_first_output(r: dict[str, Any]) -> float | None:
    values = [p.get("first_output_s") for p in (r.get("failover") or {}).get("phases", [])]
    found = [float(v) for v in values if v is not None]
    return max(found) if found and _ok(r) else None


def growth(results: Sequence[dict[str, Any]], r: dict[str, Any]) -> float | None:
    """``r``'s new-host first output over the same system's at the smallest state size."""
    rows = [x for x in _sizes(results, "failover", r["system"]) if _ok(x)]
    if not rows or not _ok(r):
        return None
    base = failover_figure(rows[0]["failover"] or {})
    mine = failover_figure(r.get("failover") or {})
    if not base or mine is None:
        return None
    return round(mine / base, 2)


def keyspace_share(results: Sequence[dict[str, Any]], r: dict[str, Any]) -> float | None:
    """``r``'s records/s over the same system's at its smallest keyspace."""
    rows = [x for x in _sizes(results, "keyspace", r["system"]) if _ok(x)]
    if not rows or not _ok(r) or not rows[0].get("records_per_s"):
        return None
    return round(float(r["records_per_s"]) / float(rows[0]["records_per_s"]), 2)


def targets(
    results: Sequence[dict[str, Any]], add: Callable[[str, float | None, float, bool, str], None]
) -> None:
    """Adds flows' failover and keyspace targets through ``add(name, value, goal, below,
    unit)`` (``value`` None: not measured)."""
    rows = _sizes(results, "failover", "flows")
    slowest = [_slowest_first_output(r) for r in rows]
    measured = [v for v in slowest if v is not None]
    add(
        f"failover: flows' first output after a SIGKILL < {FIRST_OUTPUT_S:g} s at every "
        "state size (slowest phase)",
        max(measured) if measured and len(measured) == len(rows) else None,
        FIRST_OUTPUT_S,
        True,
        "s",
    )
    grown = None
    if len(rows) >= 2 and slowest[0] is not None and slowest[-1] is not None:
        grown = round(slowest[-1] - slowest[0], 2)
    add(
        f"failover: flows' first output independent of the state size (the largest size's "
        f"within {SIZE_GROWTH_S:g} s of the smallest's)",
        grown,
        SIZE_GROWTH_S,
        True,
        "s",
    )
    rows = _sizes(results, "keyspace", "flows")
    largest = rows[-1] if len(rows) >= 2 else None
    add(
        f"keyspace: flows at the largest keyspace >= {KEYSPACE_SHARE:g}x its smallest",
        keyspace_share(results, largest) if largest else None,
        KEYSPACE_SHARE,
        False,
        "x",
    )
    rss = largest.get("peak_rss_mb") if largest and _ok(largest) else None
    add(
        f"keyspace: flows' peak RSS < {KEYSPACE_RSS_MB:g} MB at the largest keyspace",
        float(rss) if rss else None,
        KEYSPACE_RSS_MB,
        True,
        "MB",
    )


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def reproduce(case: str, meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """The line under a case's table: the command that measures its figures again (this
    run's seed, and its repeat count where ``rows`` were repeated: rows merged in from a
    run of their own with ``--update`` may not be; the sizes are the defaults unless the
    setup says else)."""
    flags = f"--case {case}"
    repeated = any(n.startswith("median of") for r in rows for n in r.get("notes", []))
    if meta.get("repeat", 1) > 1 and repeated:
        flags += f" --repeat {meta['repeat']}"
    if meta.get("seed", 42) != 42:
        flags += f" --seed {meta['seed']}"
    if meta.get("quick"):
        flags += " --quick"
    return f"Reproduce: `make services && .venv/bin/python -m bench {flags}`."


def markdown(
    results: Sequence[dict[str, Any]],
    labels: dict[str, str],
    status: Callable[[dict[str, Any]], str],
    meta: Mapping[str, Any] | None = None,
) -> list[str]:
    """The failover and keyspace sections (none for a case that did not run)."""
    meta = meta or {}
    lines: list[str] = []
    rows = sorted(
        (r for r in results if r["case"] == "failover"),
        key=lambda r: (int(r["variant"]), r["system"]),
    )
    if rows:
        lines += [
            "## failover: a worker with N keys of state SIGKILLed, a replacement started",
            "",
            "Every system counts per key, exactly-once; its state is built from one record "
            "per key, then the idle worker gets SIGKILL and fresh records (a marker in "
            "their values) are produced. The replacement starts once the broker has dropped "
            "the dead member (its session timeout, 6 s for every system here: failure "
            "detection is a Kafka setting, the same for all, outside the figures). Seconds "
            "from the replacement's process start: joined (its consumer group stable with "
            "partitions), its first output of a fresh record (read_committed), caught up "
            "(every fresh output; each is checked: the marker, once, the count the input "
            "implies). *same host* keeps the killed worker's local state directory; *new "
            "host* starts without one (Quix Streams and Kafka Streams restore their "
            "changelogs into RocksDB; flows' state is in PostgreSQL either way). Growth: the "
            "new host's first output over the system's own at the smallest size; peak RSS: "
            "the highest of the worker and its replacements.",
            "",
            "| system | state keys | build s | same host: joined | first output | caught up "
            "| new host: joined | first output | caught up | growth | peak RSS MB | status |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in rows:
            f = r.get("failover") or {}
            same, new = phase(f, "same-host"), phase(f, "new-host")
            lines.append(
                f"| {labels[r['system']]} | {int(r['variant']):,} | {_fmt(f.get('build_s'), 1)} | "
                f"{_fmt(same.get('joined_s'))} | {_fmt(same.get('first_output_s'))} | "
                f"{_fmt(same.get('caught_up_s'))} | {_fmt(new.get('joined_s'))} | "
                f"{_fmt(new.get('first_output_s'))} | {_fmt(new.get('caught_up_s'))} | "
                f"{_fmt(growth(results, r))} | {_fmt(r.get('peak_rss_mb'), 0)} | {status(r)} |"
            )
        lines += ["", reproduce("failover", meta, rows), ""]
    rows = sorted(
        (r for r in results if r["case"] == "keyspace"),
        key=lambda r: (r["system"] != "flows", r["system"], int(r["variant"])),
    )
    if rows:
        lines += [
            "## keyspace: a running count per key over a growing keyspace",
            "",
            "Keyed records, every key once before any key twice (passes over the shuffled "
            "keyspace), so at a large keyspace a key's state was last touched a keyspace "
            'ago; exactly-once, out as `"<count> <value>"`. vs smallest: records/s over the '
            "system's own at the smallest keyspace. CPU and peak RSS are the system's own "
            "process: the work PostgreSQL does for flows and durable raw is not in them, "
            "and a JVM's heap grows with the machine's memory.",
            "",
            "| system | distinct keys | records | records/s | vs smallest | CPU s / 1M records "
            "| peak RSS MB | status |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in rows:
            lines.append(
                f"| {labels[r['system']]} | {int(r['variant']):,} | "
                f"{_fmt(r.get('input_records'), 0)} | {_fmt(r.get('records_per_s'), 0)} | "
                f"{_fmt(keyspace_share(results, r))} | {_fmt(r.get('cpu_s_per_million'), 1)} | "
                f"{_fmt(r.get('peak_rss_mb'), 0)} | {status(r)} |"
            )
        lines += ["", reproduce("keyspace", meta, rows), ""]
    return lines


def charts(
    results: Sequence[dict[str, Any]],
    out: Path,
    root: Path,
    labels: dict[str, str],
    colours: dict[str, str],
) -> list[str]:
    """failover.png (seconds against state size) and keyspace.png (records/s and peak RSS
    against keyspace); returns their paths relative to ``root``."""
    import matplotlib.pyplot as plt

    made: list[str] = []
    systems = sorted({r["system"] for r in results if r["case"] == "failover" and _ok(r)})
    if systems:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, ax, what in (
            ("first output", axes[0], "first_output_s"),
            ("caught up", axes[1], "caught_up_s"),
        ):
            for system in systems:
                rows = [r for r in _sizes(results, "failover", system) if _ok(r)]
                for phase_name, style in (("new-host", "-"), ("same-host", "--")):
                    points = [
                        (int(r["variant"]), phase(r["failover"], phase_name).get(what))
                        for r in rows
                    ]
                    xs = [x for x, y in points if y is not None]
                    ys = [y for _, y in points if y is not None]
                    ax.plot(
                        xs,
                        ys,
                        style,
                        marker="o",
                        color=colours[system],
                        label=f"{labels[system]}, {PHASE_LABELS[phase_name]}",
                    )
            ax.set_xscale("log")
            ax.set_xlabel("state, keys")
            ax.set_ylabel("seconds from the replacement's start (lower is better)")
            ax.set_title(f"failover: {name}")
            ax.grid(True, alpha=0.3)
        axes[0].axhline(FIRST_OUTPUT_S, color="red", linestyle=":", linewidth=1)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = out / "failover.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(str(path.relative_to(root)))
    systems = sorted({r["system"] for r in results if r["case"] == "keyspace" and _ok(r)})
    if systems:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for system in systems:
            rows = [r for r in _sizes(results, "keyspace", system) if _ok(r)]
            xs = [int(r["variant"]) for r in rows]
            axes[0].plot(xs, [r["records_per_s"] for r in rows], marker="o", color=colours[system])
            axes[1].plot(
                xs,
                [r.get("peak_rss_mb") or 0 for r in rows],
                marker="o",
                color=colours[system],
                label=labels[system],
            )
        axes[0].set_ylabel("records/s (higher is better)")
        axes[0].set_title("keyspace: throughput")
        axes[1].set_ylabel("peak RSS, MB (lower is better)")
        axes[1].set_title("keyspace: peak resident memory")
        axes[1].axhline(KEYSPACE_RSS_MB, color="red", linestyle=":", linewidth=1)
        axes[1].legend(fontsize=7)
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("distinct keys")
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / "keyspace.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(str(path.relative_to(root)))
    return made
