"""examples/orders in the test driver: Avro orders written by confluent-kafka's own
serializer, per-customer totals counted once each, Avro totals read back by its own
deserializer, and what is not an order dead-lettered without touching a total."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from examples.orders.app import CUSTOMER_TOTAL, ORDER, app
from flows.testing import TestDriver
from runtimes.registry import mock_binder

ORDERS = SerializationContext("orders", MessageField.VALUE)
TOTALS = SerializationContext("totals", MessageField.VALUE)


def _order(order_id: str, customer: str, cents: int) -> dict[str, Any]:
    return {"order_id": order_id, "customer": customer, "amount_cents": cents}


def test_totals_per_customer_in_avro_from_the_checkouts_avro() -> None:
    binder = mock_binder()
    driver = TestDriver(app, registry=binder)
    checkout = AvroSerializer(binder.client, json.dumps(ORDER))
    placed = [
        _order("o1", "ann", 1250),
        _order("o2", "bob", 99),
        _order("o3", "ann", 750),
        _order("o4", "ann", 1),
    ]
    for order in placed:
        driver.pipe_raw("orders", checkout(order, ORDERS), order["order_id"].encode())

    read = AvroDeserializer(binder.client, json.dumps(CUSTOMER_TOTAL))
    totals = [(r.key, read(r.value, TOTALS)) for r in driver.read_all("totals")]
    anns = [value for key, value in totals if key == b"ann"]
    assert anns == [
        {"customer": "ann", "orders": 1, "total_cents": 1250, "last_order_id": "o1"},
        {"customer": "ann", "orders": 2, "total_cents": 2000, "last_order_id": "o3"},
        {"customer": "ann", "orders": 3, "total_cents": 2001, "last_order_id": "o4"},
    ]
    assert [value for key, value in totals if key == b"bob"] == [
        {"customer": "bob", "orders": 1, "total_cents": 99, "last_order_id": "o2"}
    ]
    assert driver.state("totals", "ann") == {"orders": 3, "total_cents": 2001}
    assert sorted(binder.client.get_subjects()) == ["orders-value", "totals-value"]


def test_what_is_not_an_order_is_dead_lettered_and_counts_nothing() -> None:
    driver = TestDriver(app)
    driver.pipe("orders", _order("o1", "ann", 500), key="o1")
    driver.pipe_raw("orders", b'{"order_id": "o2"}', b"o2")  # JSON, not the wire format
    driver.pipe_raw("orders", b"\0\0\0\0\x2a\x02", b"o3")  # schema id 42: nobody's
    driver.pipe("orders", _order("o4", "ann", 250), key="o4")
    dead = {
        r.key: dict((name, value.decode()) for name, value in r.headers)
        for r in driver.read_all("orders.dlq")
    }
    assert set(dead) == {b"o2", b"o3"}
    assert {d["flows.error.type"] for d in dead.values()} == {"DecodeError"}
    assert "schema id 42" in dead[b"o3"]["flows.error.message"]
    assert driver.state("totals", "ann") == {"orders": 2, "total_cents": 750}
