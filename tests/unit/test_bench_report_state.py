"""The failover and keyspace tables, targets and charts of the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report, report_state, targets


def _failover(
    system: str, keys: int, same: float, new: float, status: str = "ok"
) -> dict[str, Any]:
    return {
        "case": "failover",
        "variant": str(keys),
        "system": system,
        "status": status,
        "peak_rss_mb": 120.0,
        "notes": [],
        "failover": {
            "keys": keys,
            "build_s": 10.0,
            "phases": [
                {
                    "phase": "same-host",
                    "joined_s": 0.5,
                    "first_output_s": same,
                    "caught_up_s": same + 1,
                },
                {
                    "phase": "new-host",
                    "joined_s": 0.6,
                    "first_output_s": new,
                    "caught_up_s": new + 1,
                },
            ],
        },
    }


def _keyspace(system: str, keys: int, rate: float, rss: float = 100.0) -> dict[str, Any]:
    return {
        "case": "keyspace",
        "variant": str(keys),
        "system": system,
        "status": "ok",
        "input_records": 1_000_000,
        "records_per_s": rate,
        "cpu_s_per_million": 5.0,
        "peak_rss_mb": rss,
        "notes": [],
    }


def _target(results: list[dict[str, Any]], words: str) -> dict[str, Any]:
    (found,) = [t for t in targets.targets(results) if words in t["target"]]
    return found


def test_flows_failover_targets_take_the_slowest_phase_of_each_size() -> None:
    results = [_failover("flows", 100_000, 1.2, 0.9), _failover("flows", 1_000_000, 0.8, 2.0)]
    first = _target(results, "< 3 s at every state size")
    assert (first["value"], first["unit"], first["met"]) == (2.0, "s", True)
    grown = _target(results, "independent of the state size")
    assert (grown["value"], grown["met"]) == (0.8, True)  # 2.0 at 1M against 1.2 at 100k


def test_a_failover_that_grows_with_the_state_misses_the_target() -> None:
    results = [_failover("flows", 100_000, 1.0, 1.0), _failover("flows", 1_000_000, 1.0, 3.5)]
    assert _target(results, "< 3 s at every state size")["met"] is False
    assert _target(results, "independent of the state size")["met"] is False


def test_a_failed_size_leaves_the_failover_targets_unmeasured() -> None:
    results = [
        _failover("flows", 100_000, 1.0, 1.0),
        _failover("flows", 1_000_000, 1.0, 1.0, status="failed"),
    ]
    assert _target(results, "< 3 s at every state size")["met"] is None
    assert _target(results, "independent of the state size")["met"] is None


def test_keyspace_targets_compare_flows_largest_keyspace_with_its_smallest() -> None:
    results = [
        _keyspace("flows", 5_000, 100_000.0),
        _keyspace("flows", 100_000, 70_000.0),
        _keyspace("flows", 2_000_000, 40_000.0, rss=140.0),
        _keyspace("quixstreams", 2_000_000, 90_000.0),
    ]
    share = _target(results, "largest keyspace >= 0.5x")
    assert (share["value"], share["met"]) == (0.4, False)
    rss = _target(results, "peak RSS < 150 MB at the largest")
    assert (rss["value"], rss["met"]) == (140.0, True)


def test_growth_is_against_the_same_systems_smallest_size() -> None:
    results = [
        _failover("quixstreams", 100_000, 5.0, 4.0),
        _failover("quixstreams", 1_000_000, 6, 20.0),
    ]
    assert report_state.growth(results, results[1]) == 5.0
    assert report_state.growth(results, results[0]) == 1.0


def test_the_report_has_the_failover_and_keyspace_tables() -> None:
    results = [
        _failover("flows", 100_000, 1.25, 0.9),
        _failover("kafka-streams", 1_000_000, 3.5, 6.0),
        _keyspace("flows", 5_000, 100_000.0),
        _keyspace("flows", 2_000_000, 50_000.0),
    ]
    lines = report_state.markdown(results, report.LABELS, lambda r: r["status"])
    text = "\n".join(lines)
    assert "## failover: a worker with N keys of state SIGKILLed" in text
    assert (
        "| flows | 100,000 | 10.0 | 0.50 | 1.25 | 2.25 | 0.60 | 0.90 | 1.90 | 1.00 | 120 | ok |"
        in text
    )
    assert "| Kafka Streams | 1,000,000 |" in text
    assert "| flows | 2,000,000 | 1,000,000 | 50,000 | 0.50 | 5.0 | 100 | ok |" in text


def test_no_state_section_without_state_results() -> None:
    assert (
        report_state.markdown([_keyspace("flows", 5, 1.0) | {"case": "wordcount"}], {}, str) == []
    )


def test_the_state_charts_are_drawn(tmp_path: Path) -> None:
    results = [
        _failover("flows", 100_000, 1.0, 1.0),
        _failover("flows", 1_000_000, 1.0, 1.1),
        _keyspace("flows", 5_000, 100_000.0),
        _keyspace("flows", 2_000_000, 50_000.0),
    ]
    colours = {"flows": "#1f77b4"}
    made = report_state.charts(results, tmp_path, tmp_path, report.LABELS, colours)
    assert made == ["failover.png", "keyspace.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in made)


def test_the_terminal_line_names_each_phase() -> None:
    line = report_state.failover_line(_failover("flows", 1_000, 1.0, 2.0)["failover"])
    assert line == (
        "1,000 keys built in 10.0 s; same-host: first output 1.0 s, caught up 2.0 s; "
        "new-host: first output 2.0 s, caught up 3.0 s"
    )


def test_each_table_says_the_command_that_reproduces_it() -> None:
    meta = {"repeat": 3, "seed": 7}
    repeated = _keyspace("flows", 5_000, 1.0) | {"notes": ["median of 3 runs: 1, 1, 1"]}
    lines = report_state.markdown([repeated], report.LABELS, str, meta)
    assert (
        "Reproduce: `make services && .venv/bin/python -m bench --case keyspace --repeat 3 "
        "--seed 7`." in lines
    )
    # rows merged in from a single run (--update) are not said to be medians
    lines = report_state.markdown([_keyspace("flows", 5_000, 1.0)], report.LABELS, str, meta)
    assert (
        "Reproduce: `make services && .venv/bin/python -m bench --case keyspace --seed 7`." in lines
    )
    assert report_state.reproduce("wordcount", {"seed": 42}).endswith("--case wordcount`.")
