"""Committed changes, live: one ``LISTEN`` connection per process, shared by every
subscription.

Each commit that appends history notifies ``flows_history`` with its table and id range
(``history_commit.py``); PostgreSQL delivers a notification only when its transaction commits, in
commit order, to every listening session, whichever process committed. :class:`ChangeFeed`
holds one such session (psycopg, autocommit) in a thread of its own. On a notification for
a table that has subscriptions, it reads the range's rows once (through the store) and
offers them to each :class:`Subscription` of the table, which keeps those its filter wants.

Bounded, never blocking the feed: a subscription holds at most ``limit`` changes not yet
taken (or one commit's, however many, when it had taken everything); one that would hold
more is *ended* ("a slow subscriber"), its queue dropped. A
subscription also ends when the feed loses its connection (notifications may have been
missed meanwhile) or stops. An ended subscription has nothing more to give: its
subscriber reports why and leaves, and resumes from the history (ids grow in commit
order, so "after the last id I had" misses nothing).

The connection is opened on the first subscription, not before: a server whose clients
never subscribe never holds one.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import psycopg

from flows.errors import DatabaseUnavailableError
from flows.history import HistoryEntry
from runtimes.postgres.engine import psycopg_url
from runtimes.postgres.history import CHANNEL

__all__ = ["ChangeFeed", "HistoryReader", "Subscription"]

log = logging.getLogger("flows.postgres")

#: seconds a first subscription waits for the connection to listen
CONNECT_TIMEOUT = 10.0
#: seconds between two attempts to listen again after the connection was lost
RECONNECT_SECONDS = 1.0


class HistoryReader(Protocol):
    """What the feed reads of a store (:class:`runtimes.postgres.PostgresStateStore`)."""

    def history_after(
        self,
        table: str,
        after_id: int,
        limit: int,
        key: bytes | None = None,
        prefix: bytes = b"",
        up_to: int | None = None,
    ) -> list[HistoryEntry]: ...


class _Feed(Protocol):
    def unsubscribe(self, subscription: Subscription) -> None: ...


class Subscription:
    """The changes of one history table for one subscriber, filtered by ``key`` (exactly)
    or else ``prefix``; thread-safe. The feed :meth:`offer` s, the subscriber :meth:`take`
    s; :attr:`ended` says why no more will come (None while it is live)."""

    def __init__(
        self,
        feed: _Feed,
        table: str,
        key: bytes | None,
        prefix: bytes,
        limit: int,
        live: bool = True,
    ) -> None:
        self.table = table
        self.key = key
        self.prefix = prefix
        self.limit = limit
        self.ended: str | None = None
        #: False while the subscriber catches up from the history table: offers are then
        #: ignored (the subscriber reads them from the table after :meth:`go_live`)
        self.live = live
        self._feed = feed
        self._queue: collections.deque[HistoryEntry] = collections.deque()
        self._ready = threading.Condition()

    def wants(self, entry: HistoryEntry) -> bool:
        key = entry.change.key
        return key == self.key if self.key is not None else key.startswith(self.prefix)

    def offer(self, entries: Sequence[HistoryEntry]) -> None:
        """Queues the ``entries`` this subscription wants; ends it instead when changes are
        still waiting and these would make more than ``limit``. (A subscriber that took
        everything gets a commit whatever its size: a batch is not a sign of slowness.)"""
        if not self.live:
            return
        wanted = [e for e in entries if self.wants(e)]
        if not wanted:
            return
        with self._ready:
            if self.ended is not None:
                return
            if self._queue and len(self._queue) + len(wanted) > self.limit:
                log.info(
                    "dropped a slow subscriber of %s: more than %d changes waiting",
                    self.table,
                    self.limit,
                )
                self._end(
                    f"the subscriber fell more than {self.limit} changes behind "
                    "(FLOWS_HTTP_CHANGES_BUFFER); resume with Last-Event-ID"
                )
                return
            self._queue.extend(wanted)
            self._ready.notify_all()

    def go_live(self) -> None:
        """Queues what is offered from now on. A subscriber that caught up from the history
        before calls this, then reads the history once more: what was offered and ignored
        meanwhile was committed before, so that read has it."""
        with self._ready:
            self.live = True

    def end(self, reason: str) -> None:
        """Ends the subscription (idempotent: the first reason stays); wakes :meth:`take`."""
        with self._ready:
            if self.ended is None:
                self._end(reason)

    def _end(self, reason: str) -> None:
        self.ended = reason
        self._queue.clear()
        self._ready.notify_all()

    def take(self, timeout: float) -> list[HistoryEntry]:
        """Every change waiting, in id order; waits up to ``timeout`` seconds for one.
        Empty on timeout, and once :attr:`ended`."""
        with self._ready:
            if not self._queue and self.ended is None:
                self._ready.wait(timeout)
            taken = list(self._queue)
            self._queue.clear()
            return taken

    def close(self) -> None:
        """Leaves the feed (idempotent)."""
        self.end("closed")
        self._feed.unsubscribe(self)


class ChangeFeed:
    """One ``LISTEN flows_history`` session for the whole process (see the module
    docstring). ``reader`` reads the rows of a notification's range; ``schema`` is the
    reader's (notifications name schema-qualified tables)."""

    def __init__(self, url: str, reader: HistoryReader, schema: str | None = None) -> None:
        self._url = psycopg_url(url).replace("postgresql+psycopg://", "postgresql://", 1)
        self._reader = reader
        self._schema = schema
        self._lock = threading.Lock()
        self._subscriptions: dict[str, list[Subscription]] = {}
        self._listening = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: str | None = None

    def _qualified(self, table: str) -> str:
        return table if self._schema is None else f"{self._schema}.{table}"

    def subscribe(
        self,
        table: str,
        limit: int,
        key: bytes | None = None,
        prefix: bytes = b"",
        live: bool = True,
    ) -> Subscription:
        """A subscription to the changes of ``table`` committed from now on (queued from
        :meth:`Subscription.go_live` when not ``live``): the feed is listening when this
        returns. Raises :class:`DatabaseUnavailableError` when it cannot listen within
        :data:`CONNECT_TIMEOUT`."""
        subscription = Subscription(self, table, key, prefix, limit, live)
        with self._lock:
            if self._stopping.is_set():
                raise DatabaseUnavailableError("the change feed is stopping")
            self._subscriptions.setdefault(self._qualified(table), []).append(subscription)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="flows-changes", daemon=True)
                self._thread.start()
        if not self._listening.wait(CONNECT_TIMEOUT) or subscription.ended is not None:
            subscription.close()
            raise DatabaseUnavailableError(
                f"cannot listen for changes in PostgreSQL: {self._failure or 'no answer'}"
            )
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            found = self._subscriptions.get(self._qualified(subscription.table), [])
            if subscription in found:
                found.remove(subscription)

    def close(self) -> None:
        """Ends every subscription and stops listening (waits a little for the thread)."""
        self._stopping.set()
        self._end_all("the server is stopping")
        thread = self._thread
        if thread is not None:
            thread.join(5.0)

    def _end_all(self, reason: str, qualified: str | None = None) -> None:
        with self._lock:
            ended = [
                s
                for name, subs in self._subscriptions.items()
                if qualified is None or name == qualified
                for s in subs
            ]
        for subscription in ended:
            subscription.end(reason)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, application_name="flows-changes"
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._failure = None
                    self._listening.set()
                    log.info("listening for committed changes")
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            self._deliver(notice.payload)
            except psycopg.Error as error:
                self._failure = f"{type(error).__name__}: {str(error).strip()[:200]}"
                if self._listening.is_set():
                    log.warning("the change feed lost PostgreSQL: %s", self._failure)
            except Exception:  # a bug: logged, and the feed starts over rather than die
                self._failure = "an internal error (see the log)"
                log.exception("the change feed failed")
            self._listening.clear()
            # Changes committed while nobody listened were not notified: every subscriber
            # resumes from the history instead.
            self._end_all("the server lost its connection to PostgreSQL; resume with Last-Event-ID")
            self._stopping.wait(RECONNECT_SECONDS)

    def _deliver(self, payload: str) -> None:
        """Reads the rows a notification names, once, and offers them to the subscriptions
        of its table."""
        try:
            qualified, first_text, last_text = payload.rsplit(" ", 2)
            first, last = int(first_text), int(last_text)
        except ValueError:
            log.warning("ignored a notification that is not flows': %r", payload[:200])
            return
        with self._lock:
            subscriptions = list(self._subscriptions.get(qualified, ()))
        if not subscriptions:
            return
        table = subscriptions[0].table
        try:
            entries = self._reader.history_after(table, first - 1, last - first + 1, up_to=last)
        except Exception as error:  # PostgreSQL unavailable: these subscribers would miss it
            log.warning("the change feed could not read %s: %s", table, error)
            self._end_all(f"the server could not read the changes: {error}", qualified)
            return
        for subscription in subscriptions:
            subscription.offer(entries)
