"""The report's comparison columns and the durable ceiling's target."""

from __future__ import annotations

from typing import Any

from bench import report, targets


def _row(case: str, system: str, rate: float, variant: str = "eos") -> dict[str, Any]:
    return {
        "case": case,
        "variant": variant,
        "system": system,
        "status": "ok",
        "records_per_s": rate,
        "cpu_s_per_million": 10.0,
        "peak_rss_mb": 100.0,
        "notes": [],
    }


def test_columns_for_durable_and_kafka_streams_only_where_they_ran() -> None:
    wordcount = [_row("wordcount", s, 1.0) for s in ("raw", "durable", "flows", "kafka-streams")]
    assert report.versus_columns(wordcount) == ["raw", "durable", "quixstreams", "kafka-streams"]
    assert report.versus_columns([_row("materialise", "flows", 1.0)]) == ["raw", "quixstreams"]


def test_flows_against_the_durable_ceiling_is_a_target() -> None:
    results = [_row("wordcount", "durable", 10_000.0), _row("wordcount", "flows", 9_000.0)]
    (target,) = [t for t in targets.targets(results) if "durable raw" in t["target"]]
    assert (target["value"], target["goal"], target["met"]) == (0.9, 0.8, True)


def test_the_wordcount_table_compares_with_durable_raw_and_kafka_streams() -> None:
    results = [
        _row("wordcount", "durable", 10_000.0),
        _row("wordcount", "flows", 9_000.0),
        _row("wordcount", "kafka-streams", 3_000.0),
    ]
    meta = {
        "run_id": "r",
        "started_at": "t",
        "duration_s": 1.0,
        "cpus": 2,
        "memory_gb": 1.0,
        "platform": "p",
        "python": "3.11",
        "versions": {},
        "seed": 1,
        "records": 1,
        "keys": 1,
        "lines": 1,
        "partitions": 4,
        "latency_rate": 1,
        "latency_seconds": 1.0,
    }
    text = report.markdown({"meta": meta, "results": results, "targets": []}, [])
    assert "| vs raw | vs durable raw | vs Quix Streams | vs Kafka Streams | status |" in text
    assert "| flows | exactly-once | 9,000 | 10.0 | 100 | - | 0.90 | - | 3.00 | ok |" in text
