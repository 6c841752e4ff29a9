"""State queries of windowed flows: ``GET /state/<flow>/<key>`` lists the key's open windows.

A windowed flow keeps one row per ``(partition, key, window)``; the answer lists the windows
whose result is still to come (``pending``), in order of partition and start, each with its
current aggregate. Closed sliding windows kept only as copy sources are not shown.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from flows.errors import FlowsError, TableMissingError
from flows.ports import WindowRow
from flows.steps.window import WindowStep
from flows.steps.window_codec import Kept
from runtimes.http.responses import Response, error_response, json_response

__all__ = ["WindowQueryStore", "open_windows"]


@runtime_checkable
class WindowQueryStore(Protocol):
    """What a window query needs of a state store (both stores have it)."""

    def windows(self, table: str, key: bytes) -> list[WindowRow]: ...


def open_windows(step: WindowStep, store: WindowQueryStore, key: bytes, shown: Any) -> Response:
    """The open windows of ``key`` (``shown`` is the key as the answer names it); 404 when
    the key has none."""
    assert step.codec is not None
    try:
        rows = [row for row in store.windows(step.table, key) if row.pending]
    except TableMissingError:  # no worker of the flow has created it yet
        rows = []
    if not rows:
        return error_response(404, f"no open window for this key in flow {step.flow!r}")
    windows = []
    for row in rows:
        try:
            value = step.codec.decode(row.value)
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
