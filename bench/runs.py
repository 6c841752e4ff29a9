"""What the bench runs, and what a run records.

The systems, the cases and their variants (and which system runs which case), the options
every run shares, a case's prepared input (:class:`Prepared`) and a run's outcome
(:class:`Result`, written to the results JSON by :func:`result_dict`). :mod:`bench.harness`
runs them; these are plain data, no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import data

SYSTEMS = ("flows", "flows-x2", "raw", "durable", "quixstreams", "kafka-streams", "faust")
#: worker processes of each flows system (``flows run --processes``)
FLOWS_PROCESSES = {"flows": 1, "flows-x2": 2}
CASES = (
    "stateless-json",
    "stateless-json-latency",
    "wordcount",
    "materialise",
    "windowed",
    "failover",
    "keyspace",
)

#: (case, variant) pairs, in run order. Variants: alos (at-least-once), eos (exactly-once);
#: the failover and keyspace cases' variants are their sizes in keys (see :func:`variants`).
VARIANTS: dict[str, tuple[str, ...]] = {
    "stateless-json": ("alos", "eos"),
    "stateless-json-latency": ("alos", "eos"),
    # eos: lines in, counts out, as the peers do; eos-table: the example as shipped, which
    # also materialises every count into a PostgreSQL table (flows only)
    "wordcount": ("eos", "eos-table"),
    "materialise": ("upsert",),
    # per-key count per one-minute tumbling window, final results only, exactly-once
    "windowed": ("eos",),
}
#: A share of the input for systems too slow to read all of it in reasonable time (a
#: steady rate shows well before the end); they read their own topic holding the first
#: records of the same seeded data.
SCALE = {"faust": 0.1}
#: Why a system sits a case out (recorded as status "n/a").
NOT_APPLICABLE = {
    ("materialise", "faust"): "Faust has no PostgreSQL sink (a hand-written one would be "
    "'raw', not Faust)",
    ("windowed", "faust"): "not written: Faust has no final-only window results (an "
    "on_window_close callback producing them would be ours, not Faust's; robinhood/faust#514)",
    ("materialise", "kafka-streams"): "Kafka Streams has no PostgreSQL sink (Kafka Connect's "
    "JDBC sink would be another system)",
    ("windowed", "kafka-streams"): "not written yet (Kafka Streams runs wordcount and "
    "stateless-json)",
}
#: The only cases some systems run (the others run every case): the durable ceiling is a
#: wordcount; raw is the ceiling of the other cases.
SYSTEM_CASES = {
    "durable": ("wordcount", "keyspace"),
    "flows-x2": ("stateless-json", "wordcount"),
}
#: The only systems some cases run: the state cases compare where state lives (PostgreSQL,
#: RocksDB and a changelog); raw's and Faust's is in memory, nothing to restore.
CASE_SYSTEMS = {
    "failover": ("flows", "quixstreams", "kafka-streams"),
    "keyspace": ("flows", "durable", "quixstreams", "kafka-streams"),
}
#: The cases whose variants are sizes, exactly-once whatever the variant.
STATE_CASES = ("failover", "keyspace")
#: What each case's systems run (``BENCH_CASE``), where it is not the case itself.
SYSTEM_CASE = {
    "stateless-json-latency": "stateless-json",
    "failover": "count",
    "keyspace": "count",
}
#: Variants that only some systems run.
VARIANT_SYSTEMS = {("wordcount", "eos-table"): ("flows",)}


@dataclass(frozen=True)
class Options:
    seed: int
    records: int
    lines: int
    keys: int
    partitions: int
    latency_rate: int
    latency_seconds: float
    timeout: float
    bootstrap: str
    database_url: str
    run_id: str
    workdir: Path
    quick: bool = False
    keep: bool = False
    profile: Path | None = None
    #: py-spy samples waiting threads too (``--idle``): where a thread waits, not only
    #: where it computes
    profile_idle: bool = False
    #: distinct keys of the windowed case
    window_keys: int = 1000
    #: the failover case's state sizes (keys), and its fresh records per kill
    failover_keys: tuple[int, ...] = (100_000, 1_000_000)
    failover_fresh: int = 20_000
    #: the keyspace case's sizes (distinct keys), and its records: at least this many, and
    #: at least two passes over the keyspace
    keyspaces: tuple[int, ...] = (5_000, 100_000, 2_000_000)
    keyspace_records: int = 1_000_000


def variants(case: str, options: Options) -> tuple[str, ...]:
    """The variants of ``case``, in run order: the sizes of the failover and keyspace cases."""
    if case == "failover":
        return tuple(str(n) for n in options.failover_keys)
    if case == "keyspace":
        return tuple(str(n) for n in options.keyspaces)
    return VARIANTS[case]


def keyspace_records(keys: int, options: Options) -> int:
    """The keyspace case's records over ``keys`` keys: two passes over it at least."""
    return max(options.keyspace_records, 2 * keys)


@dataclass
class Result:
    case: str
    variant: str
    system: str
    status: str = "ok"  # ok | failed | timeout | saturated (latency only) | n/a
    input_records: int = 0
    outputs_expected: int = 0
    outputs_seen: int = 0
    wall_s: float | None = None
    records_per_s: float | None = None
    cpu_s: float | None = None
    cpu_s_per_million: float | None = None
    cpu_total_s: float | None = None
    peak_rss_mb: float | None = None
    latency_ms: dict[str, float] | None = None
    exit_code: int | None = None
    error: str | None = None
    log: str | None = None
    notes: list[str] = field(default_factory=list)
    #: which repetition this is (``--repeat``): each runs under its own names
    attempt: int = 0
    #: of repeated runs: (largest - smallest) / median of their figure, the run's noise
    spread: float | None = None
    #: the failover case's figures (see :mod:`bench.failover`)
    failover: dict[str, Any] | None = None

    @property
    def suffix(self) -> str:
        """What sets a repetition's topics, group, table and log apart from the first run's."""
        return f"-r{self.attempt}" if self.attempt else ""


@dataclass
class Prepared:
    """A case's input topic and what a complete output looks like."""

    topic: str
    records: int
    outputs: int
    expect: data.MaterialiseExpectation | None = None
    windows: data.WindowExpectation | None = None
    produce_s: float = 0.0
    #: the failover case: records appended per key after production, and the phases that
    #: appended them
    appended: Counter[bytes] = field(default_factory=Counter)
    phases: int = 0


def result_dict(result: Result) -> dict[str, Any]:
    return {k: v for k, v in result.__dict__.items()}
