"""Request bodies: ``Content-Length`` or chunked, bounded, and what to answer when not.

A body past its limit is read and dropped up to :data:`DRAIN_LIMIT` bytes more before the
413 is sent: a client still sending then reads the answer; closing a socket with unread
bytes would make the kernel reset the connection, and the answer could be lost with it.
"""

from __future__ import annotations

from email.message import Message
from typing import BinaryIO

from runtimes.http.responses import Response, error_response

__all__ = ["DRAIN_LIMIT", "BodyError", "read_body"]

#: bytes of an oversized body read and discarded before answering 413
DRAIN_LIMIT = 1 << 20


class BodyError(Exception):
    """The body cannot be read as it should: :attr:`response` is the answer (4xx)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def read_body(rfile: BinaryIO, headers: Message, limit: int, required: bool = True) -> bytes:
    """The request body, at most ``limit`` bytes; raises :class:`BodyError` with the answer.
    Without ``Content-Length`` or chunked encoding: 411 if ``required``, else no body."""
    too_large = error_response(413, f"the body is larger than {limit} bytes")
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return _chunked(rfile, limit, too_large)
    length_text = headers.get("Content-Length")
    if length_text is None and not required:
        return b""
    if length_text is None:
        raise BodyError(error_response(411, "Content-Length or chunked Transfer-Encoding required"))
    try:
        length = int(length_text)
        if length < 0:
            raise ValueError(length_text)
    except ValueError:
        raise BodyError(error_response(400, "Content-Length is not a number")) from None
    if length > limit:
        _discard(rfile, length)
        raise BodyError(too_large)
    body = rfile.read(length)
    if len(body) < length:
        raise BodyError(error_response(400, "the body ended before Content-Length"))
    return body


def _chunked(rfile: BinaryIO, limit: int, too_large: Response) -> bytes:
    """A chunked body; past ``limit`` the rest is read and dropped (bounded), then 413."""
    parts: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(1026)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BodyError(error_response(400, "malformed chunked body")) from None
        if size == 0:
            while rfile.readline(8194).strip():  # trailers
                pass
            if total > limit:
                raise BodyError(too_large)
            return b"".join(parts)
        total += size
        if total > limit + DRAIN_LIMIT:
            raise BodyError(too_large)
        chunk = rfile.read(size)
        if len(chunk) < size:
            raise BodyError(error_response(400, "the chunked body ended early"))
        if total <= limit:
            parts.append(chunk)
        else:
            parts.clear()
        rfile.readline(3)  # the CRLF after the chunk


def _discard(rfile: BinaryIO, length: int) -> None:
    """Reads and drops a bounded part of a body we refuse (see ``DRAIN_LIMIT``)."""
    left = min(length, DRAIN_LIMIT)
    try:
        while left > 0:
            chunk = rfile.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)
    except OSError:
        return
