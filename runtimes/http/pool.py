"""A fixed pool of threads working off a bounded queue: how the HTTP server bounds its work.

The standard library's ``ThreadingHTTPServer`` starts a thread per connection, without
bound: under a burst, hundreds of threads fight for the GIL with the workers and every
answer slows down. ``concurrent.futures.ThreadPoolExecutor`` bounds its threads but not its
queue, and its threads are not daemons (a request stuck in a slow call would hold the
interpreter's exit). This pool does both: at most ``threads`` items are worked on at once,
at most ``queue`` wait, and :meth:`WorkerPool.offer` says at once when it is full, so the
caller can refuse the item (the server answers 503) instead of queueing without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["WorkerPool"]

log = logging.getLogger("flows.http")

T = TypeVar("T")


class _Stop:
    """Tells one thread to end."""


class WorkerPool(Generic[T]):
    """``threads`` daemon threads calling ``work(item)`` for each item offered.

    ``work`` must not raise (an exception is logged, and the thread goes on). Thread-safe.
    """

    def __init__(self, name: str, threads: int, queue_size: int, work: Callable[[T], None]):
        if threads < 1 or queue_size < 1:
            raise ValueError(f"a pool needs at least 1 thread and 1 queue slot, not {threads}")
        self.name = name
        self.work = work
        self._queue: queue.Queue[T | _Stop] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        self._started = False

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._started = True

    @property
    def waiting(self) -> int:
        """Items offered and not yet taken by a thread."""
        return self._queue.qsize()

    def offer(self, item: T) -> bool:
        """Queues ``item``; ``False`` (and nothing queued) when the queue is full or the
        pool is closed. Never blocks."""
        with self._lock:
            if self._closed:
                return False
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                return False
            return True

    def close(self, timeout: float) -> None:
        """Takes no more items; the threads finish the items they hold and those queued,
        and end. Waits at most ``timeout`` seconds for them (they are daemons: one still
        working then does not hold the process)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            try:  # behind the queued items: they are worked off first
                self._queue.put(_Stop(), timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(thread.is_alive() for thread in self._threads)
        if busy:
            log.warning(
                "%s: %d threads still busy after %.0f s; not waiting", self.name, busy, timeout
            )

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                return
            try:
                self.work(item)
            except Exception:
                log.exception("%s: unexpected error", self.name)
