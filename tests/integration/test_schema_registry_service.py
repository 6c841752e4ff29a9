"""The project's Schema Registry (``scripts/services.sh``, ``docker-compose.yml``) as
confluent-kafka's own client sees it: Confluent's REST API, schemas found again by id, and
Confluent's default BACKWARD compatibility enforced on every subject.

Nothing here is flows code: these tests pin down the service that flows' registry formats and
their tests rely on, with a client nobody here wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.conftest import UniqueFn

SubjectFn = Callable[[str], str]

# Confluent's error code for "Schema being registered is incompatible with an earlier schema".
INCOMPATIBLE_SCHEMA = 409


def avro_record(*extra_fields: dict[str, object]) -> Schema:
    fields: list[dict[str, object]] = [
        {"name": "order_id", "type": "string"},
        {"name": "amount", "type": "double"},
        *extra_fields,
    ]
    return Schema(json.dumps({"type": "record", "name": "Order", "fields": fields}), "AVRO")


ORDER_V1 = avro_record()
# Compatible (BACKWARD): a reader of v2 reads v1 data, the new field taking its default.
ORDER_V2 = avro_record({"name": "currency", "type": "string", "default": "EUR"})
# Incompatible: a reader of this schema cannot read v1 data, which has no `customer`.
ORDER_NO_DEFAULT = avro_record({"name": "customer", "type": "string"})


@pytest.fixture
def registry(schema_registry_url: str) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        yield client


@pytest.fixture
def subject(registry: SchemaRegistryClient, unique: UniqueFn) -> Iterator[SubjectFn]:
    """``subject(prefix)``: a subject name no other test uses, deleted (for good) at the end."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(unique(prefix))
        return made[-1]

    yield make

    for name in made:
        try:
            registry.delete_subject(name)
            registry.delete_subject(name, permanent=True)
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:  # nothing was registered under it
                raise


def test_a_registered_avro_schema_is_found_again_by_its_id(
    registry: SchemaRegistryClient, subject: SubjectFn, schema_registry_url: str
) -> None:
    name = subject("orders-value")
    schema_id = registry.register_schema(name, ORDER_V1)

    # a fresh client: nothing comes from the first one's cache
    with SchemaRegistryClient({"url": schema_registry_url}) as fresh:
        fetched = fresh.get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    assert fetched.schema_str is not None
    assert ORDER_V1.schema_str is not None
    assert json.loads(fetched.schema_str) == json.loads(ORDER_V1.schema_str)
    latest = registry.get_latest_version(name)
    assert (latest.schema_id, latest.version, latest.subject) == (schema_id, 1, name)
    # registering the same schema again is not a new version
    assert registry.register_schema(name, ORDER_V1) == schema_id
    assert registry.get_versions(name) == [1]


def test_the_default_compatibility_is_backward(registry: SchemaRegistryClient) -> None:
    assert registry.get_compatibility() == "BACKWARD"


def test_a_field_added_with_a_default_is_a_compatible_new_version(
    registry: SchemaRegistryClient, subject: SubjectFn
) -> None:
    name = subject("orders-value")
    v1_id = registry.register_schema(name, ORDER_V1)

    assert registry.test_compatibility(name, ORDER_V2)
    v2_id = registry.register_schema(name, ORDER_V2)

    assert v2_id != v1_id
    assert registry.get_versions(name) == [1, 2]
    assert registry.get_latest_version(name).schema_id == v2_id


def test_an_incompatible_schema_is_refused_with_confluents_error_code(
    registry: SchemaRegistryClient, subject: SubjectFn
) -> None:
    name = subject("orders-value")
    registry.register_schema(name, ORDER_V1)

    assert not registry.test_compatibility(name, ORDER_NO_DEFAULT)
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(name, ORDER_NO_DEFAULT)

    assert refused.value.http_status_code == 409
    assert refused.value.error_code == INCOMPATIBLE_SCHEMA
    assert "incompatible" in refused.value.error_message.lower()
    assert registry.get_versions(name) == [1]


def test_confluents_avro_serializer_and_deserializer_round_trip_through_it(
    registry: SchemaRegistryClient, subject: SubjectFn
) -> None:
    """The wire format's schema id is one this registry hands out and resolves."""
    name = subject("orders-value")
    assert ORDER_V1.schema_str is not None
    serializer = AvroSerializer(
        registry, ORDER_V1.schema_str, conf={"subject.name.strategy": lambda _ctx, _rec: name}
    )
    deserializer = AvroDeserializer(registry)
    context = SerializationContext("orders", MessageField.VALUE)
    order = {"order_id": "o-1", "amount": 12.5}

    payload = serializer(order, context)

    assert payload is not None
    assert payload[0] == 0  # Confluent's magic byte
    schema_id = int.from_bytes(payload[1:5], "big")
    assert registry.get_latest_version(name).schema_id == schema_id
    assert deserializer(payload, context) == order
