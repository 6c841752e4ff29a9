"""The state store port (:class:`flows.ports.StateStore`) in dictionaries.

It follows the contract of ``runtimes.postgres.PostgresStateStore``; one contract suite
(``tests/contract/test_state_store.py``) runs against both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.errors import WatermarkMovedError
from flows.ports import PartitionTime, PendingBatch, StateCommit, WindowRow
from flows.tables import TableShape


@dataclass
class InMemoryStateStore:
    """The state store contract (see :class:`flows.ports.StateStore`) in dictionaries."""

    tables: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    watermarks: dict[tuple[str, str, int], int] = field(default_factory=dict)
    #: keyed by (group, topic, partition, first_offset, seq)
    pending_batches: dict[tuple[str, str, int, int, int], PendingBatch] = field(
        default_factory=dict
    )
    row_tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    shapes: dict[str, TableShape] = field(default_factory=dict)
    #: the commit sequence and stream time kept beside a watermark, once a commit set them
    times: dict[tuple[str, str, int], PartitionTime] = field(default_factory=dict)
    #: window tables: name -> (partition, key, start) -> row
    window_tables: dict[str, dict[tuple[int, bytes, int], WindowRow]] = field(default_factory=dict)

    def ensure_table(self, table: str) -> None:
        self.tables.setdefault(table, {})

    def ensure_rows_table(self, shape: TableShape) -> None:
        self.row_tables.setdefault(shape.name, {})
        self.shapes[shape.name] = shape

    def watermark(self, group: str, topic: str, partition: int, start: int) -> int:
        return self.watermarks.setdefault((group, topic, partition), start)

    def load(self, table: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        stored = self.tables.get(table, {})
        return {key: stored[key] for key in keys if key in stored}

    def get(self, table: str, key: bytes) -> bytes | None:
        return self.tables.get(table, {}).get(key)

    def ensure_window_table(self, table: str) -> None:
        self.window_tables.setdefault(table, {})

    def partition_time(self, group: str, topic: str, partition: int) -> PartitionTime:
        return self.times.get((group, topic, partition), PartitionTime())

    def load_windows(
        self,
        table: str,
        partition: int,
        keys: Sequence[bytes],
        due_by: int | None,
        wall_due_by: int | None = None,
    ) -> list[WindowRow]:
        wanted = set(keys)

        found = [
            row
            for (p, key, _), row in self.window_tables.get(table, {}).items()
            if p == partition
            and (key in wanted or (row.pending and _fell_due(row, due_by, wall_due_by)))
        ]
        return sorted(found, key=lambda row: (row.key, row.start))

    def next_due(self, table: str, partition: int, wall: bool = False) -> int | None:
        dues = [
            r.due
            for r in self.window_tables.get(table, {}).values()
            if r.partition == partition and r.wall == wall and r.pending
        ]
        return min(dues, default=None)

    def windows(self, table: str, key: bytes) -> list[WindowRow]:
        found = [r for r in self.window_tables.get(table, {}).values() if r.key == key]
        return sorted(found, key=lambda row: (row.partition, row.start))

    def commit(self, commit: StateCommit) -> None:
        commit.check()
        for (topic, partition), (read, _) in commit.watermarks.items():
            stored = self.watermarks.get((commit.group, topic, partition))
            if stored != read:
                raise WatermarkMovedError(
                    f"group {commit.group!r}, {topic}[{partition}]: watermark is {stored}, "
                    f"expected {read}; another worker owns this partition"
                )
        for (topic, partition), (read_seq, _) in commit.times.items():
            seq = self.partition_time(commit.group, topic, partition).seq
            if seq != read_seq:
                raise WatermarkMovedError(
                    f"group {commit.group!r}, {topic}[{partition}]: commit sequence is {seq}, "
                    f"expected {read_seq}; another worker owns this partition"
                )
        if commit.shape is not None:  # all or nothing: check every row before changing any
            for row in commit.rows:
                missing = [c for c in commit.shape.primary_key if c not in row]
                if missing:
                    raise KeyError(f"a row of {commit.shape.name!r} lacks {missing}")
        for (topic, partition), (_, new) in commit.watermarks.items():
            self.watermarks[(commit.group, topic, partition)] = new
        for (topic, partition), (_, time) in commit.times.items():
            self.times[(commit.group, topic, partition)] = time
        if commit.table is not None:
            table = self.tables.setdefault(commit.table, {})
            for key, value in commit.states.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
        if commit.shape is not None:
            shape = commit.shape
            rows = self.row_tables.setdefault(shape.name, {})
            for row in commit.rows:
                pk = tuple(row[c] for c in shape.primary_key)
                rows[pk] = {**rows.get(pk, {}), **row}
        if commit.window_table is not None:
            windows = self.window_tables.setdefault(commit.window_table, {})
            for window in commit.windows:
                windows[(window.partition, window.key, window.start)] = window
            for where in commit.windows_removed:
                windows.pop(where, None)
            for partition, (due_by, wall_due_by) in sorted(commit.expire.items()):
                expired = sorted(
                    (
                        row
                        for row in windows.values()
                        if row.partition == partition
                        and not row.pending
                        and _fell_due(row, due_by, wall_due_by)
                    ),
                    key=lambda row: (row.due, row.wall, row.key, row.start),
                )
                for gone in expired[: commit.expire_limit]:
                    del windows[(gone.partition, gone.key, gone.start)]
        for (topic, partition), committed in commit.kafka_committed.items():
            for k in [
                k
                for k, b in self.pending_batches.items()
                if k[:3] == (commit.group, topic, partition) and b.next_offset <= committed
            ]:
                del self.pending_batches[k]
        for batch in commit.pending:
            if batch.outputs:  # a batch without outputs has nothing to re-emit
                at = (commit.group, batch.topic, batch.partition, batch.first_offset, batch.seq)
                self.pending_batches[at] = batch

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int, after_seq: int = -1
    ) -> list[PendingBatch]:
        found = [
            b
            for (g, t, p, first, seq), b in self.pending_batches.items()
            if (g, t, p) == (group, topic, partition) and first >= from_offset and seq > after_seq
        ]
        return sorted(found, key=lambda b: (b.first_offset, b.seq))

    # The runtime's extras beyond the port (state queries, `flows reset`, tests), with the
    # same behaviour as runtimes.postgres.PostgresStateStore.

    def scan(
        self, table: str, prefix: bytes, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` states whose key starts with ``prefix`` and sorts after ``after``."""
        if limit <= 0:
            return []
        stored = self.tables.get(table, {})
        keys = sorted(k for k in stored if k.startswith(prefix) and (after is None or k > after))
        return [(k, stored[k]) for k in keys[:limit]]

    def ping(self) -> None:
        """Always answers."""

    def close(self) -> None:
        """Nothing to release."""

    def drop_tables(self, names: Iterable[str]) -> None:
        """Forgets the state, materialised or window tables ``names``."""
        for name in names:
            self.tables.pop(name, None)
            self.window_tables.pop(name, None)
            self.row_tables.pop(name, None)
            self.shapes.pop(name, None)

    def forget_groups(self, groups: Iterable[str]) -> None:
        """Forgets the watermarks and pending outputs of ``groups``."""
        doomed = set(groups)
        for key in [k for k in self.watermarks if k[0] in doomed]:
            del self.watermarks[key]
            self.times.pop(key, None)
        for where in [k for k in self.pending_batches if k[0] in doomed]:
            del self.pending_batches[where]

    def rows(self, table_name: str) -> list[dict[str, Any]]:
        """Every row of a materialised table, ordered by primary key."""
        if table_name not in self.row_tables:
            raise KeyError(f"no table {table_name!r}")
        rows = self.row_tables[table_name]
        return [dict(rows[k]) for k in sorted(rows)]


def _fell_due(row: WindowRow, due_by: int | None, wall_due_by: int | None) -> bool:
    """Whether ``row`` is due by the threshold of its clock (None: no row of that clock)."""
    threshold = wall_due_by if row.wall else due_by
    return threshold is not None and row.due <= threshold
