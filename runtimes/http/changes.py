"""Committed changes as Server-Sent Events: ``GET /state/<flow>/changes[?key=|?prefix=]``.

A flow with ``history=True`` only (400 otherwise): the stream is its history, followed
live. Each event is one change::

    id: 1234
    data: {"id": 1234, "key": "the", "previous": 41, "value": 42, "topic": "words",
           "partition": 0, "offset": 7781, "timestamp": ..., "committed_at": "..."}

(``data`` on one line; the fields are :func:`~runtimes.http.history.history_item`'s). The
``id`` is the change's position in the history, and ids grow in commit order, so a client
that reconnects with ``Last-Event-ID: <the last id it had>`` (browsers' ``EventSource``
does) gets every change committed after it, replayed from the history table, then live,
without a gap or a repeat. Without ``Last-Event-ID`` the stream starts with the changes
committed after the request, announced by a first ``id: <position>`` line (no event), so
that even a client that receives nothing can resume from there.

``key`` follows one key (its URL form, as ``/state/<flow>/<key>``), ``prefix`` the keys
whose encoded bytes start with it (as ``/state/<flow>?prefix=``).

The order of a stream: subscribe to the process's change feed (``LISTEN``, so nothing
committed from then on is missed; 503 when PostgreSQL does not answer); with a position,
replay the history after it in pages, then let the subscription queue live changes and
replay once more (what committed during the first replay: the feed's offers were ignored
until then, so that a long replay is not mistaken for a slow subscriber); then send the
live changes past the last id sent (the last replay and the queue overlap; ids tell them
apart).

While quiet, a keep-alive comment (``: ``) every ``keepalive`` seconds lets proxies and
clients know the stream is alive and the server notice a client that left. A subscriber
that falls ``buffer`` changes behind (it reads more slowly than changes commit) is dropped
with a final event, and so is every subscriber when the server loses PostgreSQL::

    event: dropped
    data: {"reason": "...", "last_id": 1234}

after which it resumes with ``Last-Event-ID``. Nothing is buffered without bound.

What a stream can miss: a change that retention removed before the stream read it (with
``history_keep``, a key changing faster than the feed reads its commits; the next change's
``previous`` still shows the value it left).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol
from urllib.parse import parse_qsl

from flows.errors import FlowsError, TableMissingError
from flows.history import HistoryEntry
from flows.steps import StatefulStep
from runtimes.http.history import HistoryStore, history_item, no_history
from runtimes.http.responses import Response, error_response, stream_response, to_json
from runtimes.http.state_query import key_bytes

__all__ = ["ChangeSource", "Subscribed", "change_stream"]

#: changes read from the history table per query while replaying
REPLAY_PAGE = 500
#: seconds between two looks at a quiet stream (the server's check for a departed client)
_TICK = 1.0


class Subscribed(Protocol):
    """A subscription (:class:`runtimes.postgres.changes.Subscription`)."""

    @property
    def ended(self) -> str | None: ...

    def go_live(self) -> None: ...

    def take(self, timeout: float) -> list[HistoryEntry]: ...

    def end(self, reason: str) -> None: ...

    def close(self) -> None: ...


class ChangeSource(Protocol):
    """The process's change feed (:class:`runtimes.postgres.changes.ChangeFeed`)."""

    def subscribe(
        self,
        table: str,
        limit: int,
        key: bytes | None = None,
        prefix: bytes = b"",
        live: bool = True,
    ) -> Subscribed: ...


