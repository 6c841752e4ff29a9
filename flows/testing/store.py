"""The state store port (:class:`flows.ports.StateStore`) in dictionaries.

It follows the contract of ``runtimes.postgres.PostgresStateStore``; one contract suite
(``tests/contract/test_state_store.py``) runs against both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.errors import WatermarkMovedError
from flows.ports import PendingBatch, StateCommit
from flows.tables import TableShape


@dataclass
class InMemoryStateStore:
    """The state store contract (see :class:`flows.ports.StateStore`) in dictionaries."""

    tables: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    watermarks: dict[tuple[str, str, int], int] = field(default_factory=dict)
    pending_batches: dict[tuple[str, str, int, int], PendingBatch] = field(default_factory=dict)
    row_tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    shapes: dict[str, TableShape] = field(default_factory=dict)

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

    def commit(self, commit: StateCommit) -> None:
        for (topic, partition), (read, _) in commit.watermarks.items():
            stored = self.watermarks.get((commit.group, topic, partition))
            if stored != read:
                raise WatermarkMovedError(
                    f"group {commit.group!r}, {topic}[{partition}]: watermark is {stored}, "
                    f"expected {read}; another worker owns this partition"
                )
        if commit.shape is not None:  # all or nothing: check every row before changing any
            for row in commit.rows:
                missing = [c for c in commit.shape.primary_key if c not in row]
                if missing:
                    raise KeyError(f"a row of {commit.shape.name!r} lacks {missing}")
        for (topic, partition), (_, new) in commit.watermarks.items():
            self.watermarks[(commit.group, topic, partition)] = new
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
        for (topic, partition), committed in commit.kafka_committed.items():
            for k in [
                k
                for k, b in self.pending_batches.items()
                if k[:3] == (commit.group, topic, partition) and b.next_offset <= committed
            ]:
                del self.pending_batches[k]
        for batch in commit.pending:
            if batch.outputs:  # a batch without outputs has nothing to re-emit
                where = (commit.group, batch.topic, batch.partition, batch.first_offset)
                self.pending_batches[where] = batch

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int
    ) -> list[PendingBatch]:
        found = [
            b
            for (g, t, p, first), b in self.pending_batches.items()
            if (g, t, p) == (group, topic, partition) and first >= from_offset
        ]
        return sorted(found, key=lambda b: b.first_offset)

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
        """Forgets the state or materialised tables ``names``."""
        for name in names:
            self.tables.pop(name, None)
            self.row_tables.pop(name, None)
            self.shapes.pop(name, None)

    def forget_groups(self, groups: Iterable[str]) -> None:
        """Forgets the watermarks and pending outputs of ``groups``."""
        doomed = set(groups)
        for key in [k for k in self.watermarks if k[0] in doomed]:
            del self.watermarks[key]
        for where in [k for k in self.pending_batches if k[0] in doomed]:
            del self.pending_batches[where]

    def rows(self, table_name: str) -> list[dict[str, Any]]:
        """Every row of a materialised table, ordered by primary key."""
        if table_name not in self.row_tables:
            raise KeyError(f"no table {table_name!r}")
        rows = self.row_tables[table_name]
        return [dict(rows[k]) for k in sorted(rows)]
