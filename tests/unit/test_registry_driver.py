"""Apps with Schema Registry formats in the test driver: no broker, no registry.

The driver binds the formats to confluent-kafka's in-memory registry; confluent-kafka's
own serializers write the inputs and its deserializers read the outputs. Bad records go to
the dead-letter topic; a registry outage mid-batch is retried and loses and repeats nothing.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from flows import (
    JSON,
    STR,
    App,
    FlowFailedError,
    Ingest,
    Map,
    Message,
    StatefulMap,
    Topic,
    Tumbling,
    Window,
    avro,
)
from flows.testing import TestDriver
from runtimes.registry import RegistryBinder, mock_binder

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [{"name": "customer", "type": "string"}, {"name": "amount", "type": "double"}],
}
TOTAL = {
    "type": "record",
    "name": "Total",
    "namespace": "shop",
    "fields": [{"name": "customer", "type": "string"}, {"name": "total", "type": "double"}],
}
ORDERS = Topic("orders", key_format=STR, value_format=avro(ORDER))
TOTALS = Topic("totals", key_format=STR, value_format=avro(TOTAL))


def _tax(record: Any) -> dict[str, Any]:
    return {"customer": record.value["customer"], "total": record.value["amount"] * 1.25}


def _sum(record: Any, state: Any) -> tuple[dict[str, Any], float]:
    total = (state or 0.0) + record.value["amount"]
    return {"customer": record.value["customer"], "total": total}, total


STATELESS = App("tax", [Map(name="tax", source=ORDERS, sink=TOTALS, fn=_tax)])
#: a window over Avro records, its aggregates stored in Avro too
WINDOWED = App(
    "windowed",
    [
        Window(
            name="win",
            source=ORDERS,
            sink=Topic("totals", key_format=STR, value_format=JSON),
            window=Tumbling(timedelta(minutes=1)),
            initial=float,
            fn=lambda r, acc: acc + r.value["amount"],
            emit="update",
            state_format=avro('"double"'),
        )
    ],
)
STATEFUL = App(
    "totals",
    [
        StatefulMap(name="sum", source=ORDERS, sink=TOTALS, fn=_sum, state_format=JSON),
        Ingest(
            name="post",
            path="/orders",
            sink=ORDERS,
            body_format=ORDERS.value_format,
            fn=lambda r: Message(r.value, key=r.value["customer"]),
        ),
    ],
)


def _headers(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


def test_avro_in_and_out_read_and_written_by_confluents_serializers() -> None:
    binder = mock_binder()
    driver = TestDriver(STATELESS, registry=binder)
    assert driver.registry is binder
    theirs = AvroSerializer(binder.client, json.dumps(ORDER))
    context = SerializationContext("orders", MessageField.VALUE)
    driver.pipe_raw("orders", theirs({"customer": "ada", "amount": 8.0}, context), b"ada")
    driver.pipe("orders", {"customer": "bob", "amount": 4.0}, key="bob")  # flows' own encoding
    read = AvroDeserializer(binder.client)
    values = [read(r.value, context) for r in driver.read_all("totals")]
    assert values == [{"customer": "ada", "total": 10.0}, {"customer": "bob", "total": 5.0}]
    assert sorted(binder.client.get_subjects()) == ["orders-value", "totals-value"]


def test_bad_records_are_dead_lettered_with_the_schema_id_and_the_flow_goes_on() -> None:
    driver = TestDriver(STATELESS)  # the driver's own in-memory registry
    driver.pipe("orders", {"customer": "ada", "amount": 8.0}, key="ada")
    good = driver.read_all("orders")[0].value
    assert good is not None
    driver.pipe_raw("orders", b'{"customer": "eve"}', b"eve")  # no magic byte
    driver.pipe_raw("orders", b"\0\0\0\x03\x09" + good[5:], b"eve")  # an unknown schema id
    driver.pipe_raw("orders", good[:5] + b"\x09", b"eve")  # a payload cut short
    driver.pipe("orders", {"customer": "bob", "amount": 4.0}, key="bob")
    dead = [_headers(r) for r in driver.read_all("orders.dlq")]
    assert [d["flows.source.offset"] for d in dead] == ["0", "1", "2"]  # eve's partition
    assert {d["flows.error.type"] for d in dead} == {"DecodeError"}
    assert "not in Confluent's wire format" in dead[0]["flows.error.message"]
    assert "(schema id 777): WireFormatError: unknown schema id" in dead[1]["flows.error.message"]
    assert (
        "(schema id 1): WireFormatError: the payload does not match"
        in (dead[2]["flows.error.message"])
    )
    assert [r.value["customer"] for r in driver.read("totals")] == ["ada", "bob"]
    assert driver.counts["dead_lettered"] == 3


def test_an_output_that_does_not_fit_its_schema_is_the_functions_failure() -> None:
    app = App("bad", [Map(name="m", source=ORDERS, sink=TOTALS, fn=lambda r: {"x": 1})])
    driver = TestDriver(app)
    driver.pipe("orders", {"customer": "ada", "amount": 8.0}, key="ada")
    (dead,) = [_headers(r) for r in driver.read_all("orders.dlq")]
    assert dead["flows.error.type"] == "EncodeError"
    assert "does not fit topic 'totals' (avro:shop.Total)" in dead["flows.error.message"]


def test_state_and_ingest_bodies_in_registry_formats() -> None:
    driver = TestDriver(STATEFUL)
    driver.pipe("orders", {"customer": "ada", "amount": 8.0}, key="ada")
    body = driver.read_all("orders")[0].value
    assert body is not None
    assert driver.post("/orders", body) == 1  # a body in the wire format
    assert driver.read_all("orders")[1].value == body  # written again with the same id
    assert driver.state("sum", "ada") == 16.0
    assert [r.value["total"] for r in driver.read("totals")] == [8.0, 16.0]


class FlakyRegistry:
    """confluent-kafka's mock registry behind a connection that fails ``outage`` calls in a
    row, starting at call number ``fails_at`` (as a registry that went down would)."""

    def __init__(self, inner: Any, fails_at: int, outage: int) -> None:
        self.inner = inner
        self.calls = 0
        self.fails_at, self.outage = fails_at, outage

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "config" or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.fails_at <= self.calls < self.fails_at + self.outage:
                raise httpx2.ConnectError("[Errno 111] Connection refused")
            return attr(*args, **kwargs)

        return call


def _flaky(fails_at: int, outage: int) -> RegistryBinder:
    inner = mock_binder()
    return RegistryBinder(FlakyRegistry(inner.client, fails_at, outage), inner.url)


@pytest.mark.parametrize(
    "app", [STATELESS, STATEFUL, WINDOWED], ids=["stateless", "stateful", "windowed"]
)
@pytest.mark.parametrize(
    ("call", "outage"), [(2, 1), (3, 2)], ids=["registering-the-output", "reading-the-second"]
)
def test_an_outage_mid_batch_is_retried_and_loses_and_repeats_nothing(
    app: App, call: int, outage: int
) -> None:
    binder = _flaky(fails_at=1_000_000, outage=2)  # up while the inputs are written
    driver = TestDriver(app, registry=binder)
    for customer in ("ada", "bob", "cy", "dee"):
        encoded = driver.topic("orders").value_format.encode({"customer": customer, "amount": 2.0})
        driver.pipe_raw("orders", encoded, customer.encode(), run=False)
    flaky = binder.client
    assert isinstance(flaky, FlakyRegistry)
    # the mock is asked for the writer's schema on every decode, and once to register the
    # output's: the second call (the output's registration) fails, or the third (the
    # second record's decode) and the next, mid-batch; then the registry is back
    flaky.fails_at, flaky.outage = flaky.calls + call, outage
    driver.run()
    assert flaky.calls >= flaky.fails_at + outage  # the outage happened, and passed
    totals = [r.key for r in driver.read("totals")]
    assert sorted(totals) == ["ada", "bob", "cy", "dee"]  # each exactly once
    assert driver.counts["dead_lettered"] == 0
    assert driver.read_all("orders.dlq") == []
    if app is STATEFUL:
        assert driver.states("sum") == {"ada": 2.0, "bob": 2.0, "cy": 2.0, "dee": 2.0}
    if app is WINDOWED:
        assert [w["value"] for w in driver.windows("win", "ada")] == [2.0]


def test_a_registry_that_stays_down_stops_the_flow_with_a_clear_message() -> None:
    binder = _flaky(fails_at=1, outage=1_000_000)
    driver = TestDriver(STATELESS, registry=binder)
    with pytest.raises(FlowFailedError, match="did not answer: ConnectError"):
        driver.pipe_raw("orders", b"\0\0\0\0\1\6ada\0\0\0\0\0\0\0\0", b"ada")
    assert driver.read_all("orders.dlq") == []
