"""The reads behind ``flows status``: Kafka's admin client and PostgreSQL, into the data
classes of :mod:`runtimes.commands.status_figures` (what each figure means is written there).

Something absent (a group nobody joined yet, a topic or table not yet created, no
``flows_offsets`` table) becomes a figure of its own, never an error; an unreachable
database is reported in :attr:`AppStatus.database_error`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

from flows.app import App
from flows.steps import MaterialiseStep, StatefulStep, Step
from flows.steps.dedupe import DeduplicateStep
from flows.steps.window import WindowStep
from runtimes.commands.status_figures import (
    COUNT_TIMEOUT_MS,
    MARKERS_AT_MOST,
    MARKERS_TIMEOUT,
    AppStatus,
    FlowStatus,
    Member,
    PartitionFigures,
)
from runtimes.kafka import Admin
from runtimes.postgres import OFFSETS_TABLE
from runtimes.postgres.engine import create_engine


def table_of(app: App, step: Step) -> str | None:
    """The PostgreSQL table ``step`` keeps its rows in, if any."""
    if isinstance(step, StatefulStep | WindowStep | DeduplicateStep):
        return step.table
    if isinstance(step, MaterialiseStep) and step.shape is not None:
        return app.materialised_tables().get(step.flow)
    return None


class StatusReader:
    """Reads an :class:`AppStatus` of one app; reusable for refreshes (``--watch``)."""

    def __init__(self, app: App, admin: Admin, database_url: str, kafka: dict[str, Any]) -> None:
        """``kafka``: the connection options of a consumer (bootstrap servers, security)."""
        self.app = app
        self.admin = admin
        self.kafka = kafka
        self.engine = create_engine(database_url, pool_size=1)

    def close(self) -> None:
        self.engine.dispose()

    def read(self) -> AppStatus:
        steps = self.app.steps
        existing = self.admin.existing()
        partitions = {
            (topic, p)
            for step in steps
            for topic in (*step.source_names, *(t.name for t in step.dead_letters.values()))
            if topic in existing
            for p in range(existing[topic])
        }
        low, high = self._offsets(sorted(partitions))
        groups = self._groups([s.group_id for s in steps])
        try:
            watermarks, rows = self._database(steps)
            database_error = ""
        except sa.exc.OperationalError as error:
            watermarks, rows, database_error = {}, {}, str(error.orig or error).strip()
        figures_of = {
            step.group_id: self._figures(step, existing, low, high, watermarks) for step in steps
        }
        settled = self._markers_only([p for fs in figures_of.values() for p in fs])
        flows = []
        for step in steps:
            figures = [
                replace(p, lag=0) if (p.topic, p.partition, p.committed) in settled else p
                for p in figures_of[step.group_id]
            ]
            state, members = groups.get(step.group_id, ("missing", ()))
            table = table_of(self.app, step)
            count, note = rows.get(table, (None, "")) if table else (None, "")
            flows.append(
                FlowStatus(
                    flow=step.flow,
                    step=step.name,
                    kind=step.kind,
                    group=step.group_id,
                    group_state=state,
                    members=members,
                    partitions=tuple(figures),
                    keeps_watermarks=step.keeps_state,
                    state_table=table,
                    state_rows=count,
                    state_note=note if not database_error else "database unreachable",
                    dead_letters={
                        t.name: _sum(high, t.name, existing) for t in step.dead_letters.values()
                    },
                )
            )
        return AppStatus(self.app.name, time.time(), tuple(flows), database_error)

    # --- Kafka ---------------------------------------------------------------------------

    def _figures(
        self,
        step: Step,
        existing: dict[str, int],
        low: dict[tuple[str, int], int],
        high: dict[tuple[str, int], int],
        watermarks: dict[tuple[str, str, int], tuple[int, int | None]],
    ) -> list[PartitionFigures]:
        """The figures of each partition of ``step``'s sources, lag counted in offsets."""
        committed = self._committed(step, existing)
        figures = []
        for topic in step.source_names:
            for p in range(existing.get(topic, 0)):
                c, h = committed.get((topic, p)), high.get((topic, p))
                start = c if c is not None else low.get((topic, p))
                w, t = watermarks.get((step.group_id, topic, p), (None, None))
                lag = None if h is None or start is None else max(h - start, 0)
                figures.append(PartitionFigures(topic, p, h, c, lag, w, t))
            if topic not in existing:
                figures.append(PartitionFigures(topic, -1, None, None, None))
        return figures

    def _markers_only(self, figures: list[PartitionFigures]) -> set[tuple[str, int, int | None]]:
        """The (topic, partition, committed) of the figures whose few lagging offsets hold
        no committed record (only transaction markers), found by reading them."""
        starts = {
            (p.topic, p.partition): p.committed
            for p in figures
            if p.lag and p.lag <= MARKERS_AT_MOST and p.committed is not None
        }
        if not starts:
            return set()
        consumer = Consumer(
            {
                **self.kafka,
                "group.id": "flows-status",  # never joined: partitions are assigned
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        open_ = dict(starts)
        empty: set[tuple[str, int, int | None]] = set()
        try:
            consumer.assign([TopicPartition(t, p, c) for (t, p), c in starts.items()])
            deadline = time.monotonic() + MARKERS_TIMEOUT
            while open_ and time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is None:
                    continue
                where = (message.topic() or "", message.partition() or 0)
                if where not in open_:
                    continue
                error = message.error()
                if error is None:
                    open_.pop(where)  # a record: the lag is real
                elif error.code() == KafkaError._PARTITION_EOF:
                    empty.add((*where, open_.pop(where)))
        finally:
            consumer.close()
        return empty

    def _offsets(
        self, partitions: Sequence[tuple[str, int]]
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        """The low and high watermarks of ``partitions`` (two ``ListOffsets`` requests)."""
        found: list[dict[tuple[str, int], int]] = []
        for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):  # type: ignore[no-untyped-call]
            offsets: dict[tuple[str, int], int] = {}
            if partitions:
                request = {TopicPartition(t, p): spec for t, p in partitions}
                futures = self.admin.client.list_offsets(
                    request, request_timeout=self.admin.timeout
                )
                for tp, future in futures.items():
                    try:
                        offsets[(tp.topic, tp.partition)] = future.result().offset
                    except KafkaException:
                        continue  # a partition without a leader: no figure
            found.append(offsets)
        return found[0], found[1]

    def _groups(self, group_ids: list[str]) -> dict[str, tuple[str, tuple[Member, ...]]]:
        """Each group's state and members; a group Kafka does not know is left out."""
        described: dict[str, tuple[str, tuple[Member, ...]]] = {}
        futures = self.admin.client.describe_consumer_groups(
            group_ids, request_timeout=self.admin.timeout
        )
        for group, future in futures.items():
            try:
                description = future.result()
            except KafkaException:
                continue  # GROUP_ID_NOT_FOUND (newer brokers), or no coordinator: missing
            state = description.state.name.lower() if description.state else "unknown"
            if state == "dead":  # older brokers describe an unknown group as dead
                continue
            members = tuple(
                Member(
                    member.client_id,
                    member.host,
                    tuple(
                        f"{tp.topic}[{tp.partition}]"
                        for tp in (member.assignment.topic_partitions if member.assignment else [])
                    ),
                )
                for member in description.members
            )
            described[group] = (state, members)
        return described

    def _committed(self, step: Step, existing: dict[str, int]) -> dict[tuple[str, int], int]:
        """The group's committed offsets on the step's existing sources (none: left out)."""
        tps = [TopicPartition(t, p) for t in step.source_names for p in range(existing.get(t, 0))]
        if not tps:
            return {}
        request = [ConsumerGroupTopicPartitions(step.group_id, tps)]
        futures = self.admin.client.list_consumer_group_offsets(
            request, request_timeout=self.admin.timeout
        )
        try:
            answer = futures[step.group_id].result()
        except KafkaException:
            return {}
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in answer.topic_partitions
            if tp.offset >= 0 and tp.error is None
        }

    # --- PostgreSQL ----------------------------------------------------------------------

    def _database(
        self, steps: Iterable[Step]
    ) -> tuple[
        dict[tuple[str, str, int], tuple[int, int | None]], dict[str, tuple[int | None, str]]
    ]:
        """The watermarks (and stream times) of the steps' groups, and each table's rows."""
        steps = list(steps)
        watermarks: dict[tuple[str, str, int], tuple[int, int | None]] = {}
        groups = [s.group_id for s in steps if s.keeps_state]
        with self.engine.connect() as conn:
            if groups and _exists(conn, OFFSETS_TABLE):
                offsets = sa.table(
                    OFFSETS_TABLE,
                    *(
                        sa.column(c)
                        for c in ("group_id", "topic", "partition", "next_offset", "stream_time")
                    ),
                )
                query = sa.select(offsets).where(offsets.c.group_id.in_(groups))
                for group, topic, partition, offset, stream_time in conn.execute(query):
                    watermarks[(group, topic, int(partition))] = (int(offset), stream_time)
            conn.rollback()
            rows: dict[str, tuple[int | None, str]] = {}
            for step in steps:
                table = table_of(self.app, step)
                if table is not None and table not in rows:
                    rows[table] = _count(conn, table)
        return watermarks, rows


def _sum(high: dict[tuple[str, int], int], topic: str, existing: dict[str, int]) -> int | None:
    if topic not in existing:
        return None
    return sum(high.get((topic, p), 0) for p in range(existing[topic]))


def _exists(conn: sa.Connection, table: str) -> bool:
    """Whether ``table`` exists on the search path (``to_regclass`` of its quoted name)."""
    quoted = conn.dialect.identifier_preparer.quote(table)
    found = conn.execute(sa.select(sa.func.to_regclass(quoted))).scalar()
    return found is not None


def _count(conn: sa.Connection, table: str) -> tuple[int | None, str]:
    """``count(*)`` of ``table`` within :data:`COUNT_TIMEOUT_MS`, or ``None`` and why."""
    try:
        if not _exists(conn, table):
            return None, "missing"
        conn.execute(sa.text(f"SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}"))
        count = conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar()
        return int(count or 0), ""
    except sa.exc.OperationalError as error:
        if "statement timeout" not in str(error):
            raise
        return None, f"count took over {COUNT_TIMEOUT_MS} ms"
    finally:
        conn.rollback()
