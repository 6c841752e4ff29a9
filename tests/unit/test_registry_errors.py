"""A Schema Registry that does not answer, or refuses: whose fault each error is.

A registry that does not answer is a transient error (the batch is retried), never a
``DecodeError`` or ``EncodeError``; one that refuses stops the flow; an unknown schema id is
the record's fault.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryError as ConfluentRegistryError

from flows import SchemaRegistryError, SchemaRegistryUnavailableError, Topic, avro
from flows.encoding import decode_part, encode_part
from flows.records import RawRecord
from runtimes.registry import RegistryBinder
from runtimes.registry.client import SerializedFallback, registry_client
from runtimes.registry.errors import refusal

ORDER = {
    "type": "record",
    "name": "Order",
    "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "double"}],
}


def _unreachable() -> RegistryBinder:
    return RegistryBinder(registry_client({"url": "http://127.0.0.1:1", "max.retries": 0}), "x")


def test_an_unreachable_registry_is_transient_never_a_decode_or_encode_error() -> None:
    fmt = _unreachable().bind(avro(ORDER), "orders", "value")
    with pytest.raises(SchemaRegistryUnavailableError, match="did not answer"):
        encode_part(fmt, {"id": "a", "amount": 1.0}, Topic("orders"), "value")
    with pytest.raises(SchemaRegistryUnavailableError, match="did not answer"):
        decode_part(fmt, RawRecord("orders", 0, 0, None, None, (), 0), b"\0\0\0\0\1\2a", "v")


@pytest.mark.parametrize(
    ("status", "code", "decoding", "expected"),
    [
        (503, 50301, False, SchemaRegistryUnavailableError),
        (500, 50001, True, SchemaRegistryUnavailableError),
        (429, -1, False, SchemaRegistryUnavailableError),
        (401, 40101, True, SchemaRegistryError),
        (409, 409, False, SchemaRegistryError),
        (404, 40401, False, SchemaRegistryError),
        (404, 40401, True, SchemaRegistryError),  # use_latest_version's subject missing
        (404, None, True, SchemaRegistryError),  # no registry answered: a wrong URL
        (404, 40403, True, None),  # an unknown schema id: the record's fault
        (404, 40400, True, None),
    ],
)
def test_registry_errors_by_whose_fault(
    status: int, code: Any, decoding: bool, expected: type[Exception] | None
) -> None:
    found = refusal(
        ConfluentRegistryError(status, code, "m"), url="u", subject="s", decoding=decoding
    )
    assert (type(found) if found is not None else None) is expected


class _Apicurio:
    """A registry that fails ``?format=serialized`` as Apicurio does, or is down."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.asked: list[str | None] = []

    def get_schema(self, schema_id: int, subject: Any, fmt: Any, reference_format: Any) -> str:
        self.asked.append(fmt)
        if self.down:
            raise ConfluentRegistryError(503, 50301, "down")
        if fmt == "serialized":
            raise ConfluentRegistryError(500, 0, "Syntax error in Header.proto:1:1")
        return "stored"


def test_protobuf_schemas_are_asked_for_again_as_stored() -> None:
    registry = _Apicurio()
    assert SerializedFallback(registry).get_schema(1, None, "serialized") == "stored"
    assert registry.asked == ["serialized", None]
    down = _Apicurio(down=True)
    with pytest.raises(ConfluentRegistryError, match="down"):
        SerializedFallback(down).get_schema(1, None, "serialized")
    assert down.asked == ["serialized", None]  # still an outage, translated as one
