"""The Prometheus adapter of :class:`flows.ports.Metrics`.

Names are ``flows_<name>`` (``_total`` for counters); labels are bounded: ``flow`` (the flow
as the user named it), ``step`` (the step of it: a flow with a state key runs as
``<flow>.rekey`` and ``<flow>``), and ``topic``/``partition`` where given. Each adapter owns
its registry, so two apps in one process (tests) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from flows.ports import MetricName

_COUNTERS: dict[str, str] = {
    "records_consumed": "records consumed from the flow's sources",
    "records_produced": "records produced to the flow's sinks (dead letters excluded)",
    "records_filtered": "records that produced no output",
    "records_dead_lettered": "records written to a dead-letter topic",
    "records_skipped": "failed records skipped by policy",
    "records_late": "records of windowed flows that came after all their windows closed",
    "retries": "batches retried after a transient failure",
    "rebalances": "partition assignments received",
    "state_cache_hits": "states found in the in-memory cache",
    "state_cache_misses": "states loaded from PostgreSQL",
}
_HISTOGRAMS: dict[str, str] = {
    "batch_size": "records per batch",
    "batch_seconds": "time to process and commit one batch",
    "db_commit_seconds": "time of the PostgreSQL transaction of a batch",
    "kafka_commit_seconds": "time of the Kafka transaction of a batch",
}
_GAUGES: dict[str, str] = {
    "consumer_lag": "records between the committed position and the end of the partition",
    "committed_offset": "last committed offset",
}
_SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 50000)


class PrometheusMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._counters = {
            n: Counter(f"flows_{n}", d, ["flow", "step"], registry=self.registry)
            for n, d in _COUNTERS.items()
        }
        self._histograms = {
            n: Histogram(
                f"flows_{n}",
                d,
                ["flow", "step"],
                registry=self.registry,
                buckets=_SIZE_BUCKETS if n == "batch_size" else Histogram.DEFAULT_BUCKETS,
            )
            for n, d in _HISTOGRAMS.items()
        }
        self._gauges = {
            n: Gauge(
                f"flows_{n}", d, ["flow", "step", "topic", "partition"], registry=self.registry
            )
            for n, d in _GAUGES.items()
        }

    def increment(self, name: MetricName, value: float = 1, /, **labels: str) -> None:
        self._counters[name].labels(labels.get("flow", ""), labels.get("step", "")).inc(value)

    def observe(self, name: MetricName, value: float, /, **labels: str) -> None:
        self._histograms[name].labels(labels.get("flow", ""), labels.get("step", "")).observe(value)

    def gauge(self, name: MetricName, value: float, /, **labels: str) -> None:
        self._gauges[name].labels(
            labels.get("flow", ""),
            labels.get("step", ""),
            labels.get("topic", ""),
            labels.get("partition", ""),
        ).set(value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
