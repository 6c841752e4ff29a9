"""What the HTTP server answers: :class:`Response` (a body in one piece),
:class:`StreamResponse` (a body written as it is made) and JSON bodies made from decoded
values."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Response:
    """What the server answers."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamResponse(Response):
    """An answer whose body is written as it is made, for long-lived answers (Server-Sent
    Events): ``chunks`` instead of :attr:`body` (left empty). A :class:`Response`, so the
    API's methods keep their one return type; the server tells the two apart. Make one
    with :func:`stream_response`.

    Contract, as the server keeps it (``runtimes/http/server.py``):

    * the status line and headers are sent at once, with no ``Content-Length`` and with
      ``Connection: close`` and ``Cache-Control: no-store``: the body ends when the
      connection closes;
    * each chunk ``chunks`` yields is written and flushed as it comes; an empty chunk is
      not written, but lets the server check whether the client went away or the server is
      stopping, so a body that waits for data should yield ``b""`` every second or so;
    * the body runs in a thread of its own, not in one of the request threads, and at most
      ``http_streams`` (:class:`~runtimes.config.Settings`) run at once: past that the
      request is answered 503 with ``Retry-After``, and ``chunks`` is closed unstarted;
    * the stream ends when ``chunks`` is exhausted or raises, when a write fails or takes
      longer than ``http_write_timeout`` (a client that does not read), when the client
      closes, or when the server stops; then ``chunks.close()`` is called, if it has one, in
      the stream's own thread (a generator's ``finally`` runs there);
    * ``cancel``, when given, is called from another thread when the server stops, to wake
      a body blocked in a wait (it must not block).
    """

    chunks: Iterator[bytes]
    cancel: Callable[[], None] | None = None


def stream_response(
    status: int,
    chunks: Iterator[bytes],
    content_type: str,
    headers: tuple[tuple[str, str], ...] = (),
    cancel: Callable[[], None] | None = None,
) -> StreamResponse:
    """A :class:`StreamResponse` (``content_type`` such as ``text/event-stream``)."""
    return StreamResponse(status, b"", content_type, headers, chunks=chunks, cancel=cancel)


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, default=to_json, ensure_ascii=False, separators=(",", ":"))
    return Response(status, body.encode("utf-8"), JSON_TYPE, headers)


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    return json_response(status, {"error": message}, headers)


def to_json(value: Any) -> Any:
    """``json.dumps``' fallback for the values formats decode to (see the module docstring)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, ProtoMessage):
        return json_format.MessageToDict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)
