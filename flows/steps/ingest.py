"""The ingest route: an HTTP request body decoded, passed to the function, encoded."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flows.encoding import SinkEncoder, decode_part, indexed_outputs
from flows.errors import UserFunctionError
from flows.formats import Format
from flows.records import RawMessage, RawRecord, Record
from flows.topics import Topic
from flows.wiring import Emits


@dataclass(eq=False)
class IngestRoute:
    """A compiled :class:`~flows.wiring.Ingest`: request bytes in, encoded messages out."""

    app: str
    flow: str
    path: str
    sink: Topic
    call: Callable[[Record[Any, Any]], Any]
    body_format: Format[Any]
    headers: tuple[str, ...]
    max_body: int
    emits: Emits = "one"

    def messages(self, body: bytes, headers: Mapping[str, str], timestamp: int) -> list[RawMessage]:
        """The records a request produces; :class:`DecodeError` for a body that does not
        decode, :class:`UserFunctionError` when the function fails."""
        wanted = tuple((name, headers[name].encode()) for name in self.headers if name in headers)
        raw = RawRecord(
            topic=f"http:{self.path}",
            partition=-1,
            offset=-1,
            key=None,
            value=body,
            headers=wanted,
            timestamp=timestamp,
        )
        record = Record(
            topic=raw.topic,
            partition=-1,
            offset=-1,
            key=None,
            value=decode_part(self.body_format, raw, body, "body"),
            headers=wanted,
            timestamp=timestamp,
        )
        try:
            shaped = tuple(indexed_outputs(self.emits, self.call(record)))
        except Exception as error:
            raise UserFunctionError(self.flow, raw.topic, -1, -1, error) from error
        sink = SinkEncoder(
            Topic(self.sink.name, key_format=self.sink.key_format, value_format=self.body_format),
            self.sink,
        )
        return [sink.message(out, record, raw) for _, out in shaped]


__all__ = ["IngestRoute"]
