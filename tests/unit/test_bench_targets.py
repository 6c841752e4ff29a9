"""The bench's raised targets and "what bounds it": a profile's breakdown by category."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import profile, targets


def _row(case: str, variant: str, system: str, rate: float = 1.0, **more: Any) -> dict[str, Any]:
    return {
        "case": case,
        "variant": variant,
        "system": system,
        "status": "ok",
        "records_per_s": rate,
        "peak_rss_mb": 100.0,
        **more,
    }


def _find(found: list[dict[str, Any]], words: str) -> dict[str, Any]:
    (target,) = [t for t in found if words in t["target"]]
    return target


def test_the_raised_ratio_targets() -> None:
    results = [
        _row("stateless-json", "alos", "raw", 100.0),
        _row("stateless-json", "alos", "flows", 125.0),
        _row("wordcount", "eos", "quixstreams", 1_000.0),
        _row("wordcount", "eos", "flows", 5_000.0),
        _row("materialise", "upsert", "raw", 100.0),
        _row("materialise", "upsert", "flows", 120.0),
    ]
    found = targets.targets(results)
    stateless = _find(found, "stateless-json (at-least-once) >= 1.3x raw")
    assert (stateless["value"], stateless["met"], stateless["case"]) == (
        1.25,
        False,
        "stateless-json",
    )
    assert _find(found, "wordcount (exactly-once) >= 5x Quix")["met"] is True
    assert _find(found, "materialise (upsert) >= 1.2x raw")["met"] is True
    assert _find(found, "stateless-json (exactly-once)")["met"] is None  # not run


def test_latency_targets_compare_with_quix_streams_at_or_below() -> None:
    def latency(variant: str, system: str, p50: float, p99: float) -> dict[str, Any]:
        row = _row("stateless-json-latency", variant, system)
        return row | {"latency_ms": {"p50": p50, "p99": p99}}

    results = [
        latency("alos", "quixstreams", 8.0, 60.0),
        latency("alos", "flows", 8.0, 61.0),
        latency("eos", "flows", 90.0, 199.0),
    ]
    found = targets.targets(results)
    assert _find(found, "p50 at or below Quix Streams' (8 ms)")["met"] is True  # equal is met
    p99 = _find(found, "p99 at or below Quix Streams' (60 ms)")
    assert (p99["value"], p99["goal"], p99["met"]) == (61.0, 60.0, False)
    assert _find(found, "(exactly-once) p99 < 200 ms")["met"] is True
    # without Quix Streams' figure there is nothing to compare with
    alone = targets.targets([latency("alos", "flows", 8.0, 61.0)])
    assert _find(alone, "p50 at or below")["met"] is None


def test_the_rss_target_names_the_case_of_the_peak() -> None:
    results = [_row("wordcount", "eos", "flows") | {"peak_rss_mb": 170.0}, _row("x", "y", "flows")]
    rss = _find(targets.targets(results), "flows peak RSS < 150 MB")
    assert (rss["value"], rss["met"], rss["case"], rss["variant"]) == (
        170.0,
        False,
        "wordcount",
        "eos",
    )


_RUN = "Thread.run (threading.py:982);Worker.turn (flows/engine/worker.py:219)"
PROFILE = "\n".join(
    [
        f"thread (1): flows-count;{_RUN};PostgresStateStore.commit (runtimes/postgres/store.py:90)"
        ";Cursor.execute (psycopg/cursor.py:723) 6",
        f"thread (1): flows-count;{_RUN};decode (flows/encoding.py:40)"
        ";loads (json/__init__.py:346) 2",
        f"thread (1): flows-count;{_RUN} 1",
        f"thread (1): flows-count;{_RUN};count (examples/wordcount/app.py:30) 1",
        "thread (2): flows-split;Thread.run (threading.py:982)"
        ";KafkaProducer.produce (runtimes/kafka/producer.py:70) 10",
        "thread (3): MainThread;Event.wait (threading.py:629) 50",  # waits: --idle
        "thread (4): flows-http;select (selectors.py:415) 0",
    ]
)


def test_a_profile_breaks_down_by_the_category_nearest_the_leaf(tmp_path: Path) -> None:
    path = tmp_path / "wordcount-eos-flows.txt"
    path.write_text(PROFILE)
    found = profile.breakdown(path)
    assert list(found) == ["flows-count", "flows-split"]  # idle threads left out
    count = found["flows-count"]
    assert count["samples"] == 10
    assert (count["PostgreSQL"], count["formats"], count["engine"]) == (0.6, 0.2, 0.1)
    assert count["the flow's functions"] == 0.1
    assert found["flows-split"]["Kafka client"] == 1.0
    saved = profile.save([path], tmp_path / "profiles.json")
    assert saved["wordcount-eos-flows"]["threads"] == found  # type: ignore[index]


def test_the_report_shows_a_missed_target_s_profile_or_how_to_record_one(tmp_path: Path) -> None:
    path = tmp_path / "wordcount-eos-flows.txt"
    path.write_text(PROFILE)
    profiles = profile.save([path], tmp_path / "profiles.json")
    results = [_row("wordcount", "eos", "quixstreams", 1_000.0), _row("wordcount", "eos", "flows")]
    results += [_row("materialise", "upsert", "raw", 10.0), _row("materialise", "upsert", "flows")]
    lines = targets.bounds(targets.targets(results), profiles)
    text = "\n".join(lines)
    assert "### wordcount (exactly-once) >= 5x Quix Streams" in text
    assert "| flows-count | 10 | 60% | 0% | 20% | 10% | 10% | 0% |" in text
    assert "- flows-count, the calls on top of the stack: `Cursor.execute` 60%, `loads` 20%" in text
    assert "### materialise (upsert) >= 1.2x raw\n\nNo profile recorded yet" in text
    assert "--case materialise --variant upsert --system flows --profile" in text
    met = [_row("materialise", "upsert", "raw", 1.0), _row("materialise", "upsert", "flows", 2.0)]
    assert targets.bounds(targets.targets(met), profiles) == []


def test_the_median_run_carries_the_spread_and_the_report_states_the_noise() -> None:
    from bench.cli import median_run
    from bench.report import _noise
    from bench.runs import Result

    runs = [Result("wordcount", "eos", "flows", records_per_s=v) for v in (90.0, 100.0, 120.0)]
    chosen = median_run(runs)
    assert (chosen.records_per_s, chosen.spread) == (100.0, 0.3)
    rows: list[dict[str, Any]] = [
        {"records_per_s": 1.0, "spread": 0.3},
        {"records_per_s": 1.0, "spread": 0.1},
        {"records_per_s": 1.0, "spread": 0.05},
        {"latency_ms": {"p99": 1.0}, "records_per_s": 1.0, "spread": 0.9},  # not throughput
    ]
    (text, _) = _noise(rows)
    assert "spread by 10% (median" in text and "and 30% at most" in text
    assert _noise([{"records_per_s": 1.0}]) == []


def test_the_profile_command_names_a_state_case_s_size() -> None:
    results = [_row("keyspace", v, "flows", r) for v, r in (("5000", 100.0), ("2000000", 10.0))]
    text = "\n".join(targets.bounds(targets.targets(results), {}))
    assert "--case keyspace --keyspace 2000000 --system flows --profile" in text
