"""The HTTP server serving :class:`~runtimes.http.api.HttpApi`: the standard library's
request parsing (``http.server.BaseHTTPRequestHandler``) behind an accept loop that holds up
under bursts.

* **Bounded work.** One thread accepts (``listen()`` backlog ``http_backlog``, so a burst
  waits in the kernel instead of being reset) and hands each connection to a fixed pool of
  ``http_threads`` request threads with ``http_queue`` places to wait
  (:mod:`runtimes.http.pool`). Past both, the connection is answered ``503`` with
  ``Retry-After`` at once, and closed gently (:class:`~runtimes.http.connections.Closer`),
  as is every connection answered with an error (its request may be unread).
* **Slow clients.** The request line and headers must arrive within
  ``http_header_timeout`` seconds and the body within ``http_body_timeout``, in all, not
  per read (408 past them); writes block at most ``http_write_timeout``.
* **Sizes.** The head is bounded in bytes (``http_max_header_bytes``, 431; a longer request
  line alone: 414) and in fields (``http_max_headers``, 431); an ingest body by its route's
  ``max_body``, and a body on any other route by :data:`NO_BODY_LIMIT` (413).
* **Streams.** A :class:`~runtimes.http.responses.StreamResponse` is written by a thread of
  its own (:mod:`runtimes.http.streams`), at most ``http_streams`` at once (503 past
  them); the server's stop ends them.

Why not a library server: waitress queues accepted connections without bound and runs a
streamed body in one of its few request threads; uvicorn (ASGI) has no deadline on a slow
client's headers and would move the API, which blocks on PostgreSQL and the broker, onto an
event loop. The handler only moves bytes: it asks the API for an answer and writes it with
``Connection: close`` (one request per connection). Whatever goes wrong in one request
becomes an answer and one log line.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import unquote

from flows.errors import ConfigError, TransientError
from runtimes.config import Settings
from runtimes.http.api import HttpApi
from runtimes.http.auth import Guard, JwtVerifier
from runtimes.http.bodies import BodyError, read_body
from runtimes.http.connections import Closer, HeadTooLarge, RequestReader
from runtimes.http.pool import WorkerPool
from runtimes.http.responses import Response, StreamResponse, error_response
from runtimes.http.streams import Streams

log = logging.getLogger("flows.http")

#: a body on a route that takes none (GET, the health endpoints) is read and dropped up to
#: this many bytes, so the connection closes cleanly; 413 past it
NO_BODY_LIMIT = 8192
#: seconds :meth:`HttpRuntime.stop` waits for the requests in hand and queued
STOP_TIMEOUT = 15.0
#: seconds a client is told to wait (``Retry-After``) when the server is busy
RETRY_AFTER = 1


def _busy_answer() -> bytes:
    """The complete 503 that :class:`Closer` sends to connections the pool cannot take."""
    body = json.dumps({"error": f"the server is busy: retry in {RETRY_AFTER} s"}).encode()
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nServer: flows\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Server(HTTPServer):
    """Accepts connections in one thread and hands them to a bounded pool of request
    threads; a connection the pool cannot take is answered 503 at once by the closer.
    Long-lived answers run in :class:`Streams`, outside the pool."""

    api: HttpApi

    def __init__(self, address: tuple[str, int], settings: Settings, api: HttpApi) -> None:
        self.request_queue_size = settings.http_backlog  # what listen() is given
        super().__init__(address, _Handler)
        self.settings = settings
        self.api = api
        self.pool: WorkerPool[tuple[socket.socket, Any]] = WorkerPool(
            "flows-http", settings.http_threads, settings.http_queue, self._serve
        )
        self.closer = Closer(_busy_answer())
        self.streams = Streams(settings.http_streams, settings.http_write_timeout)
        static = api.authorised if api.token is not None else None
        self.guard = Guard(static, JwtVerifier.from_settings(settings))

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.pool.offer((request, client_address)):
            self.closer.reject(request)

    def _serve(self, connection: tuple[socket.socket, Any]) -> None:
        request, client_address = connection
        handler: _Handler | None = None
        try:
            handler = _Handler(request, client_address, self)
        except Exception:
            self.handle_error(request, client_address)
        if handler is not None and handler.detached:
            return  # a stream's thread closes its own connection
        if handler is None or handler.failed:  # maybe with bytes unread: gently
            self.closer.close(request)
        else:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr: one log line instead
        error = sys.exc_info()[1]
        log.warning(
            "http connection from %s failed: %s: %s", client_address[0], type(error).__name__, error
        )


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    rfile: RequestReader
    _headers_buffer: list[bytes]  # http.server's, where send_header collects the head
    server_version = "flows"
    sys_version = ""
    #: deadlines per phase instead (see handle_one_request)
    timeout = None
    #: set when a stream's thread took the connection over
    detached = False
    #: set when the answer is an error (4xx, 5xx): the request may be partly unread
    failed = False

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader: ours reads against deadlines and limits
        settings = self.server.settings
        self.rfile = RequestReader(
            self.connection, settings.http_max_header_bytes, settings.http_max_headers
        )

    def handle_one_request(self) -> None:
        """One request per connection (every answer says ``Connection: close``): the head
        within ``http_header_timeout``, then the body within ``http_body_timeout``."""
        settings = self.server.settings
        self.close_connection = True
        self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
        try:
            self.rfile.start_head(settings.http_header_timeout)
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline or not self.parse_request():
                return  # nothing was sent, or parse_request answered (400, 431, 505)
            self.rfile.start_body(settings.http_body_timeout)
            if self.command not in ("GET", "POST"):
                self.send_error(501, f"unsupported method {self.command!r}")
                return
            self._dispatch(self.command)
        except HeadTooLarge as error:  # the request line alone
            self.send_error(414, str(error))
        except TimeoutError as error:  # a slow client
            self.send_error(408, str(error))
        except ConnectionError as error:
            log.info("http connection from %s closed early: %s", self.client_address[0], error)

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        try:
            response = self._respond(method, path, query)
        except BodyError as error:
            response = error.response
        except TimeoutError as error:  # the body came too slowly
            response = error_response(408, str(error))
        except ConnectionError:
            raise
        except TransientError as error:  # PostgreSQL or the broker is unavailable
            response = error_response(503, str(error))
        except Exception as error:
            response = _internal_error(method, path, error)
        if isinstance(response, StreamResponse):
            if self._stream(response):
                return
            response = error_response(
                503,
                f"{self.server.streams.limit} streams are open, the most this server serves "
                "(FLOWS_HTTP_STREAMS)",
                (("Retry-After", str(RETRY_AFTER)),),
            )
        # one line per refused or failed request; readiness logs its own changes, and an
        # internal error was logged with its details above
        if response.status >= 400 and path != "/readyz" and response.status != 500:
            level = logging.WARNING if response.status >= 500 else logging.INFO
            reason = _reason_of(response)
            log.log(level, "http %s %s -> %d: %s", method, path, response.status, reason)
        self._send(response)

    def _respond(self, method: str, path: str, query: str) -> Response:
        api = self.server.api
        route = api.routes.get(path)
        if route is None or method != "POST":
            read_body(self.rfile, self.headers, NO_BODY_LIMIT, required=False)  # read and dropped
        if path in ("/healthz", "/readyz", "/metrics"):
            if method != "GET":
                return error_response(405, f"{path} answers GET", (("Allow", "GET"),))
            if path == "/healthz":
                return api.healthz()
            return api.readyz() if path == "/readyz" else api.metrics_text()
        if path.startswith("/state/"):
            if method != "GET":
                return error_response(405, "state queries answer GET", (("Allow", "GET"),))
        elif route is None:
            return error_response(404, f"nothing at {path}")
        elif method != "POST":
            return error_response(405, f"{path} answers POST", (("Allow", "POST"),))
        flow = route.flow if route else unquote(path[len("/state/") :].partition("/")[0])
        denied = self.server.guard.check(self.headers.get("Authorization"), flow)
        if denied is not None:
            return denied
        headers = {name.lower(): value for name, value in self.headers.items()}
        if route is None:
            return api.state(path, query, headers)
        body = read_body(self.rfile, self.headers, route.max_body)
        return api.ingest(route, body, headers)

    def _stream(self, response: StreamResponse) -> bool:
        """Hands the connection to a stream's thread; ``False`` when none is free (then
        ``response.chunks`` is closed unstarted and the caller answers)."""
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")  # a proxy (nginx) must not buffer it
        for name, value in response.headers:
            self.send_header(name, value)
        head = b"".join([*self._headers_buffer, b"\r\n"])
        self._headers_buffer = []
        if self.server.streams.start(self.connection, head, response):
            self.detached = True
            return True
        close = getattr(response.chunks, "close", None)
        if close is not None:
            close()
        return False

    def _send(self, response: Response) -> None:
        self.failed = response.status >= 400
        try:
            self.connection.settimeout(self.server.settings.http_write_timeout)
            self.send_response(response.status)
            if response.status != 304:  # a 304 has no content, so no length of its own
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Connection", "close")
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)
        except OSError as error:  # the client went away
            log.info("http answer not delivered: %s", error)
        self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Called by http.server itself for malformed requests and unknown methods: JSON too.
        text = explain or message or self.responses.get(code, ("error",))[0]
        log.info("http %s -> %d: %s", (self.requestline or "?")[:200], code, text)
        self._send(error_response(code, text))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)


def _internal_error(method: str, path: str, error: Exception) -> Response:
    """A 500 that tells the client nothing internal: the error's text may hold paths, SQL
    or data. The details and traceback are logged under a request id that the answer
    carries (body and ``X-Request-Id``), so an operator can find them."""
    request_id = uuid.uuid4().hex[:16]
    log.error(
        "http %s %s -> 500 (request id %s): %s: %s",
        method,
        path,
        request_id,
        type(error).__name__,
        error,
        exc_info=error,
    )
    return error_response(
        500, f"internal error (request id {request_id})", (("X-Request-Id", request_id),)
    )


def _reason_of(response: Response) -> str:
    try:
        return str(json.loads(response.body).get("error", ""))[:300]
    except (ValueError, AttributeError):
        return ""


class HttpRuntime:
    """Serves :class:`HttpApi` on ``settings.http_host``:``settings.http_port``.

    The container builds none when the port is 0; given port 0 directly, it listens on a
    free port (see :attr:`address`), which tests use.
    """

    name = "http"

    def __init__(self, settings: Settings, api: HttpApi, owned: Sequence[Any] = ()) -> None:
        """``owned``: objects with a ``close()`` that this runtime releases when it stops."""
        self.settings = settings
        self.api = api
        self.owned = tuple(owned)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (after :meth:`start`)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        host, port = self.settings.http_host, self.settings.http_port
        try:
            server = (_Server6 if ":" in host else _Server)((host, port), self.settings, self.api)
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({error}); choose another "
                "--http-port / FLOWS_HTTP_PORT, or 0 for no HTTP server"
            ) from error
        try:
            sinks = {r.sink.name: r.sink for r in self.api.routes.values()}
            self.api.broker.open([sinks[name] for name in sorted(sinks)])
        except BaseException:
            server.server_close()
            raise
        self._server = server
        server.pool.start()
        server.closer.start()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="flows-http",
            daemon=True,
        )
        self._thread.start()
        shown_host, shown_port = self.address
        log.info(
            "http server listening on %s:%d%s",
            shown_host,
            shown_port,
            f" (ingest: {', '.join(sorted(self.api.routes))})" if self.api.routes else "",
        )

    def stop(self) -> None:
        """Stops accepting, ends the streams, lets the request threads finish what they
        hold and what is queued (bounded), then closes the broker and what it owns."""
        server = self._server
        if server is not None:
            server.shutdown()
            server.streams.stop(timeout=2.0)
            server.pool.close(timeout=STOP_TIMEOUT)
            server.closer.stop()
            server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.api.broker.close()
        for resource in self.owned:
            resource.close()
