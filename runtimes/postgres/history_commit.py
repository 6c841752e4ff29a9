"""Writing history in the store's commit: the changes of a batch, their notification and
retention, in the commit's transaction (its last step, ``commit.py``).

A commit's history (:func:`write_history`) runs, in order:

1. **age retention**: when the oldest row (smallest id) was committed before ``now() -
   max_age``, one ``DELETE`` of those of the ``limit`` oldest rows that were (the primary
   key's order is commit order; when the oldest row has not expired, one probe of it is
   all: an index on ``committed_at`` would cost every insert more, measured a third);
2. **the id lock**: ``pg_advisory_xact_lock(<class>, hashtext(<table>))``, held until the
   transaction ends. Identity values are handed out when rows are inserted, not when they
   commit: without the lock, two committers of one flow (two partitions in two workers)
   could commit ids 5-9 after ids 10-14 had been read, and a subscriber resuming after 14
   would miss 5-9. Under the lock, a commit's ids are drawn after every earlier commit of
   the table is visible (PostgreSQL releases locks after a commit becomes visible), so ids
   grow in commit order and ``id > n`` means "committed after ``n``". It serialises only
   the end of commits of one flow (the insert, step 4, and the commit itself);
3. **the insert** of the changes, in the order applied, with ``seq`` the key's largest
   plus its rank in the batch, then ``NOTIFY flows_history '<table> <first id> <last
   id>'`` in the same statement (a ``WITH ... RETURNING``): PostgreSQL delivers it on
   commit only, in commit order, to every listening process (``changes.py``);
4. **count retention**: one ``DELETE`` of at most ``limit`` rows of the keys the batch
   changed beyond their newest ``keep`` (the ``(key, seq)`` index, per key), oldest first.

Apart from the queries (``history.py``) because this is the one path that writes, under
the lock, on every commit of a flow with history: its cost is the commit's.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from flows.history import HistoryCommit, StateChange
from runtimes.postgres.history_tables import HistoryTable
from runtimes.postgres.statements import array_text

__all__ = ["write_history"]


def write_history(conn: sa.Connection, t: HistoryTable, history: HistoryCommit) -> None:
    """Applies ``history`` to its table ``t`` in ``conn``'s transaction (the module
    docstring's steps)."""
    policy, limit = history.policy, history.limit
    if policy.max_age_ms is not None and limit > 0:
        age = datetime.timedelta(milliseconds=policy.max_age_ms)
        conn.execute(t.trim_age, {"max_age": age, "limit": limit})
    changes = history.changes
    if not changes:
        return
    # The keys' last seqs, read before the lock: only this partition's owner writes
    # them (the watermark rows it holds say so), so they cannot move meanwhile.
    distinct = list(dict.fromkeys(c.key for c in changes))
    to_bytes = t.key.to_bytes
    found = conn.execute(t.last_seqs, {"distinct": t.key.dump(distinct)}).all()
    last = {to_bytes(k): int(seq) for k, seq in found if seq is not None}
    params = _insert_params(t, changes, last)
    conn.execute(t.lock)
    conn.execute(t.insert, params)
    if policy.keep is not None and limit > 0:
        cuts = {k: seq - policy.keep for k, seq in last.items() if seq > policy.keep}
        if cuts:
            conn.execute(
                t.trim_count,
                {
                    "trimmed": t.key.dump(list(cuts)),
                    "cuts": array_text(cuts.values()),
                    "limit": limit,
                },
            )


def _insert_params(
    t: HistoryTable, changes: Sequence[StateChange], last: dict[bytes, int]
) -> dict[str, Any]:
    """The parameters of :attr:`HistoryTable.insert` for ``changes``; ``last`` has each
    key's largest stored ``seq`` (absent: none) and leaves with its new one."""
    placeholder = b"null" if t.value.kind == "json" else b""
    seqs: list[int] = []
    topics: dict[str, int] = {}
    stamps = [c.timestamp for c in changes]
    known = [stamp for stamp in stamps if stamp is not None]
    for change in changes:
        seq = last[change.key] = last.get(change.key, 0) + 1
        seqs.append(seq)
        topics.setdefault(change.topic, len(topics) + 1)
    return {
        "count": len(changes),
        "keys": t.key.dump([c.key for c in changes]),
        "seqs": _numbers(seqs),
        "previous": t.value.dump(
            [placeholder if c.previous is None else c.previous for c in changes]
        ),
        "has_previous": _flags([c.previous is not None for c in changes]),
        "values": t.value.dump([placeholder if c.value is None else c.value for c in changes]),
        "has_value": _flags([c.value is not None for c in changes]),
        "topics": ",".join(topics),
        "topic_ix": _numbers([topics[c.topic] for c in changes]),
        "partitions": _numbers([c.partition for c in changes]),
        "offsets": _numbers([c.offset for c in changes]),
        "timestamps": _numbers(known) if len(known) == len(stamps) else array_text(stamps),
    }


def _numbers(items: list[int]) -> str:
    """:func:`array_text` of numbers without a NULL, in one ``join`` (a change's numbers
    are a good part of a history's cost in Python)."""
    return "{" + ",".join(map(str, items)) + "}"


def _flags(items: list[bool]) -> str:
    """:func:`array_text` of booleans."""
    return "{" + ",".join(["t" if item else "f" for item in items]) + "}"
