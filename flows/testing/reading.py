"""What :class:`TestDriver <flows.testing.driver.TestDriver>` reads back from its in-memory
store, decoded as a user's test wants it: states, a key's history, windows, timers and
materialised rows, and the steps that keep them.

Apart from the driver, which runs flows (piping records in, turning the workers, faults,
crashes), because reading is a concern of its own: each function knows how one kind of
step keeps what it keeps in :class:`InMemoryStateStore` (a timed step's state in its
window table's state slot, a history newest first) and undoes it with the step's own
codecs, so a test sees what ``GET /state/...`` would show. Nothing here writes or runs a
worker. Each lookup raises ``KeyError`` naming the app and the flow it did not find.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flows.steps import MaterialiseStep, StatefulStep, Step
from flows.steps.timed_state import STATE_SLOT, TimedStatefulStep
from flows.steps.window import WindowStep
from flows.steps.window_codec import Kept
from flows.testing.store import InMemoryStateStore
from flows.timers import Timer

__all__ = [
    "decoded_history",
    "decoded_rows",
    "decoded_states",
    "decoded_timers",
    "decoded_windows",
    "materialised_table",
    "stateful_step",
    "window_step",
]


def stateful_step(app: str, steps: Sequence[Step], flow: str) -> StatefulStep:
    """The step of stateful flow ``flow`` among ``steps`` (of app ``app``)."""
    for step in steps:
        if isinstance(step, StatefulStep) and step.flow == flow:
            return step
    raise KeyError(f"app {app!r} has no stateful flow {flow!r}")


def window_step(app: str, steps: Sequence[Step], flow: str) -> WindowStep[Any]:
    """The step of windowed flow ``flow`` among ``steps`` (of app ``app``)."""
    step = next((s for s in steps if isinstance(s, WindowStep) and s.flow == flow), None)
    if step is None or step.codec is None:
        raise KeyError(f"app {app!r} has no windowed flow {flow!r}")
    return step


def materialised_table(app: str, steps: Sequence[Step], flow: str) -> str:
    """The table that materialise flow ``flow`` among ``steps`` (of app ``app``) writes."""
    step = next((s for s in steps if isinstance(s, MaterialiseStep) and s.flow == flow), None)
    if step is None or step.shape is None:
        raise KeyError(f"app {app!r} has no materialise flow {flow!r}")
    return step.shape.name


def decoded_windows(
    store: InMemoryStateStore, step: WindowStep[Any], key: Any
) -> list[dict[str, Any]]:
    """The stored windows of ``key``, in order of partition and start: ``start``, ``end``,
    ``value`` (the aggregate), ``pending``."""
    rows = store.windows(step.table, step.sources[0].key_format.encode(key))
    found = []
    for row in rows:
        value = step.decode_window(row)
        found.append(
            {
                "start": row.start,
                "end": row.end,
                "value": value.acc if isinstance(value, Kept) else value,
                "pending": row.pending,
            }
        )
    return found


def decoded_states(store: InMemoryStateStore, step: StatefulStep, wall: int) -> dict[Any, Any]:
    """Every stored state of ``step``, decoded, by decoded key; a timed step's states whose
    TTL ran out by stream time or by ``wall`` (ms) are left out."""
    key_format = step.sources[0].key_format
    if isinstance(step, TimedStatefulStep):
        rows = store.window_tables.get(step.table, {}).values()
        topic = step.sources[0].name
        encoded = {
            row.key: row.value
            for row in rows
            if row.start == STATE_SLOT
            and not step.expired(
                row,
                store.partition_time(step.group_id, topic, row.partition).stream_time,
                wall,
            )
        }
    else:
        encoded = store.tables.get(step.table, {})
    return {key_format.decode(k): step.decode_state(k, v) for k, v in encoded.items()}


def decoded_history(
    store: InMemoryStateStore, step: StatefulStep, flow: str, key: Any
) -> list[dict[str, Any]]:
    """The kept changes of ``key`` in ``step`` (of flow ``flow``), oldest first, decoded
    (see :meth:`TestDriver.history <flows.testing.driver.TestDriver.history>`)."""
    if step.history_table is None:
        raise KeyError(f"flow {flow!r} keeps no history: give it history=True")
    encoded = step.sources[0].key_format.encode(key)
    entries = store.history(step.history_table, encoded, None, 1 << 62)

    def state(data: bytes | None) -> Any:
        return None if data is None else step.decode_state(encoded, data)

    return [
        {
            "previous": state(e.change.previous),
            "value": state(e.change.value),
            "topic": e.change.topic,
            "partition": e.change.partition,
            "offset": e.change.offset,
            "timestamp": e.change.timestamp,
            "committed_at": e.committed_at,
        }
        for e in reversed(entries)
    ]


def decoded_timers(store: InMemoryStateStore, step: StatefulStep, key: Any) -> list[Timer]:
    """The timers of ``key`` in ``step`` still to fire, in order of due (none for a step
    without timers)."""
    if not isinstance(step, TimedStatefulStep):
        return []
    rows = store.windows(step.table, step.sources[0].key_format.encode(key))
    working = step.load(0, None, 0, [r for r in rows if r.start != STATE_SLOT])
    return sorted(
        (t for timers in working.timers.values() for t in timers.values()),
        key=lambda t: (t.due, t.name),
    )


def decoded_rows(store: InMemoryStateStore, table: str) -> list[dict[str, Any]]:
    """The rows materialised in ``table``, ordered by primary key."""
    rows = store.row_tables.get(table, {})
    return [rows[k] for k in sorted(rows)]
