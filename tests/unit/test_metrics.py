"""The Prometheus adapter exposes every metric of the port, and the dashboard asks for them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

from flows.ports import MetricName
from runtimes.metrics import PrometheusMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples/monitoring/grafana/dashboards/flows.json"


def _exposed() -> str:
    metrics = PrometheusMetrics()
    for name in get_args(MetricName):
        for record in (metrics.increment, metrics.observe, metrics.gauge):
            try:
                record(name, 3, flow="f", topic="t", partition="0")
            except KeyError:
                continue
    return metrics.exposition().decode()


def test_every_port_metric_is_exposed() -> None:
    text = _exposed()
    for name in get_args(MetricName):
        assert re.search(rf"^flows_{name}(_total|_bucket|_count)?\{{", text, re.M), name


def test_the_dashboard_only_asks_for_exposed_metrics() -> None:
    text = _exposed()
    exposed = set(re.findall(r"^(flows_\w+?)\{", text, re.M))
    panels = json.loads(DASHBOARD.read_text())["panels"]
    asked = {m for p in panels for t in p["targets"] for m in re.findall(r"flows_\w+", t["expr"])}
    assert asked, "the dashboard has no queries"
    assert asked <= exposed, asked - exposed
