"""Joins and re-keyed stateful flows against the real broker and database."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import UniqueFn
from tests.helpers import consume_all, flows_env, produce, run_cli, write_app

JOIN_APP = """
from flows import JSON, STR, App, Join, Materialise, Message, Topic
from sqlalchemy import BigInteger, Column, MetaData, Table, Text

orders = Topic("{orders}", key_format=STR, value_format=JSON, partitions=3)
payments = Topic("{payments}", key_format=STR, value_format=JSON, partitions=2)
status = Topic("{status}", key_format=STR, value_format=JSON, partitions=3)

metadata = MetaData()
balances = Table("{table}", metadata, Column("order_id", Text, primary_key=True),
                 Column("due", BigInteger, nullable=False))


def settle(record, state):
    state = state or {{"due": 0, "paid": 0}}
    if record.topic == "{orders}":
        state["due"] += record.value["amount"]
    else:
        state["paid"] += record.value["amount"]
    order_id = record.value["order"]
    return Message({{"order": order_id, "due": state["due"] - state["paid"]}}, key=order_id), state


app = App("{name}", [
    Join(name="settle", sources={{orders: lambda r: r.value["order"],
                                  payments: lambda r: r.value["order"]}},
         sink=status, fn=settle),
    Materialise(name="balances", source=status, table=balances,
                fn=lambda r: {{"order_id": r.key, "due": r.value["due"]}}),
])
"""


def test_a_join_keeps_state_across_sources(
    tmp_path: Path, unique: UniqueFn, bootstrap_servers: str, database_url: str, engine: sa.Engine
) -> None:
    names = {k: unique(k) for k in ("orders", "payments", "status", "name")}
    names["table"] = unique("balances").replace("-", "_")
    path = write_app(tmp_path / "join.py", JOIN_APP.format(**names))
    env = flows_env(bootstrap_servers, database_url)
    assert run_cli(["run", str(path), "--until-idle", "1"], env).returncode == 0
    orders, payments = [], []
    expected: dict[str, int] = {}
    for i in range(300):
        order = f"o{i % 50}"
        orders.append((f"c{i}".encode(), json.dumps({"order": order, "amount": 10}).encode()))
        expected[order] = expected.get(order, 0) + 10
        if i % 3 == 0:  # payments keyed by something else entirely: the join re-keys them
            payments.append((f"p{i}".encode(), json.dumps({"order": order, "amount": 4}).encode()))
            expected[order] -= 4
    produce(bootstrap_servers, names["orders"], orders)
    produce(bootstrap_servers, names["payments"], payments)
    produce(bootstrap_servers, names["payments"], [(b"bad", b"not json")])
    done = run_cli(["run", str(path), "--until-idle", "4"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    with engine.connect() as connection:
        result = connection.execute(sa.text(f'SELECT order_id, due FROM "{names["table"]}"'))
        rows = {order: due for order, due in result}
    assert rows == expected
    out = consume_all(bootstrap_servers, names["status"], expected=len(orders) + len(payments))
    assert len(out) == len(orders) + len(payments)  # once each, read_committed
    dead = consume_all(bootstrap_servers, f"{names['payments']}.dlq", expected=1)
    assert [d.value for d in dead] == [b"not json"]
    intermediate = f"{names['name']}.settle.rekey"
    rekeyed = consume_all(bootstrap_servers, intermediate, expected=len(orders) + len(payments))
    assert len(rekeyed) == len(orders) + len(payments)
