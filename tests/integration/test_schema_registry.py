"""Schema Registry formats against the real registry (Apicurio's Confluent-compatible API,
started by ``make services``), checked with confluent-kafka's own serializers.

Each test names its subjects after a fresh topic, so runs never meet each other's schemas.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from flows import DecodeError, Registry, SchemaRegistryError, avro, json_schema, protobuf
from flows._proto.flows_envelope_pb2 import Header
from flows.encoding import decode_part
from flows.records import RawRecord
from flows.schema_registry import RegistryFormat
from runtimes.config import Settings
from runtimes.registry import RegistryBinder
from tests.conftest import TopicFactory, UniqueFn
from tests.helpers import consume_all, flows_env, produce, run_cli, write_app

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [{"name": "customer", "type": "string"}, {"name": "amount", "type": "double"}],
}
ORDER_V2 = {
    **ORDER,
    "fields": [*ORDER["fields"], {"name": "note", "type": "string", "default": ""}],
}
PERSON = {
    "title": "Person",
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
}


def _topic() -> str:
    return f"sr-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def binder(schema_registry_url: str) -> Iterator[RegistryBinder]:
    """flows' side: formats bound to the registry, as ``flows run`` binds them."""
    binder = RegistryBinder.from_settings(Settings(schema_registry_url=schema_registry_url))
    yield binder
    binder.close()


@pytest.fixture
def client(schema_registry_url: str) -> Iterator[SchemaRegistryClient]:
    """The other side: a client of confluent-kafka's own, not flows'."""
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        yield client


@pytest.mark.parametrize(
    ("declared", "value", "theirs"),
    [
        (
            avro(ORDER),
            {"customer": "ada", "amount": 2.5},
            lambda c: (AvroSerializer(c, json.dumps(ORDER)), AvroDeserializer(c)),
        ),
        (
            json_schema(PERSON),
            {"name": "ada"},
            lambda c: (JSONSerializer(json.dumps(PERSON), c), JSONDeserializer(None, None, c)),
        ),
        (
            protobuf(Header, Registry()),
            Header(key="k", value=b"v"),
            lambda c: (ProtobufSerializer(Header, c, {}), ProtobufDeserializer(Header, {}, c)),
        ),
    ],
    ids=["avro", "json-schema", "protobuf"],
)
def test_round_trips_with_confluents_serializers(
    binder: RegistryBinder,
    client: SchemaRegistryClient,
    declared: RegistryFormat[Any],
    value: Any,
    theirs: Any,
) -> None:
    topic = _topic()
    fmt = binder.bind(declared, topic, "value")
    serialize, deserialize = theirs(client)
    context = SerializationContext(topic, MessageField.VALUE)
    data = fmt.encode(value)
    if declared.kind == "protobuf":  # confluent-kafka reads Apicurio's copy as stored
        from runtimes.registry.client import SerializedFallback

        deserialize = ProtobufDeserializer(Header, {}, SerializedFallback(client))
    assert deserialize(data, context) == value
    assert fmt.decode(serialize(value, context)) == value
    assert f"{topic}-value" in client.get_subjects()


def test_evolution_unknown_ids_and_refusals(
    binder: RegistryBinder, client: SchemaRegistryClient
) -> None:
    topic = _topic()
    reader = binder.bind(avro(ORDER), topic, "value")
    context = SerializationContext(topic, MessageField.VALUE)
    first = reader.encode({"customer": "ada", "amount": 1.0})  # registers version 1
    newer = AvroSerializer(client, json.dumps(ORDER_V2))({**_order("bob"), "note": "n"}, context)
    assert newer[1:5] != first[1:5]  # version 2, another id
    assert reader.decode(newer) == _order("bob")  # the compatible newer schema still reads
    # an incompatible schema is refused by the registry, and the flow stops on it
    changed = {**ORDER, "fields": [{"name": "customer", "type": "int"}]}
    with pytest.raises(SchemaRegistryError, match=r"refused the schema .* as incompatible"):
        binder.bind(avro(changed), topic, "value").encode({"customer": 1})
    # an id the registry does not know is the record's fault: a DecodeError naming it
    unknown = b"\0" + (2_000_000_000).to_bytes(4, "big") + first[5:]
    raw = RawRecord(topic, 0, 5, None, unknown, (), 0)
    with pytest.raises(DecodeError, match=r"\(schema id 2000000000\).*unknown schema id"):
        decode_part(reader, raw, unknown, "value")
    # with auto-registration off, a subject nobody registered stops the flow
    strict = binder.bind(avro(ORDER, Registry(auto_register=False)), _topic(), "value")
    with pytest.raises(SchemaRegistryError, match="register it first"):
        strict.encode(_order("cy"))


def _order(customer: str, amount: float = 1.0) -> dict[str, Any]:
    return {"customer": customer, "amount": amount}


