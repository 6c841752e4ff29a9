"""History tables (:mod:`flows.history`) in memory, for :class:`InMemoryStateStore`.

The same contract as ``runtimes/postgres/history.py``, checked by the contract suite
(``tests/contract/test_state_history.py``): ids grow in commit order, ``seq`` numbers a
key's kept changes, and each commit enforces retention in bounded work, in this order:
when the oldest change was committed longer than ``max_age`` ago, those of the ``limit``
oldest that were go first; then the commit's changes are appended; then, for the keys it
changed, the changes past the newest ``keep`` go (oldest first, at most ``limit``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from flows.history import HistoryCommit, HistoryEntry
from flows.ports import BYTES_COLUMNS, StateColumns

__all__ = ["InMemoryHistories"]


@dataclass
class _Table:
    columns: StateColumns
    #: by id, in id order (ids only grow)
    entries: dict[int, HistoryEntry] = field(default_factory=dict)
    last_id: int = 0


@dataclass
class InMemoryHistories:
    """Every history table of one in-memory store; ``now`` gives commit times (seconds)."""

    now: Callable[[], float]
    tables: dict[str, _Table] = field(default_factory=dict)

    def ensure(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        self.tables.setdefault(table, _Table(columns))

    def drop(self, table: str) -> None:
        self.tables.pop(table, None)

    def write(self, history: HistoryCommit) -> None:
        """Applies one commit's history, as the module docstring says."""
        table = self.tables.setdefault(history.table, _Table(BYTES_COLUMNS))
        entries, policy, limit = table.entries, history.policy, history.limit
        now = datetime.datetime.fromtimestamp(self.now(), datetime.UTC)
        if policy.max_age_ms is not None and entries:
            cutoff = now - datetime.timedelta(milliseconds=policy.max_age_ms)
            oldest = list(entries.values())[:limit]  # in id order
            if oldest[0].committed_at < cutoff:
                for entry in oldest:
                    if entry.committed_at < cutoff:
                        del entries[entry.id]
        last_seq: dict[bytes, int] = {}
        for entry in entries.values():
            last_seq[entry.change.key] = max(last_seq.get(entry.change.key, 0), entry.seq)
        for change in history.changes:
            table.last_id += 1
            seq = last_seq[change.key] = last_seq.get(change.key, 0) + 1
            entries[table.last_id] = HistoryEntry(table.last_id, seq, change, now)
        if policy.keep is not None:
            changed = {c.key for c in history.changes}
            beyond = [
                e
                for e in entries.values()
                if e.change.key in changed and e.seq <= last_seq[e.change.key] - policy.keep
            ]
            for entry in beyond[:limit]:  # in id order
                del entries[entry.id]

    def page(
        self, table: str, key: bytes, before_seq: int | None, limit: int
    ) -> list[HistoryEntry]:
        """Up to ``limit`` changes of ``key`` with ``seq < before_seq`` (any when None),
        newest first."""
        found = self.tables.get(table)
        if found is None or limit <= 0:
            return []
        mine = [
            e
            for e in found.entries.values()
            if e.change.key == key and (before_seq is None or e.seq < before_seq)
        ]
        return sorted(mine, key=lambda e: e.seq, reverse=True)[:limit]

    def after(
        self,
        table: str,
        after_id: int,
        limit: int,
        key: bytes | None = None,
        prefix: bytes = b"",
        up_to: int | None = None,
    ) -> list[HistoryEntry]:
        """Up to ``limit`` changes with ``after_id < id <= up_to`` (no upper bound when
        None), of ``key`` when given, else of keys starting with ``prefix``, in id order."""
        found = self.tables.get(table)
        if found is None or limit <= 0:
            return []
        selected: list[HistoryEntry] = []
        for entry in found.entries.values():
            if entry.id <= after_id or (up_to is not None and entry.id > up_to):
                continue
            k = entry.change.key
            if (k == key) if key is not None else k.startswith(prefix):
                selected.append(entry)
                if len(selected) == limit:
                    break
        return selected

    def last_id(self, table: str) -> int:
        """The largest id of the changes kept (0: none): a subscription from now starts
        after it."""
        found = self.tables.get(table)
        return max(found.entries, default=0) if found is not None else 0
