"""The state store port (:class:`flows.ports.StateStore`) in dictionaries.

It follows the contract of ``runtimes.postgres.PostgresStateStore``; one contract suite
(``tests/contract/test_state_store.py``) runs against both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from time import time as wall_clock
from typing import Any

from flows.errors import WatermarkMovedError
from flows.history import HistoryEntry
from flows.ports import (
    BYTES_COLUMNS,
    PartitionTime,
    PendingBatch,
    StateColumns,
    StateCommit,
    StoredState,
    WindowRow,
    state_version,
)
from flows.tables import TableShape
from flows.testing.history import InMemoryHistories


@dataclass
class InMemoryStateStore:
    """The state store contract (see :class:`flows.ports.StateStore`) in dictionaries.

    ``now`` gives the commit times of history (seconds since the epoch; the test driver
    passes its clock's)."""

    tables: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    #: state tables: name -> how it keeps keys and values, and each state's version
    columns: dict[str, StateColumns] = field(default_factory=dict)
    versions: dict[str, dict[bytes, str]] = field(default_factory=dict)
    _writes: int = field(default=0, init=False, repr=False)
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
    #: the clock of history's commit times (seconds since the epoch)
    now: Callable[[], float] = wall_clock
    #: history tables (flows.history)
    histories: InMemoryHistories = field(init=False)

    def __post_init__(self) -> None:
        self.histories = InMemoryHistories(self.now)

    def ensure_table(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        self.tables.setdefault(table, {})
        self.columns[table] = columns

    def ensure_rows_table(self, shape: TableShape) -> None:
        self.row_tables.setdefault(shape.name, {})
        self.shapes[shape.name] = shape

    def ensure_history_table(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        self.histories.ensure(table, columns)

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
            versions = self.versions.setdefault(commit.table, {})
            for key, value in commit.states.items():
                if value is None:
                    table.pop(key, None)
                    versions.pop(key, None)
                else:
                    table[key] = value
                    version = commit.versions.get(key)
                    self._writes += 1  # the version of a state stored without one
                    versions[key] = (
                        f"u{self._writes}" if version is None else state_version(*version)
                    )
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
        if commit.history is not None:
            self.histories.write(commit.history)

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
        return [(s.key, s.value) for s in self.states(table, prefix, after, limit)]

    def state(self, table: str, key: bytes) -> StoredState | None:
        """One state and its version; None when there is none."""
        value = self.tables.get(table, {}).get(key)
        if value is None:
            return None
        return StoredState(key, value, self.versions[table][key])

    def states(
        self,
        table: str,
        prefix: bytes,
        after: bytes | None,
        limit: int,
        where: str | None = None,
    ) -> list[StoredState]:
        """:meth:`scan` with versions; with ``where`` (JSON text), only the states whose
        value contains it as PostgreSQL's ``jsonb @>`` does. ``ValueError`` for a ``where``
        on a table whose values are not JSON."""
        if limit <= 0:
            return []
        if where is not None and self.columns.get(table, BYTES_COLUMNS).value != "json":
            raise ValueError(f"state table {table!r} does not keep its values as JSON")
        template = None if where is None else json.loads(where)
        stored = self.tables.get(table, {})
        found: list[StoredState] = []
        for key in sorted(stored):
            if len(found) == limit:
                break
            if not key.startswith(prefix) or (after is not None and key <= after):
                continue
            if template is not None and not contains(json.loads(stored[key]), template):
                continue
            found.append(StoredState(key, stored[key], self.versions[table][key]))
        return found

    def history(
        self, table: str, key: bytes, before_seq: int | None, limit: int
    ) -> list[HistoryEntry]:
        """Up to ``limit`` changes of ``key`` with ``seq < before_seq`` (None: the newest
        first), newest first."""
        return self.histories.page(table, key, before_seq, limit)

    def history_after(
        self,
        table: str,
        after_id: int,
        limit: int,
        key: bytes | None = None,
        prefix: bytes = b"",
        up_to: int | None = None,
    ) -> list[HistoryEntry]:
        """Up to ``limit`` changes with ``after_id < id <= up_to``, of ``key`` (or of the
        keys starting with ``prefix``), in id order: what was committed after ``after_id``."""
        return self.histories.after(table, after_id, limit, key, prefix, up_to)

    def history_last_id(self, table: str) -> int:
        """The largest id of the changes kept in ``table`` (0: none)."""
        return self.histories.last_id(table)

    def ping(self) -> None:
        """Always answers."""

    def close(self) -> None:
        """Nothing to release."""

    def drop_tables(self, names: Iterable[str]) -> None:
        """Forgets the state, materialised or window tables ``names``."""
        for name in names:
            self.tables.pop(name, None)
            self.columns.pop(name, None)
            self.versions.pop(name, None)
            self.window_tables.pop(name, None)
            self.row_tables.pop(name, None)
            self.shapes.pop(name, None)
            self.histories.drop(name)

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


def contains(value: Any, template: Any, top: bool = True) -> bool:
    """Whether the JSON ``value`` contains ``template``, as PostgreSQL's ``jsonb @>`` says.

    An object contains an object whose every key it has with a value containing that key's;
    an array contains an array each of whose elements some element of it contains (order
    and repetition aside); a scalar, an equal scalar (``true`` is no ``1``); and, at the top
    level only, an array contains a scalar among its elements.
    """
    if isinstance(template, dict):
        return isinstance(value, dict) and all(
            k in value and contains(value[k], t, False) for k, t in template.items()
        )
    if isinstance(template, list):
        return isinstance(value, list) and all(
            any(contains(v, t, False) for v in value) for t in template
        )
    if top and isinstance(value, list):
        return any(_same_scalar(v, template) for v in value)
    return _same_scalar(value, template)


def _same_scalar(value: Any, template: Any) -> bool:
    if isinstance(value, dict | list):
        return False
    if isinstance(value, bool) or isinstance(template, bool):
        return value is template
    return bool(value == template) and (value is None) == (template is None)


def _fell_due(row: WindowRow, due_by: int | None, wall_due_by: int | None) -> bool:
    """Whether ``row`` is due by the threshold of its clock (None: no row of that clock)."""
    threshold = wall_due_by if row.wall else due_by
    return threshold is not None and row.due <= threshold
