"""Dead-letter records: a failed record's bytes unchanged, the failure in headers.

A dead-letter record keeps the source record's key, value, timestamp and headers, and
appends these headers (values UTF-8), in this order:

* ``flows.flow``: the flow that failed;
* ``flows.error.type``: the class name of the error (the user function's own error, not the
  :class:`~flows.errors.UserFunctionError` that wraps it);
* ``flows.error.message``: the error's message, at most :data:`MAX_ERROR_MESSAGE` bytes,
  cut on a character boundary so that it always decodes as strict UTF-8;
* ``flows.source.topic``, ``flows.source.partition``, ``flows.source.offset``: where the
  failed record was read;
* ``flows.attempts``: how many times the record was tried. A record that already carries
  ``flows.attempts`` (a dead letter replayed by ``flows dlq replay``, which increments it)
  counts from there: its header is replaced, not repeated, so a replayed record that fails
  again says ``attempts=2``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.errors import UserFunctionError
from flows.records import Headers, RawMessage, RawRecord

if TYPE_CHECKING:
    from flows.steps.base import Step

#: The most bytes of the error message a dead-letter record carries in its header.
MAX_ERROR_MESSAGE = 4000
#: the header counting a record's attempts
ATTEMPTS = "flows.attempts"


def dead_letter(step: Step, raw: RawRecord, error: BaseException, attempts: int = 1) -> RawMessage:
    """The dead-letter record of ``raw``: its bytes unchanged, the failure in headers."""
    cause = error.__cause__ if isinstance(error, UserFunctionError) and error.__cause__ else error
    attempts += attempts_of(raw.headers) - 1
    headers: Headers = (
        *(header for header in raw.headers if header[0] != ATTEMPTS),
        ("flows.flow", step.flow.encode()),
        ("flows.error.type", type(cause).__name__.encode()),
        ("flows.error.message", _cut_utf8(str(error), MAX_ERROR_MESSAGE)),
        ("flows.source.topic", raw.topic.encode()),
        ("flows.source.partition", str(raw.partition).encode()),
        ("flows.source.offset", str(raw.offset).encode()),
        (ATTEMPTS, str(attempts).encode()),
    )
    return RawMessage(
        topic=step.dead_letters[raw.topic].name,
        key=raw.key,
        value=raw.value,
        headers=headers,
        timestamp=raw.timestamp or None,
    )


def attempts_of(headers: Headers) -> int:
    """The last ``flows.attempts`` of ``headers``: the attempt a record is on (1 when the
    header is absent or not a positive number)."""
    found = 1
    for name, value in headers:
        if name == ATTEMPTS:
            try:
                number = int(value)
            except ValueError:
                number = 0
            found = number if number > 0 else 1
    return found


def _cut_utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes on a character boundary.

    The result always decodes as strict UTF-8: a cut never splits a multi-byte character
    (that character is dropped whole). Lone surrogates become ``?``.
    """
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    cut = limit
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # a continuation byte: inside a character
        cut -= 1
    return data[:cut]


__all__ = ["ATTEMPTS", "MAX_ERROR_MESSAGE", "attempts_of", "dead_letter"]
