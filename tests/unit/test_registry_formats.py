"""Schema Registry formats against confluent-kafka's in-memory registry (``mock://``).

Round trips go both ways through clients nobody here wrote: what flows writes, confluent-
kafka's own deserializers read, and what its serializers write, flows reads. Bad bytes are
a ``DecodeError`` naming the schema id; a registry that does not answer is a transient
error, never a ``DecodeError``; a registry that refuses stops the flow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from flows import (
    BYTES,
    JSON,
    STR,
    App,
    DecodeError,
    EncodeError,
    FormatNotBoundError,
    Ingest,
    Join,
    Map,
    Registry,
    SchemaRegistryError,
    StatefulMap,
    Topic,
    Window,
    avro,
    json_schema,
    protobuf,
)
from flows._proto.flows_envelope_pb2 import Header
from flows.encoding import decode_part, encode_part
from flows.formats import Format
from flows.records import RawRecord
from flows.schema_registry import RegistryFormat
from flows.steps import IngestRoute, RekeyStep, StatefulStep
from flows.steps.window import WindowStep
from flows.windows import Tumbling
from runtimes.registry import BoundFormat, mock_binder

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "double"}],
}
#: ORDER with a field added with a default: a compatible newer schema
ORDER_V2 = {
    **ORDER,
    "fields": [*ORDER["fields"], {"name": "note", "type": "string", "default": ""}],
}
PERSON = {
    "title": "Person",
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name"],
}
VALUE = SerializationContext("orders", MessageField.VALUE)


#: a value of each kind that fits its schema above
SAMPLES: dict[str, Any] = {
    "avro": {"id": "a", "amount": 1.0},
    "json_schema": {"name": "n"},
    "protobuf": Header(key="k"),
}


def _raw(topic: str = "orders", offset: int = 7) -> RawRecord:
    return RawRecord(topic, 2, offset, None, None, (), 0)


def _decode(fmt: Format[Any], data: bytes) -> Any:
    return decode_part(fmt, _raw(), data, "value")


# --- declarations ------------------------------------------------------------------------


def test_declarations_name_their_records() -> None:
    assert avro(ORDER).name == "avro:shop.Order"
    assert avro(ORDER).record_name == "shop.Order"
    assert avro(json.dumps(ORDER)).schema == json.dumps(ORDER)
    assert avro('"string"').record_name == "string"
    assert json_schema(PERSON).name == "json-schema:Person"
    registered = protobuf(Header, Registry())
    assert isinstance(registered, RegistryFormat)
    assert registered.name == "protobuf+registry:flows.v1.Header"
    assert not isinstance(protobuf(Header), RegistryFormat)  # without a registry: raw bytes
    assert avro(ORDER).registry == Registry("topic", auto_register=True, use_latest_version=False)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Registry(subjects="subject"), "subjects must be"),  # type: ignore[arg-type]
        (lambda: Registry(use_latest_version=True), "auto_register=False"),
        (lambda: avro("{not json"), "not JSON"),
        (lambda: json_schema({"type": "object"}, Registry("record")), "names none"),
    ],
)
def test_bad_declarations_fail_where_they_are_written(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_an_unbound_format_says_who_binds_it() -> None:
    fmt = avro(ORDER)
    for use in (lambda: fmt.encode({"id": "a", "amount": 1.0}), lambda: fmt.decode(b"\0")):
        with pytest.raises(
            FormatNotBoundError, match=r"bound by the runtime .* or the test driver"
        ):
            use()
    # not the record's fault: it is never turned into a DecodeError (a dead letter)
    with pytest.raises(FormatNotBoundError):
        _decode(fmt, b"\0\0\0\0\1")


# --- binding -----------------------------------------------------------------------------

ORDERS = Topic("orders", key_format=STR, value_format=avro(ORDER))
TOTALS = Topic("totals", key_format=avro('"string"'), value_format=avro(ORDER))


def _app() -> App:
    state = avro({"type": "record", "name": "Sum", "fields": [{"name": "n", "type": "long"}]})
    return App(
        "shop",
        [
            Map(name="copy", source=ORDERS, sink=TOTALS, fn=lambda r: r.value),
            StatefulMap(
                name="sum",
                source=ORDERS,
                sink="totals",
                fn=lambda r, s: (None, s),
                state_format=state,
            ),
            Join(
                name="join",
                sources={ORDERS: lambda r: r.value["id"]},
                sink=TOTALS,
                fn=lambda r, s: (None, s),
                key_format=avro('"string"'),
            ),
            Window(
                name="win",
                source=ORDERS,
                sink=Topic("windows", key_format=STR, value_format=JSON),
                window=Tumbling(timedelta(minutes=1)),
                initial=dict,
                fn=lambda r, acc: acc,
                state_format=state,
            ),
            Ingest(name="in", path="/orders", sink=ORDERS, body_format=ORDERS.value_format),
        ],
    )


def _formats(app: App) -> list[Format[Any]]:
    found: list[Format[Any]] = []
    for topic in app.topics.values():
        found += [topic.key_format, topic.value_format]
    for step in app.steps:
        for topic in (*step.sources, *step.sinks):
            found += [topic.key_format, topic.value_format]
        if isinstance(step, StatefulStep | WindowStep):
            assert step.state_format is not None
            found.append(step.state_format)
        if isinstance(step, RekeyStep):
            found.append(step.key_format)
    for route in app.routes:
        assert isinstance(route, IngestRoute)
        found += [route.body_format, route.sink.value_format]
    return found


def test_binding_reaches_every_place_and_leaves_the_app_as_declared() -> None:
    app = _app()
    assert app.compiled.registry_formats
    binder = mock_binder()
    bound = app.bind(binder)
    assert not any(isinstance(f, RegistryFormat) for f in _formats(bound))
    assert all(isinstance(f, RegistryFormat) for f in _formats(app) if f not in (STR, JSON, BYTES))
    places = {(f.subject, f.declared.name) for f in _formats(bound) if isinstance(f, BoundFormat)}
    assert places >= {
        ("orders-value", "avro:shop.Order"),
        ("totals-key", "avro:string"),
        ("shop.join.rekey-key", "avro:string"),
        ("shop_sum_state-value", "avro:Sum"),  # a state format's "topic" is its table
        ("shop_win_windows-value", "avro:Sum"),
    }
    # a place is bound once: an ingest body and its sink's value are the same format
    route = bound.routes[0]
    assert route.body_format is route.sink.value_format is bound.topics["orders"].value_format
    again = app.bind(binder).topics["orders"].value_format
    assert again is bound.topics["orders"].value_format  # each place bound once per binder


def test_an_app_without_registry_formats_is_not_compiled_again() -> None:
    app = App("plain", [Map(name="m", source=Topic("a"), sink=Topic("b"), fn=lambda r: r.value)])
    assert not app.compiled.registry_formats
    assert app.bind(mock_binder()) is app


# --- round trips through confluent-kafka's own serializers -----------------------------


def _bound(fmt: RegistryFormat[Any], topic: str = "orders", part: Any = "value") -> Any:
    binder = mock_binder()
    return binder, binder.bind(fmt, topic, part)


def test_avro_round_trip_both_ways_with_confluents_serializers() -> None:
    binder, fmt = _bound(avro(ORDER))
    order = {"id": "o-1", "amount": 12.5}
    data = fmt.encode(order)
    assert data[0] == 0  # the magic byte, then the schema id confluent-kafka registered
    assert AvroDeserializer(binder.client)(data, VALUE) == order
    theirs = AvroSerializer(binder.client, json.dumps(ORDER))({"id": "o-2", "amount": 1.0}, VALUE)
    assert fmt.decode(theirs) == {"id": "o-2", "amount": 1.0}


def test_protobuf_round_trip_both_ways_with_confluents_serializers() -> None:
    binder, fmt = _bound(protobuf(Header, Registry()))
    header = Header(key="k", value=b"v")
    assert ProtobufDeserializer(Header, {}, binder.client)(fmt.encode(header), VALUE) == header
    theirs = ProtobufSerializer(Header, binder.client, {})(Header(key="x"), VALUE)
    assert fmt.decode(theirs) == Header(key="x")


def test_json_schema_round_trip_both_ways_with_confluents_serializers() -> None:
    binder, fmt = _bound(json_schema(PERSON))
    data = fmt.encode({"name": "Ada", "age": 36})
    assert JSONDeserializer(None, schema_registry_client=binder.client)(data, VALUE) == {
        "name": "Ada",
        "age": 36,
    }
    theirs = JSONSerializer(json.dumps(PERSON), binder.client)({"name": "Bob"}, VALUE)
    assert fmt.decode(theirs) == {"name": "Bob"}


@dataclass
class Order:
    id: str
    amount: float


def test_from_dict_and_to_dict_carry_a_user_class() -> None:
    declared = avro(ORDER, from_dict=lambda d: Order(**d), to_dict=asdict)
    _, fmt = _bound(declared)
    assert fmt.decode(fmt.encode(Order("o-3", 2.0))) == Order("o-3", 2.0)


# --- values and bytes that do not fit ----------------------------------------------------


def test_a_value_that_does_not_fit_is_an_encode_error() -> None:
    for declared, value in (
        (avro(ORDER), {"id": "o", "amount": "not a number"}),
        (json_schema(PERSON), {"age": 3}),  # no name
        (protobuf(Header, Registry()), {"key": "not a message"}),
    ):
        _, fmt = _bound(declared)
        with pytest.raises(EncodeError, match="does not fit topic 'orders'"):
            encode_part(fmt, value, Topic("orders"), "value")


@pytest.mark.parametrize(
    "declared", [avro(ORDER), json_schema(PERSON), protobuf(Header, Registry())], ids=str
)
def test_bad_bytes_are_decode_errors_naming_the_schema_id(declared: RegistryFormat[Any]) -> None:
    _, fmt = _bound(declared)
    good = fmt.encode(SAMPLES[declared.kind])
    schema_id = int.from_bytes(good[1:5], "big")
    cases = {
        b'{"id": "a"}': None,  # no magic byte: not Confluent's wire format
        b"\0" + (4242).to_bytes(4, "big") + good[5:]: 4242,  # an id the registry lacks
        good[:5] + b"\xff\xff\xff\xff\x0f\x01": schema_id,  # a payload that does not match
    }
    for data, claimed in cases.items():
        with pytest.raises(DecodeError) as caught:
            _decode(fmt, data)
        error = caught.value
        assert (error.topic, error.partition, error.offset) == ("orders", 2, 7)
        assert error.schema_id == claimed
        if claimed is not None:
            assert f"(schema id {claimed})" in str(error)
        if claimed == 4242:
            assert "unknown schema id" in str(error)


# --- subjects, registration, evolution ---------------------------------------------------


@pytest.mark.parametrize(
    ("subjects", "expected"),
    [
        ("topic", ["orders-key", "orders-value"]),
        ("record", ["shop.Order"]),
        ("topic_record", ["orders-shop.Order"]),
    ],
)
def test_subject_naming_strategies(subjects: Any, expected: list[str]) -> None:
    binder = mock_binder()
    declared = avro(ORDER, Registry(subjects=subjects))
    for part in ("key", "value"):
        binder.bind(declared, "orders", part).encode({"id": "a", "amount": 1.0})
    assert sorted(binder.client.get_subjects()) == expected


def test_auto_register_off_needs_the_schema_registered_first() -> None:
    binder = mock_binder()
    fmt = binder.bind(avro(ORDER, Registry(auto_register=False)), "orders", "value")
    with pytest.raises(SchemaRegistryError, match=r"'orders-value'.*register it first"):
        encode_part(fmt, {"id": "a", "amount": 1.0}, Topic("orders"), "value")  # no EncodeError
    schema_id = binder.client.register_schema("orders-value", Schema(json.dumps(ORDER), "AVRO"))
    data = fmt.encode({"id": "a", "amount": 1.0})
    assert int.from_bytes(data[1:5], "big") == schema_id


def test_use_latest_version_writes_with_the_subjects_latest_schema() -> None:
    binder = mock_binder()
    binder.client.register_schema("orders-value", Schema(json.dumps(ORDER), "AVRO"))
    latest = binder.client.register_schema("orders-value", Schema(json.dumps(ORDER_V2), "AVRO"))
    registry = Registry(auto_register=False, use_latest_version=True)
    data = binder.bind(avro(ORDER, registry), "orders", "value").encode({"id": "a", "amount": 1.0})
    assert int.from_bytes(data[1:5], "big") == latest


def test_a_reader_keeps_decoding_a_compatible_newer_schema() -> None:
    binder = mock_binder()
    reader = binder.bind(avro(ORDER), "orders", "value")
    newer = AvroSerializer(binder.client, json.dumps(ORDER_V2))
    data = newer({"id": "a", "amount": 1.0, "note": "gift"}, VALUE)  # the producer moved on
    assert reader.decode(data) == {"id": "a", "amount": 1.0}  # read as the format's schema
    old = binder.bind(avro(ORDER), "older", "value").encode({"id": "b", "amount": 2.0})
    assert binder.bind(avro(ORDER_V2), "x", "value").decode(old)["note"] == ""  # the default
