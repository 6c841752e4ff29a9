"""The hand-written HTTP server: the standard library's ``ThreadingHTTPServer`` serving
:class:`~runtimes.http.api.HttpApi`.

The handler only moves bytes: it reads the request line, headers and a bounded body, asks
the API for a :class:`~runtimes.http.responses.Response`, and writes it with
``Connection: close``. Whatever goes wrong in one request becomes an answer and one log line.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flows.errors import ConfigError, TransientError
from runtimes.config import Settings
from runtimes.http.api import HttpApi
from runtimes.http.responses import Response, error_response

log = logging.getLogger("flows.http")

#: bytes of an oversized body read and discarded before answering 413, so the client, still
#: sending, reads the answer instead of a connection reset
_DRAIN_LIMIT = 1 << 20


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: HttpApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr: one log line instead
        error = sys.exc_info()[1]
        log.warning(
            "http connection from %s failed: %s: %s", client_address[0], type(error).__name__, error
        )


class _Server6(_Server):
    address_family = socket.AF_INET6


class _BodyError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "flows"
    sys_version = ""
    #: seconds a slow client may take per socket operation
    timeout = 30

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        try:
            response = self._respond(method, path, query)
        except _BodyError as error:
            response = error.response
        except TransientError as error:  # PostgreSQL or the broker is unavailable
            response = error_response(503, str(error))
        except Exception as error:
            response = _internal_error(method, path, error)
        # one line per refused or failed request; readiness logs its own changes, and an
        # internal error was logged with its details above
        if response.status >= 400 and path != "/readyz" and response.status != 500:
            level = logging.WARNING if response.status >= 500 else logging.INFO
            reason = _reason_of(response)
            log.log(level, "http %s %s -> %d: %s", method, path, response.status, reason)
        self._send(response)

    def _respond(self, method: str, path: str, query: str) -> Response:
        api = self.server.api
        if path in ("/healthz", "/readyz", "/metrics"):
            if method != "GET":
                return error_response(405, f"{path} answers GET", (("Allow", "GET"),))
            if path == "/healthz":
                return api.healthz()
            return api.readyz() if path == "/readyz" else api.metrics_text()
        route = api.routes.get(path)
        if path.startswith("/state/"):
            if method != "GET":
                return error_response(405, "state queries answer GET", (("Allow", "GET"),))
        elif route is None:
            return error_response(404, f"nothing at {path}")
        elif method != "POST":
            return error_response(405, f"{path} answers POST", (("Allow", "POST"),))
        if not api.authorised(self.headers.get("Authorization")):
            return error_response(
                401,
                "a valid bearer token is required",
                (("WWW-Authenticate", 'Bearer realm="flows"'),),
            )
        if route is None:
            return api.state(path, query)
        body = self._body(route.max_body)
        headers = {name.lower(): value for name, value in self.headers.items()}
        return api.ingest(route, body, headers)

    def _body(self, limit: int) -> bytes:
        """The request body, at most ``limit`` bytes; raises :class:`_BodyError`."""
        too_large = error_response(413, f"the body is larger than {limit} bytes")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked(limit, too_large)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _BodyError(
                error_response(411, "Content-Length or chunked Transfer-Encoding required")
            )
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            raise _BodyError(error_response(400, "Content-Length is not a number")) from None
        if length > limit:
            self._discard(length)
            raise _BodyError(too_large)
        body = self.rfile.read(length)
        if len(body) < length:
            raise _BodyError(error_response(400, "the body ended before Content-Length"))
        return body

    def _chunked(self, limit: int, too_large: Response) -> bytes:
        """A chunked body; past ``limit`` the rest is read and dropped (bounded), then 413."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(error_response(400, "malformed chunked body")) from None
            if size == 0:
                while self.rfile.readline(8194).strip():  # trailers
                    pass
                if total > limit:
                    raise _BodyError(too_large)
                return b"".join(parts)
            total += size
            if total > limit + _DRAIN_LIMIT:
                raise _BodyError(too_large)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _BodyError(error_response(400, "the chunked body ended early"))
            if total <= limit:
                parts.append(chunk)
            else:
                parts.clear()
            self.rfile.readline(3)  # the CRLF after the chunk

    def _discard(self, length: int) -> None:
        """Reads and drops a bounded part of a body we refuse (see ``_DRAIN_LIMIT``)."""
        left = min(length, _DRAIN_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
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
        log.info("http %s -> %d: %s", (self.requestline or "?")[:200], code, message)
        self._send(error_response(code, message or self.responses.get(code, ("error",))[0]))

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
            server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({error}); choose another "
                "--http-port / FLOWS_HTTP_PORT, or 0 for no HTTP server"
            ) from error
        server.api = self.api
        try:
            sinks = {r.sink.name: r.sink for r in self.api.routes.values()}
            self.api.broker.open([sinks[name] for name in sorted(sinks)])
        except BaseException:
            server.server_close()
            raise
        self._server = server
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
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.api.broker.close()
        for resource in self.owned:
            resource.close()
