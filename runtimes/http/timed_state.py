"""State queries of flows whose rows fall due in time (``GET /state/<flow>/<key>``).

* A windowed flow keeps one row per ``(partition, key, window)``; the answer lists the
  windows whose result is still to come (``pending``), in order of partition and start, each
  with its current aggregate. Closed sliding windows kept only as copy sources are not shown.
* A stateful flow with timers or a TTL answers the key's state and its pending timers; a
  state whose TTL has run out (by the partition's committed stream time, or the wall clock)
  is not shown, even before its row is deleted.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

from flows.errors import FlowsError, StateDecryptionError, TableMissingError
from flows.ports import PartitionTime, WindowRow
from flows.steps.timed_state import STATE_SLOT, TimedStatefulStep
from flows.steps.window import WindowStep
from flows.steps.window_codec import Kept
from runtimes.http.responses import Response, error_response, json_response

__all__ = ["WindowQueryStore", "open_windows", "timed_state"]


@runtime_checkable
class WindowQueryStore(Protocol):
    """What these queries need of a state store (both stores have it)."""

    def windows(self, table: str, key: bytes) -> list[WindowRow]: ...

    def partition_time(self, group: str, topic: str, partition: int) -> PartitionTime: ...


def open_windows(
    step: WindowStep[Any], store: WindowQueryStore, key: bytes, shown: Any
) -> Response:
    """The open windows of ``key`` (``shown`` is the key as the answer names it); 404 when
    the key has none."""
    try:
        rows = [row for row in store.windows(step.table, key) if row.pending]
    except TableMissingError:  # no worker of the flow has created it yet
        rows = []
    if not rows:
        return error_response(404, f"no open window for this key in flow {step.flow!r}")
    windows = []
    for row in rows:
        try:
            value = step.decode_window(row)
        except StateDecryptionError:
            raise
        except Exception as error:
            raise FlowsError(
                f"a stored window of flow {step.flow!r} does not decode with its state "
                f"format: {error}"
            ) from error
        windows.append(
            {
                "start": row.start,
                "end": row.end,
                "value": value.acc if isinstance(value, Kept) else value,
                "partition": row.partition,
            }
        )
    return json_response(200, {"flow": step.flow, "key": shown, "windows": windows})


def timed_state(
    step: TimedStatefulStep, store: WindowQueryStore, key: bytes, shown: Any
) -> Response:
    """The state and pending timers of ``key`` in a stateful flow with timers or a TTL;
    404 when it has neither (an expired state counts as none)."""
    try:
        rows = store.windows(step.table, key)
    except TableMissingError:
        rows = []
    state_rows = [row for row in rows if row.start == STATE_SLOT and not _expired(step, store, row)]
    timers = step.load(0, None, 0, [row for row in rows if row.start != STATE_SLOT]).timers
    pending = sorted(
        (t for found in timers.values() for t in found.values()), key=lambda t: (t.due, t.name)
    )
    if not state_rows and not pending:
        return error_response(404, f"no state for this key in flow {step.flow!r}")
    state = step.decode_state(key, state_rows[0].value) if state_rows else None
    return json_response(
        200,
        {
            "flow": step.flow,
            "key": shown,
            "state": state,
            "timers": [
                {"name": t.name, "due": t.due, "clock": t.clock, "data": t.data} for t in pending
            ],
        },
    )


def _expired(step: TimedStatefulStep, store: WindowQueryStore, row: WindowRow) -> bool:
    """Whether a state row's TTL has run out though its row is not deleted yet."""
    topic = step.sources[0].name
    stream_time = store.partition_time(step.group_id, topic, row.partition).stream_time
    return step.expired(row, stream_time, int(time.time() * 1000))
