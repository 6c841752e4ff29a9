"""Orders: Avro orders in, per-customer totals kept in PostgreSQL, Avro totals out.

Input: ``orders``, key = the order id (text), value an Avro ``shop.Order``
(``order.avsc``: ``order_id``, ``customer``, ``amount_cents``) in Confluent's wire format,
as the shop's checkout writes it with its own serializer and the Schema Registry.

The contract (checked by tests):

* ``totals`` gets one record per order, key = the customer, value an Avro
  ``shop.CustomerTotal`` (``total.avsc``): the customer's number of orders and total so far,
  and the order that made it; counted exactly once, whatever the kills;
* the state per customer lives in PostgreSQL (``orders_totals_state``) as JSON
  ``{"orders": n, "total_cents": t}``;
* an order that is not Avro of a schema the registry knows, or that does not match it, is a
  ``DecodeError`` in ``orders.dlq`` and touches no total; a checkout that moves to a newer
  compatible schema (a field added with a default) changes nothing here.

Orders are keyed by order id, so a customer's orders spread over partitions: the flow
re-keys them by customer through an intermediate topic (a :class:`~flows.Join` with one
source) before it counts, so one partition, hence one worker, holds each customer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows import JSON, STR, App, Join, Message, Record, Topic, avro

HERE = Path(__file__).resolve().parent
ORDER = json.loads((HERE / "order.avsc").read_text())
CUSTOMER_TOTAL = json.loads((HERE / "total.avsc").read_text())

orders = Topic("orders", key_format=STR, value_format=avro(ORDER))
totals = Topic("totals", key_format=STR, value_format=avro(CUSTOMER_TOTAL))


def customer(record: Record[str, dict[str, Any]]) -> str:
    return str(record.value["customer"])


def add_order(
    record: Record[str, dict[str, Any]], state: dict[str, int] | None
) -> tuple[Message, dict[str, int]]:
    """The customer's totals with this order added (``record`` is the order as it came,
    keyed by its id); the output, keyed by the customer, repeats them in Avro."""
    seen = state or {"orders": 0, "total_cents": 0}
    new = {
        "orders": seen["orders"] + 1,
        "total_cents": seen["total_cents"] + int(record.value["amount_cents"]),
    }
    name = customer(record)
    total = {"customer": name, **new, "last_order_id": record.value["order_id"]}
    return Message(total, key=name), new


app = App(
    "orders",
    [
        Join(
            name="totals",
            sources={orders: customer},
            sink=totals,
            fn=add_order,
            state_format=JSON,
            key_format=STR,
        ),
    ],
    description="per-customer order totals: Avro in and out through the Schema Registry",
)
