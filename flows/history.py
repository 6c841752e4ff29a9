"""State history: every change of a stateful flow's states, kept beside the states.

A stateful flow with ``history=True`` keeps, in the table ``<state table>_history``, one row
per record its function applied: the key, the state before and after (``None``: absent,
a deletion), the input record (topic, partition, offset, event timestamp) and the commit
time. The rows are written in the transaction that writes the states and moves the
watermark (:class:`~flows.ports.StateCommit`), so history is exactly-once as the states
are: a batch that is refused (a zombie's) or rolled back (a crash) leaves no row, and a
batch is never applied twice.

This module is pure: what a change is (:class:`StateChange`), what a store gives back
(:class:`HistoryEntry`), what a commit asks (:class:`HistoryCommit`) and the options of a
flow, checked at load time (:func:`history_policy`).

Retention (:class:`HistoryPolicy`), enforced by every commit in bounded work (at most
:data:`RETENTION_LIMIT` rows a commit, so a backlog goes over several commits):

* ``keep``: the newest ``keep`` changes of a key stay; older ones of the keys a commit
  changes are removed by that commit (a key that stops changing keeps what it has);
* ``max_age``: changes committed longer ago than this are removed, oldest first (by
  commit order);
* both: a change goes when either says so; neither: every change is kept.

Numbering. Each row has an ``id``, its position in the table: ids grow in commit order
(a later commit's rows have larger ids), so ``id > n`` is exactly "what was committed after
the row ``n``", which subscriptions resume from. ``seq`` numbers a key's changes (1, 2, ...
from the oldest kept one: it restarts when retention removed every row of the key).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flows.errors import WiringError

__all__ = [
    "HISTORY_SUFFIX",
    "RETENTION_LIMIT",
    "HistoryCommit",
    "HistoryEntry",
    "HistoryPolicy",
    "StateChange",
    "history_policy",
    "history_table",
]

#: the history table of the state table ``t`` is ``t + HISTORY_SUFFIX``
HISTORY_SUFFIX = "_history"
#: the most history rows one commit removes for retention (per rule: count, age)
RETENTION_LIMIT = 1000
#: PostgreSQL truncates longer identifiers, so a longer table name could collide
_MAX_TABLE_NAME = 63


def history_table(table: str) -> str:
    """The history table of the state table ``table``."""
    return table + HISTORY_SUFFIX


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """A flow's history options, checked: ``keep`` changes per key and ``max_age_ms``
    (None: no such limit)."""

    keep: int | None = None
    max_age_ms: int | None = None


@dataclass(slots=True)
class StateChange:
    """One record's change of one key's state, as the port carries it (encoded). Not
    frozen: a step makes one per record, and a frozen dataclass's ``__init__`` (each field
    through ``object.__setattr__``) cost a third of the history's share of a batch (measured).

    ``previous`` and ``value`` are the state before and after, in the flow's state format
    (``None``: no state; ``value`` None is a deletion). ``topic``, ``partition`` and
    ``offset`` name the input record as the flow's function saw it (for a re-keyed flow or
    a join, the source record, not the intermediate topic's); ``timestamp`` is its
    timestamp (ms), None when it has none.
    """

    key: bytes
    previous: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One stored change: a :class:`StateChange` with its position ``id`` (grows in commit
    order), the key's change number ``seq`` and ``committed_at`` (aware, UTC)."""

    id: int
    seq: int
    change: StateChange
    committed_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class HistoryCommit:
    """The history part of a :class:`~flows.ports.StateCommit`: the changes to append to
    ``table``, in the order they were applied, and the retention to enforce."""

    table: str
    changes: Sequence[StateChange]
    policy: HistoryPolicy = HistoryPolicy()
    limit: int = RETENTION_LIMIT


def history_policy(config: Any, table: str, timed: bool) -> HistoryPolicy | None:
    """The checked history options of a stateful flow's configuration (None: no history).

    Raises :class:`WiringError` naming the flow and the field for a retention without
    ``history=True``, a ``history_keep`` below 1, a ``history_max_age`` that is not a
    positive ``timedelta``, a flow with time (timers, a TTL or ``timestamp=``: its states
    live in a table of timers and states, which keeps no history), or a table name too long
    for its history table's name to fit PostgreSQL's 63 characters.
    """
    flow = config.name
    keep, max_age = config.history_keep, config.history_max_age
    if not config.history:
        for fld, given in (("history_keep", keep), ("history_max_age", max_age)):
            if given is not None:
                raise WiringError(flow, fld, "a history retention needs history=True")
        return None
    if timed:
        raise WiringError(
            flow,
            "history",
            "flows with timers, a ttl or timestamp= keep no history; keep the changes you "
            "need with a Materialise flow of the outputs instead",
        )
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise WiringError(
            flow, "history_keep", f"must be a whole number of 1 or more, not {keep!r}"
        )
    max_age_ms = None
    if max_age is not None:
        if not isinstance(max_age, timedelta) or max_age <= timedelta(0):
            raise WiringError(
                flow, "history_max_age", f"must be a positive timedelta, not {max_age!r}"
            )
        max_age_ms = max(1, max_age // timedelta(milliseconds=1))
    if len(history_table(table)) > _MAX_TABLE_NAME:
        raise WiringError(
            flow,
            "table",
            f"the history table {history_table(table)!r} would be longer than "
            f"{_MAX_TABLE_NAME} characters: give the flow a shorter table=",
        )
    return HistoryPolicy(keep, max_age_ms)
