"""The history of a key: ``GET /state/<flow>/<key>/history?limit=&before=``.

Newest first, as ``{"flow", "key", "items": [...], "next": <cursor> | null}``; each item
(:func:`history_item`, which the stream of changes and ``flows state history`` share) is::

    {"id": 1234, "key": "the", "previous": 41, "value": 42, "topic": "words",
     "partition": 0, "offset": 7781, "timestamp": 1700000000123,
     "committed_at": "2026-01-02T03:04:05.678901+00:00"}

``previous`` and ``value`` are states decoded with the flow's state format (``null``:
absent; a ``value`` of ``null`` is a deletion); ``topic``, ``partition``, ``offset`` and
``timestamp`` (ms) name the input record; ``id`` is the change's position in the flow's
history (the stream of changes' event id). ``limit`` defaults to 100, at most 1000;
``next`` is passed as ``before`` for the older page. A flow without ``history=True``
answers 400.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from flows.errors import TableMissingError
from flows.history import HistoryEntry
from flows.steps import StatefulStep
from runtimes.http.responses import Response, error_response, json_response
from runtimes.http.state_query import decoded, key_bytes, page_limit

__all__ = ["HistoryStore", "history_item", "history_page", "no_history"]


@runtime_checkable
class HistoryStore(Protocol):
    """What history queries need of a state store (both stores have it)."""

    def history(
        self, table: str, key: bytes, before_seq: int | None, limit: int
    ) -> list[HistoryEntry]: ...

    def history_after(
        self,
        table: str,
        after_id: int,
        limit: int,
        key: bytes | None = None,
        prefix: bytes = b"",
        up_to: int | None = None,
    ) -> list[HistoryEntry]: ...

    def history_last_id(self, table: str) -> int: ...


def no_history(flow: str) -> Response:
    """The 400 of a history query on a flow that keeps none."""
    return error_response(
        400,
        f"flow {flow!r} keeps no history: give it history=True (flows with timers, a ttl "
        "or timestamp=, and windowed flows, keep none)",
    )


def history_item(step: StatefulStep, entry: HistoryEntry) -> dict[str, Any]:
    """One change as JSON (the module docstring)."""
    change = entry.change
    return {
        "id": entry.id,
        "key": decoded(step.sources[0].key_format, change.key),
        "previous": _state(step, change.key, change.previous),
        "value": _state(step, change.key, change.value),
        "topic": change.topic,
        "partition": change.partition,
        "offset": change.offset,
        "timestamp": change.timestamp,
        "committed_at": entry.committed_at.isoformat(),
    }


def history_page(step: StatefulStep, store: HistoryStore, raw: bytes, query: str) -> Response:
    """A page of the history of the key named by the URL bytes ``raw``, or the 400 that
    says what to fix."""
    table = step.history_table
    if table is None:
        return no_history(step.flow)
    key_format = step.sources[0].key_format
    try:
        key = key_bytes(key_format, raw)
    except (TypeError, ValueError) as error:
        return error_response(
            400,
            f"the key does not fit the key format {key_format.name} of flow {step.flow!r}: {error}",
        )
    params = dict(parse_qsl(query, keep_blank_values=True))
    limit = page_limit(params)
    if isinstance(limit, Response):
        return limit
    before = None
    if "before" in params:
        try:
            before = int(params["before"])
        except ValueError:
            return error_response(400, "before must be the 'next' of a previous page")
    try:
        found = store.history(table, key, before, limit + 1)
    except TableMissingError:  # no worker of the flow has created it yet
        found = []
    items = [history_item(step, e) for e in found[:limit]]
    more = len(found) > limit
    return json_response(
        200,
        {
            "flow": step.flow,
            "key": decoded(key_format, key),
            "items": items,
            "next": str(found[limit - 1].seq) if more else None,
        },
    )


def _state(step: StatefulStep, key: bytes, encoded: bytes | None) -> Any:
    """A state of the history as the flow sees it (:meth:`StatefulStep.decode_state`: one
    that does not decode is a :class:`~flows.errors.FlowsError`, a 500 whose details go
    to the log only); None for an absent one."""
    return None if encoded is None else step.decode_state(key, encoded)