APP = """
import json
from flows import STR, App, Map, Topic, avro

ORDER = json.loads({order!r})
TOTAL = {{
    "type": "record",
    "name": "Total",
    "namespace": "shop",
    "fields": [{{"name": "customer", "type": "string"}}, {{"name": "total", "type": "double"}}],
}}
orders = Topic("{source}", key_format=STR, value_format=avro(ORDER), partitions=2)
totals = Topic("{sink}", key_format=STR, value_format=avro(TOTAL), partitions=2)


def tax(record):
    return {{"customer": record.value["customer"], "total": record.value["amount"] * 1.25}}


app = App("{name}", [Map(name="tax", source=orders, sink=totals, fn=tax)])
"""


def test_flows_run_reads_and_writes_avro_with_the_registry(
    tmp_path: Path,
    unique: UniqueFn,
    bootstrap_servers: str,
    database_url: str,
    schema_registry_url: str,
    client: SchemaRegistryClient,
) -> None:
    source, sink = unique("orders"), unique("totals")
    path = write_app(
        tmp_path / "app.py",
        APP.format(order=json.dumps(ORDER), source=source, sink=sink, name=unique("tax")),
    )
    env = flows_env(bootstrap_servers, database_url, FLOWS_SCHEMA_REGISTRY_URL=schema_registry_url)
    first = run_cli(["run", str(path), "--until-idle", "1"], env)  # creates the topics
    assert first.returncode == 0, first.stderr
    serialize = AvroSerializer(client, json.dumps(ORDER))
    context = SerializationContext(source, MessageField.VALUE)
    good = [serialize(_order(f"c{i}", float(i)), context) for i in range(20)]
    unknown_id = b"\0" + (2_000_000_001).to_bytes(4, "big") + good[0][5:]
    records = [(f"c{i}".encode(), data) for i, data in enumerate(good)]
    records[5:5] = [(b"bad", b'{"customer": "x"}'), (b"bad", unknown_id)]
    produce(bootstrap_servers, source, records)
    done = run_cli(["run", str(path), "--until-idle", "3"], env)
    assert done.returncode == 0, done.stderr
    read = AvroDeserializer(client)
    out_context = SerializationContext(sink, MessageField.VALUE)
    out = consume_all(bootstrap_servers, sink, expected=20)
    totals = sorted((read(r.value, out_context) for r in out), key=lambda v: v["total"])
    assert totals == [{"customer": f"c{i}", "total": i * 1.25} for i in range(20)]
    dead = consume_all(bootstrap_servers, f"{source}.dlq", expected=2)
    messages = [dict(d.headers)["flows.error.message"].decode() for d in dead]
    assert any("(schema id 2000000001): WireFormatError: unknown schema id" in m for m in messages)
    assert any("not in Confluent's wire format" in m for m in messages)
    assert all(dict(d.headers)["flows.error.type"] == b"DecodeError" for d in dead)


def test_flows_produce_and_consume_with_format_avro(
    tmp_path: Path,
    bootstrap_servers: str,
    database_url: str,
    schema_registry_url: str,
    topic_factory: TopicFactory,
    client: SchemaRegistryClient,
) -> None:
    topic = topic_factory(partitions=1)
    schema = tmp_path / "order.avsc"
    schema.write_text(json.dumps(ORDER))
    env = flows_env(bootstrap_servers, database_url, FLOWS_SCHEMA_REGISTRY_URL=schema_registry_url)
    lines = '{"customer": "ada", "amount": 2.5}\n\n{"customer": "bob", "amount": 1}\n'
    produced = run_cli(
        ["produce", topic, "--format", "avro", "--schema", str(schema)], env, stdin=lines
    )
    assert produced.returncode == 0, produced.stderr
    assert "produced 2 records" in produced.stdout
    bad = run_cli(
        ["produce", topic, "--format", "avro", "--schema", str(schema)], env, stdin='{"x": 1}\n'
    )
    assert bad.returncode == 2 and "line 1 does not fit avro:shop.Order" in bad.stderr
    context = SerializationContext(topic, MessageField.VALUE)
    read = AvroDeserializer(client)
    written = consume_all(bootstrap_servers, topic, expected=2)
    assert [read(r.value, context) for r in written] == [_order("ada", 2.5), _order("bob")]
    produce(bootstrap_servers, topic, [(None, b"plain text")])
    consumed = run_cli(
        ["consume", topic, "--from-beginning", "--max", "3", "--format", "avro"], env
    )
    assert consumed.returncode == 0, consumed.stderr
    values = [line.split("\t")[3] for line in consumed.stdout.splitlines()]
    assert [json.loads(v) for v in values[:2]] == [_order("ada", 2.5), _order("bob")]
    assert values[2].startswith("(undecodable: not in Confluent's wire format")
