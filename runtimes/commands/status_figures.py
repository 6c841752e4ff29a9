"""The figures of ``flows status``: plain data classes, filled by :mod:`.status_reads`.

Everything is read from Kafka (admin client) and PostgreSQL directly, so it works with no
worker running. Something absent (a group nobody joined yet, a topic or table not yet
created, no ``flows_offsets`` table) is a figure of its own (``None`` or a state such as
``"missing"``), never an error; only an unreachable broker is
(:meth:`runtimes.kafka.Admin.check`). An unreachable database is reported in
:attr:`AppStatus.database_error` and leaves the database figures empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: how long a ``count(*)`` of one table may take before its figure is left out
COUNT_TIMEOUT_MS = 2000
#: a partition this many offsets or fewer behind is read to tell records from markers
MARKERS_AT_MOST = 16
#: how long that read may take, in seconds
MARKERS_TIMEOUT = 5.0


@dataclass(frozen=True)
class PartitionFigures:
    """One partition of a step's source, as the step's consumer group sees it.

    - ``high``: the high watermark, the offset the next record will get (``None``: the topic
      does not exist); transaction markers take offsets too, so it runs ahead of the
      records of a topic written with transactions.
    - ``committed``: the group's committed offset in Kafka, the next record it will read
      (``None``: nothing committed).
    - ``lag``: ``high - committed``, or ``high - low`` (the retained records, all waiting)
      when nothing is committed; but 0 when those offsets hold no committed record. A
      transaction's commit marker takes an offset, and a consumer stops before the last
      one, so a group that read everything of a topic written with transactions sits an
      offset or a few behind ``high``: a lag of at most :data:`MARKERS_AT_MOST` is checked
      by reading the partition (``read_committed``) from ``committed`` to its end.
    - ``watermark``: steps that keep state in PostgreSQL: ``flows_offsets.next_offset``, the
      first offset whose effect is not yet in the database (``None``: no row).
    - ``stream_time``: timed steps: the partition's stream time in ms since the epoch.
    """

    topic: str
    partition: int
    high: int | None
    committed: int | None
    lag: int | None
    watermark: int | None = None
    stream_time: int | None = None

    @property
    def flag(self) -> str:
        """Kafka's committed offset C against the database watermark W: ``"outputs owed"``
        when C < W (the database has effects whose outputs Kafka has not committed: the
        next worker re-emits them), ``"database behind"`` when C > W (which a worker refuses
        to run with), ``""`` when they agree or there is no watermark. No commit counts as
        C = 0, as recovery counts it."""
        if self.watermark is None:
            return ""
        committed = self.committed or 0
        if committed < self.watermark:
            return "outputs owed"
        if committed > self.watermark:
            return "database behind"
        return ""


@dataclass(frozen=True)
class Member:
    """A member of a consumer group: a worker process's consumer, and what it owns."""

    client_id: str
    host: str
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class FlowStatus:
    """One step (one consumer group) of the app.

    - ``group_state``: the group's state in Kafka (``"stable"``, ``"empty"``,
      ``"preparing_rebalance"``, ...), ``"missing"`` when Kafka knows no such group.
    - ``state_table`` / ``state_rows``: the step's table in PostgreSQL (state, window or
      materialised rows) and its ``count(*)`` (``None``: missing table, or the count took
      longer than :data:`COUNT_TIMEOUT_MS`; ``state_note`` says which).
    - ``dead_letters``: per dead-letter topic of the step, the sum of its partitions' high
      watermarks: the dead letters ever written (transaction markers included, so an upper
      bound for exactly-once steps); ``None``: the topic does not exist. Flows reading one
      source share its dead-letter topic, and so its figure.
    """

    flow: str
    step: str
    kind: str
    group: str
    group_state: str
    members: tuple[Member, ...]
    partitions: tuple[PartitionFigures, ...]
    keeps_watermarks: bool
    state_table: str | None = None
    state_rows: int | None = None
    state_note: str = ""
    dead_letters: dict[str, int | None] = field(default_factory=dict)

    @property
    def lag(self) -> int | None:
        """The sum of the partitions' lags (``None`` when no partition has one)."""
        lags = [p.lag for p in self.partitions if p.lag is not None]
        return sum(lags) if lags else None


@dataclass(frozen=True)
class AppStatus:
    """Every step of an app, read at ``at`` (seconds since the epoch)."""

    app: str
    at: float
    flows: tuple[FlowStatus, ...]
    database_error: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields, plus each flow's ``lag`` and each partition's
        ``flag``."""
        document = asdict(self)
        for flow, status in zip(document["flows"], self.flows, strict=True):
            flow["lag"] = status.lag
            for partition, figures in zip(flow["partitions"], status.partitions, strict=True):
                partition["flag"] = figures.flag
        return document
