"""flows' targets (issue 15's, raised) against a run's results, and what bounds those missed.

A target is met or not by the run's own figures, side by side (the median of ``--repeat``
runs). For a target not met, the report shows what flows spends its time on in that case:
a py-spy profile's breakdown by category (``bench/profile.py``), recorded apart from the
measured runs (a profiler on a 2-core machine would slow the run it profiles) with
``python -m bench --case C --variant V --system flows --profile DIR --profile-idle`` and
saved with ``python -m bench.profile --save bench/results/profiles.json DIR/*.txt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench import report_state
from bench.profile import CATEGORIES, OTHER

#: (case, variant, versus, goal): flows' records/s at least ``goal`` times ``versus``'s
RATIO_TARGETS = (
    ("stateless-json", "alos", "raw", 1.3),
    ("stateless-json", "eos", "raw", 1.3),
    ("wordcount", "eos", "quixstreams", 5.0),
    ("wordcount", "eos", "durable", 0.8),
    ("materialise", "upsert", "raw", 1.2),
    ("windowed", "eos", "quixstreams", 3.0),
)
VERSUS_NAMES = {
    "raw": "raw",
    "durable": "durable raw (the same guarantees, no framework)",
    "quixstreams": "Quix Streams",
}
VARIANT_NAMES = {"alos": "at-least-once", "eos": "exactly-once", "upsert": "upsert"}
RSS_MB = 150.0
#: exactly-once p99 at the latency case's offered load, milliseconds
EOS_P99_MS = 200.0


def find(
    results: Sequence[dict[str, Any]], case: str, variant: str, system: str
) -> dict[str, Any] | None:
    """The row of ``system`` in ``case`` and ``variant``, whatever its status."""
    for r in results:
        if (r["case"], r["variant"], r["system"]) == (case, variant, system):
            return r
    return None


def rate(r: dict[str, Any] | None) -> float | None:
    """A row's records/s; None unless it ended ok."""
    if r is None or r.get("status") != "ok":
        return None
    value = r.get("records_per_s")
    return float(value) if value else None


def ratio(
    results: Sequence[dict[str, Any]], case: str, variant: str, system: str, versus: str
) -> float | None:
    """``system``'s records/s over ``versus``'s, same case and variant."""
    mine, theirs = (
        rate(find(results, case, variant, system)),
        rate(find(results, case, variant, versus)),
    )
    if mine is None or theirs is None:
        return None
    return round(mine / theirs, 2)


def _latency(results: Sequence[dict[str, Any]], variant: str, system: str, q: str) -> Any:
    r = find(results, "stateless-json-latency", variant, system)
    ok = r is not None and r.get("status") == "ok"
    return (r.get("latency_ms") or {}).get(q) if r is not None and ok else None


