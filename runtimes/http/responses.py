"""What the HTTP server answers: :class:`Response` and JSON bodies made from decoded values."""

from __future__ import annotations

import base64
import dataclasses
import json
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
