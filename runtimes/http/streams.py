"""Long-lived answers (:class:`~runtimes.http.responses.StreamResponse`), each written by a
thread of its own, so that a subscriber never holds one of the request threads.

The request thread reserves a place (:meth:`Streams.start`; ``False`` past the limit, and
the server answers 503), hands the connection over and goes back to the pool. The stream's
thread writes the head and each chunk as it comes, and ends the stream as the response's
contract says (client gone, write timeout, body done or failed, server stopping).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time

from runtimes.http.responses import StreamResponse

__all__ = ["Streams"]

log = logging.getLogger("flows.http")


class Streams:
    """At most ``limit`` streams at once; :meth:`stop` ends them all. Thread-safe."""

    def __init__(self, limit: int, write_timeout: float) -> None:
        self.limit = limit
        self.write_timeout = write_timeout
        self._lock = threading.Lock()
        self._open: dict[threading.Thread, tuple[socket.socket, StreamResponse]] = {}
        self._stopping = threading.Event()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def start(self, sock: socket.socket, head: bytes, response: StreamResponse) -> bool:
        """Writes ``head`` then ``response``'s chunks to ``sock`` in a new thread, which
        takes ``sock`` over; ``False`` (nothing started, nothing taken) when ``limit``
        streams are open or the server stops."""
        with self._lock:
            if len(self._open) >= self.limit or self._stopping.is_set():
                return False
            thread = threading.Thread(
                target=self._run, args=(sock, head, response), name="flows-http-stream", daemon=True
            )
            self._open[thread] = (sock, response)
        thread.start()
        return True

    def stop(self, timeout: float) -> None:
        """Ends every stream: wakes its body (``cancel``), closes its connection, and waits
        at most ``timeout`` seconds in all for their threads (daemons: a body that never
        yields again does not hold the process)."""
        self._stopping.set()
        with self._lock:
            running = dict(self._open)
        for sock, response in running.values():
            if response.cancel is not None:
                try:
                    response.cancel()
                except Exception:
                    log.exception("http stream: cancel failed")
            with contextlib.suppress(OSError):  # wakes a blocked write; the client sees the end
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, sock: socket.socket, head: bytes, response: StreamResponse) -> None:
        chunks = response.chunks
        try:
            sock.settimeout(self.write_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(head)
            for chunk in chunks:
                if self._stopping.is_set():
                    break
                if chunk:
                    sock.sendall(chunk)
                elif _closed_by_client(sock):
                    break
        except OSError as error:  # the client went away, or did not read in time
            log.info("http stream ended: %s: %s", type(error).__name__, error)
        except Exception:
            log.exception("http stream: the body failed")
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("http stream: closing the body failed")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            sock.close()
            with self._lock:
                self._open.pop(threading.current_thread(), None)


def _closed_by_client(sock: socket.socket) -> bool:
    """Whether the client closed its side (a readable socket with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and not sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return True