def targets(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its measured ``value``, ``goal``, ``unit``, ``met`` (None: not
    measured) and the ``case`` and ``variant`` it is measured on."""
    found: list[dict[str, Any]] = []

    def add(
        name: str,
        value: float | None,
        goal: float,
        below: bool = False,
        unit: str = "x",
        *,
        case: str = "",
        variant: str = "",
        inclusive: bool = False,
    ) -> None:
        if value is None:
            met = None
        elif below:
            met = value <= goal if inclusive else value < goal
        else:
            met = value >= goal
        found.append(
            {
                "target": name,
                "value": value,
                "goal": goal,
                "unit": unit,
                "met": met,
                "case": case,
                "variant": variant,
            }
        )

    for case, variant, versus, goal in RATIO_TARGETS:
        mode = VARIANT_NAMES[variant]
        add(
            f"{case} ({mode}) >= {goal:g}x {VERSUS_NAMES[versus]}",
            ratio(results, case, variant, "flows", versus),
            goal,
            case=case,
            variant=variant,
        )
    for q in ("p50", "p99"):
        quix = _latency(results, "alos", "quixstreams", q)
        add(
            f"latency (at-least-once) {q} at or below Quix Streams' "
            f"({'-' if quix is None else f'{quix:.0f} ms'})",
            _latency(results, "alos", "flows", q),
            quix if quix is not None else 0.0,
            True,
            "ms",
            case="stateless-json-latency",
            variant="alos",
            inclusive=True,
        )
        if quix is None:
            found[-1]["met"] = None
    add(
        f"latency (exactly-once) p99 < {EOS_P99_MS:g} ms",
        _latency(results, "eos", "flows", "p99"),
        EOS_P99_MS,
        True,
        "ms",
        case="stateless-json-latency",
        variant="eos",
    )
    peaks = [
        r
        for r in results
        if r["system"] == "flows" and r.get("peak_rss_mb") and r["status"] == "ok"
    ]
    peak = max(peaks, key=lambda r: r["peak_rss_mb"], default=None)
    add(
        f"flows peak RSS < {RSS_MB:g} MB",
        peak["peak_rss_mb"] if peak else None,
        RSS_MB,
        True,
        "MB",
        case=peak["case"] if peak else "",
        variant=peak["variant"] if peak else "",
    )

    def add_state(name: str, value: float | None, goal: float, below: bool, unit: str) -> None:
        case = name.partition(":")[0]
        sizes = [r["variant"] for r in results if r["case"] == case and r["system"] == "flows"]
        add(name, value, goal, below, unit, case=case, variant=sizes[-1] if sizes else "")

    report_state.targets(results, add_state)
    return found


def _size_flag(case: str) -> str:
    """How the bench's command line names a variant of ``case`` (the state cases' variants
    are their sizes)."""
    return {"keyspace": "--keyspace", "failover": "--failover-keys"}.get(case, "--variant")


def bounds(doc_targets: Sequence[dict[str, Any]], profiles: Mapping[str, Any]) -> list[str]:
    """The report's "what bounds the targets not met": for each, the breakdown of flows'
    profile in its case, or the commands that record one."""
    missed = [t for t in doc_targets if t["met"] is False]
    if not missed:
        return []
    names = [c for c, _ in CATEGORIES] + [OTHER]
    lines = [
        "## What bounds the targets not met",
        "",
        "Where flows' worker threads spend their time in the case of each target not met: "
        "a py-spy profile (100 Hz, `--idle`: waiting on PostgreSQL or the broker counts as "
        "time spent there) recorded apart from the measured runs, each sample counted for "
        "the category of its frame nearest the top of the stack (`bench/profile.py`; "
        "librdkafka's C work shows as the Python call into it).",
        "",
    ]
    for t in missed:
        key = f"{t['case']}-{t['variant']}-flows"
        command = (
            f"python -m bench --case {t['case']} {_size_flag(t['case'])} {t['variant']} "
            "--system flows "
            "--profile /tmp/prof --profile-idle && "
            "python -m bench.profile --save bench/results/profiles.json "
            f"/tmp/prof/{key}.txt"
        )
        lines += [f"### {t['target']}", ""]
        profile = profiles.get(key)
        if not profile:
            lines += [f"No profile recorded yet: `{command}`.", ""]
            continue
        lines += [
            f"Profiled at {profile['profiled_at']} (`{command}`):",
            "",
            "| thread | samples | " + " | ".join(names) + " |",
            "| --- | ---: | " + "---: | " * (len(names) - 1) + "---: |",
        ]
        for thread, shares in profile["threads"].items():
            cells = " | ".join(f"{shares.get(n, 0.0):.0%}" for n in names)
            lines.append(f"| {thread} | {shares['samples']:,.0f} | {cells} |")
        lines.append("")
        for thread in profile["threads"]:
            leaves = (profile.get("top") or {}).get(thread)
            if leaves:
                calls = ", ".join(f"`{fn}` {share:.0%}" for fn, share in leaves)
                lines += [f"- {thread}, the calls on top of the stack: {calls}", ""]
    return lines
