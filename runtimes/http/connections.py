"""Socket-level defences of the HTTP server: reading a request against deadlines and size
limits, and refusing a connection with an answer instead of a reset.

* :class:`RequestReader` reads a request's bytes against a *deadline* for the head (request
  line and headers) and another for the body. A per-operation timeout is not enough: a
  client that sends one byte every few seconds (slowloris) never trips it, and holds a
  request thread for ever. The head is also bounded in bytes and in header fields (431).
* :class:`Closer` answers the connections that the request pool cannot take with a ready
  ``503`` and ``Retry-After``, and closes connections whose request may not have been read
  in full (an error answer). Closing a socket with unread bytes makes the kernel send a
  reset, and the client may lose the answer with it; so it shuts down writing and reads and
  drops what the client still sends until it closes (a "lingering close"), a bounded time,
  for a bounded number of connections, all in one thread.
"""

from __future__ import annotations

import http.client
import io
import logging
import selectors
import socket
import threading
import time
from collections import deque
from typing import Any

__all__ = ["Closer", "HeadTooLarge", "RequestReader"]

log = logging.getLogger("flows.http")


class HeadTooLarge(http.client.HTTPException):
    """The request line and headers break a limit; the server answers 431 with this text.

    An :class:`http.client.HTTPException`, so ``http.server``'s ``parse_request`` turns it
    into that answer when it is raised while the headers are read."""


class _DeadlineSocket(io.RawIOBase):
    """A socket's bytes, each read bounded by what is left until :attr:`deadline`."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = float("inf")
        #: what a read past the deadline raises
        self.late = "the request did not arrive in time"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(self.late)
        self.sock.settimeout(min(left, 3600.0))
        try:
            return self.sock.recv_into(buffer)
        except TimeoutError:
            raise TimeoutError(self.late) from None


class RequestReader(io.BufferedReader):
    """The buffered ``rfile`` of a request handler (see the module docstring).

    :meth:`start_head` and :meth:`start_body` begin a phase and its deadline; a read past
    the deadline raises :class:`TimeoutError`. During the head, :meth:`readline` (what
    ``http.server`` reads the request line and headers with) raises :class:`HeadTooLarge`
    past ``max_head_bytes`` in all or ``max_headers`` header fields.
    """

    def __init__(self, sock: socket.socket, max_head_bytes: int, max_headers: int) -> None:
        self._source = _DeadlineSocket(sock)
        super().__init__(self._source, 65536)
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self._bytes_left: int | None = None
        self._lines_left = 0

    def start_head(self, seconds: float) -> None:
        self._source.deadline = time.monotonic() + seconds
        self._source.late = f"the request line and headers did not arrive within {seconds:g} s"
        self._bytes_left = self.max_head_bytes
        self._lines_left = self.max_headers + 2  # the request line, the fields, the blank line

    def start_body(self, seconds: float) -> None:
        self._source.deadline = time.monotonic() + seconds
        self._source.late = f"the request body did not arrive within {seconds:g} s"
        self._bytes_left = None

    def readline(self, size: int | None = -1) -> bytes:
        if self._bytes_left is None:
            return super().readline(size)
        if self._lines_left <= 0:
            raise HeadTooLarge(f"more than {self.max_headers} header fields")
        cap = self._bytes_left + 1
        line = super().readline(cap if size is None or size < 0 else min(size, cap))
        self._bytes_left -= len(line)
        self._lines_left -= 1
        if self._bytes_left < 0:
            raise HeadTooLarge(
                f"the request line and headers are larger than {self.max_head_bytes} bytes"
            )
        return line


class Closer:
    """Closes connections gently, in one thread (see the module docstring).

    :meth:`reject` sends ``busy_answer`` (complete HTTP bytes) at once: it fits the empty
    send buffer of a new connection, so it never blocks the accepting thread. It and
    :meth:`close` shut down writing and hand the socket to this object's thread, which drops
    what the client still sends until it closes, at most ``linger`` seconds. Past
    ``capacity`` lingering connections the oldest is closed as it is. The count of
    rejections is logged at most every ``log_every`` seconds, not per connection (an
    overload would flood the log).
    """

    def __init__(
        self,
        busy_answer: bytes,
        linger: float = 2.0,
        capacity: int = 512,
        log_every: float = 10.0,
    ) -> None:
        self.busy_answer = busy_answer
        self.linger = linger
        self.capacity = capacity
        self.log_every = log_every
        self.rejected = 0
        self._logged = 0
        self._logged_at = time.monotonic()
        self._incoming: deque[socket.socket] = deque()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flows-http-closer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reject(self, sock: socket.socket) -> None:
        """Answers ``sock`` with the busy answer and takes it over (the caller must not
        close it). Called by the accepting thread only."""
        self.rejected += 1
        try:
            sock.setblocking(False)
            sock.send(self.busy_answer)
        except OSError:
            sock.close()
            return
        self.close(sock)

    def close(self, sock: socket.socket) -> None:
        """Takes ``sock``, answered, over, and closes it gently."""
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if self._stopped.is_set():
            sock.close()
        else:
            self._incoming.append(sock)  # deque appends and pops are thread-safe

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(self.linger + 1)
        while self._incoming:
            self._incoming.popleft().close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            lingering: dict[socket.socket, float] = {}  # in order of arrival
            while not self._stopped.is_set():
                while self._incoming:
                    sock = self._incoming.popleft()
                    lingering[sock] = time.monotonic() + self.linger
                    selector.register(sock, selectors.EVENT_READ)
                for key, _ in selector.select(timeout=0.1 if lingering else 0.2):
                    sock = key.fileobj  # type: ignore[assignment]
                    try:
                        done = not sock.recv(65536)
                    except OSError:
                        done = True
                    if done:
                        _drop(selector, lingering, sock)
                now = time.monotonic()
                while lingering and (
                    len(lingering) > self.capacity or next(iter(lingering.values())) < now
                ):
                    _drop(selector, lingering, next(iter(lingering)))
                self._report(now)
            for sock in list(lingering):
                _drop(selector, lingering, sock)
        self._report(float("inf"))

    def _report(self, now: float) -> None:
        if self.rejected != self._logged and now - self._logged_at >= self.log_every:
            log.warning(
                "http server busy: %d connections answered 503 in the last %.0f s (every "
                "request thread busy and the queue full; see FLOWS_HTTP_THREADS and "
                "FLOWS_HTTP_QUEUE)",
                self.rejected - self._logged,
                min(now, time.monotonic()) - self._logged_at,
            )
            self._logged, self._logged_at = self.rejected, time.monotonic()


def _drop(
    selector: selectors.BaseSelector, lingering: dict[socket.socket, float], sock: socket.socket
) -> None:
    selector.unregister(sock)
    del lingering[sock]
    sock.close()