def change_stream(
    step: StatefulStep,
    store: HistoryStore,
    feed: ChangeSource,
    query: str,
    last_event_id: str | None,
    buffer: int,
    keepalive: float,
) -> Response:
    """The stream of ``step``'s changes (a :class:`StreamResponse`), or the 400 that says
    what to fix. Subscribes before it returns (the caller answers 503 when PostgreSQL does
    not answer: :class:`~flows.errors.DatabaseUnavailableError`)."""
    table = step.history_table
    if table is None:
        return no_history(step.flow)
    params = dict(parse_qsl(query, keep_blank_values=True, encoding="latin-1"))
    if "key" in params and "prefix" in params:
        return error_response(400, "give key= or prefix=, not both")
    key = None
    if "key" in params:
        key_format = step.sources[0].key_format
        try:
            key = key_bytes(key_format, params["key"].encode("latin-1"))
        except (TypeError, ValueError) as error:
            return error_response(
                400, f"key does not fit the key format {key_format.name}: {error}"
            )
    prefix = params.get("prefix", "").encode("latin-1")
    after = None
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isdigit():
            return error_response(
                400, f"Last-Event-ID must be the id of an event of this stream, not {text!r}"
            )
        after = int(text)
    subscription = feed.subscribe(table, buffer, key, prefix, live=after is None)
    stream = _ChangeStream(step, store, table, subscription, key, prefix, after, keepalive)
    return stream_response(200, stream.chunks(), "text/event-stream", cancel=stream.cancel)


class _ChangeStream:
    """One subscriber's stream (the module docstring's order)."""

    def __init__(
        self,
        step: StatefulStep,
        store: HistoryStore,
        table: str,
        subscription: Subscribed,
        key: bytes | None,
        prefix: bytes,
        after: int | None,
        keepalive: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.step = step
        self.store = store
        self.table = table
        self.subscription = subscription
        self.key = key
        self.prefix = prefix
        self.after = after
        self.keepalive = keepalive
        self.clock = clock
        self.last = 0
        self._stopping = threading.Event()

    def cancel(self) -> None:
        """Wakes the stream when the server stops (from another thread; never blocks)."""
        self._stopping.set()
        self.subscription.end("the server is stopping")

    def chunks(self) -> Iterator[bytes]:
        try:
            yield from self._run()
        except FlowsError as error:  # PostgreSQL failed mid-replay
            yield self._dropped(f"the server could not read the history: {error}")
        finally:
            self.subscription.close()

    def _run(self) -> Iterator[bytes]:
        if self.after is None:
            self.last = self._position()
            yield f"id: {self.last}\n\n".encode()
        else:
            self.last = self.after
            yield from self._replay()
            self.subscription.go_live()
            yield from self._replay()  # what was committed while the first replay ran
        subscription, quiet_since = self.subscription, self.clock()
        while not self._stopping.is_set():
            fresh = [e for e in subscription.take(_TICK) if e.id > self.last]
            if fresh:
                yield self._events(fresh)
                quiet_since = self.clock()
            elif subscription.ended is not None:
                yield self._dropped(subscription.ended)
                return
            elif self.clock() - quiet_since >= self.keepalive:
                yield b": \n\n"
                quiet_since = self.clock()
            else:
                yield b""  # lets the server notice a client that left

    def _position(self) -> int:
        try:
            return self.store.history_last_id(self.table)
        except TableMissingError:  # no worker created it yet: every change is to come
            return 0

    def _replay(self) -> Iterator[bytes]:
        """The history after :attr:`last`, page by page, until a page comes back short."""
        while not self._stopping.is_set():
            try:
                page = self.store.history_after(
                    self.table, self.last, REPLAY_PAGE, self.key, self.prefix
                )
            except TableMissingError:
                return
            if page:
                yield self._events(page)
            if len(page) < REPLAY_PAGE:
                return

    def _events(self, entries: list[HistoryEntry]) -> bytes:
        """``entries`` as events (one write); :attr:`last` moves to the last one."""
        parts = []
        for entry in entries:
            data = json.dumps(
                history_item(self.step, entry),
                default=to_json,
                ensure_ascii=False,
                separators=(",", ":"),
            )
            parts.append(f"id: {entry.id}\ndata: {data}\n\n")
        self.last = entries[-1].id
        return "".join(parts).encode("utf-8")

    def _dropped(self, reason: str) -> bytes:
        data = json.dumps({"reason": reason, "last_id": self.last}, ensure_ascii=False)
        return f"event: dropped\ndata: {data}\n\n".encode()
