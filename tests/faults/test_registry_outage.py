"""The Schema Registry goes away mid-run: the flow retries, then goes on, and loses and
repeats nothing.

The registry of ``make services`` keeps its schemas in memory, so stopping it would lose
them; a :class:`~tests.tcp_gate.TcpGate` in front of it plays the outage instead: shut, it
refuses connections and cuts the open ones. The worker has read records of the first schema
(its id cached since); a producer then moves to a second schema, which the worker must ask
the registry for while the gate is shut.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.conftest import UniqueFn
from tests.helpers import (
    consume_all,
    flows_env,
    kill,
    produce,
    run_cli,
    start_cli,
    wait_until,
    write_app,
)
from tests.tcp_gate import TcpGate

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [{"name": "customer", "type": "string"}, {"name": "amount", "type": "long"}],
}
ORDER_V2 = {
    **ORDER,
    "fields": [*ORDER["fields"], {"name": "note", "type": "string", "default": ""}],
}

APP = """
import json
from flows import STR, App, Map, Topic, avro

ORDER = json.loads({order!r})
orders = Topic("{source}", key_format=STR, value_format=avro(ORDER), partitions=2)
doubled = Topic("{sink}", key_format=STR, value_format=avro(ORDER), partitions=2)


def double(record):
    return {{**record.value, "amount": record.value["amount"] * 2}}


app = App("{name}", [Map(name="double", source=orders, sink=doubled, fn=double, exactly_once=True)])
"""

FIRST, SECOND = 60, 60


def test_a_registry_outage_mid_run_loses_and_repeats_nothing(
    tmp_path: Path,
    unique: UniqueFn,
    bootstrap_servers: str,
    database_url: str,
    schema_registry_url: str,
) -> None:
    registry = urlsplit(schema_registry_url)
    assert registry.hostname is not None and registry.port is not None
    source, sink = unique("orders"), unique("doubled")
    app = write_app(
        tmp_path / "app.py",
        APP.format(order=json.dumps(ORDER), source=source, sink=sink, name=unique("double")),
    )
    log = tmp_path / "worker.log"
    with (
        TcpGate((registry.hostname, registry.port)) as gate,
        SchemaRegistryClient({"url": schema_registry_url}) as client,
    ):
        env = flows_env(
            bootstrap_servers,
            database_url,
            FLOWS_SCHEMA_REGISTRY_URL=f"http://127.0.0.1:{gate.port}{registry.path}",
        )
        created = run_cli(["run", str(app), "--until-idle", "1"], env)  # creates the topics
        assert created.returncode == 0, created.stderr[-3000:]
        context = SerializationContext(source, MessageField.VALUE)
        v1 = AvroSerializer(client, json.dumps(ORDER))
        first: list[dict[str, Any]] = [{"customer": f"c{i}", "amount": i} for i in range(FIRST)]
        produce(
            bootstrap_servers, source, [(o["customer"].encode(), v1(o, context)) for o in first]
        )
        worker = start_cli(["run", str(app)], env, log)
        consume_all(bootstrap_servers, sink, expected=FIRST)  # read, and the schema cached

        v2 = AvroSerializer(client, json.dumps(ORDER_V2))  # registers the second schema
        second: list[dict[str, Any]] = [
            {"customer": f"d{i}", "amount": i, "note": "v2"} for i in range(SECOND)
        ]
        encoded = [(o["customer"].encode(), v2(o, context)) for o in second]
        gate.shut()
        produce(bootstrap_servers, source, encoded)
        wait_until(
            lambda: "did not answer" in log.read_text() or worker.poll() is not None,
            120,
            "the worker to retry while the registry does not answer",
        )
        assert worker.poll() is None, log.read_text()[-3000:]
        assert "retry" in log.read_text()
        gate.open()

        read = AvroDeserializer(client, json.dumps(ORDER))
        out_context = SerializationContext(sink, MessageField.VALUE)
        out = consume_all(bootstrap_servers, sink, expected=FIRST + SECOND, timeout=180)
        got = sorted(
            (r.key or b"", json.dumps(read(r.value, out_context), sort_keys=True)) for r in out
        )
        expected = sorted(
            (o["customer"].encode(), json.dumps(_doubled(o), sort_keys=True))
            for o in first + second
        )
        assert got == expected  # every order once: none lost, none twice
        assert consume_all(bootstrap_servers, f"{source}.dlq", idle=1.0) == []
        assert worker.poll() is None, log.read_text()[-3000:]
        kill(worker, signal.SIGTERM)
        assert worker.returncode == 0, log.read_text()[-3000:]


def _doubled(order: dict[str, Any]) -> dict[str, Any]:
    return {"customer": order["customer"], "amount": order["amount"] * 2}
