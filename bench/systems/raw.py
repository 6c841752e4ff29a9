"""The Python ceiling: hand-written confluent-kafka (and psycopg 3) loops, no framework.

Batch consume, transform, produce, commit. ``BENCH_MODE=eos`` puts each batch's outputs
and offsets in one Kafka transaction; ``alos`` produces, waits for every delivery report,
then commits the offsets. Word counts live in a dict (not durable: the ceiling, not a
design). Materialise upserts each batch with one ``INSERT ... SELECT FROM unnest(...)
ON CONFLICT DO UPDATE`` and commits PostgreSQL before the Kafka offsets. Windowed counts
live in a dict per partition (``start -> key -> count``, not durable either): a batch
advances each partition's stream time to its largest ``ts``, and every window whose end it
reached comes out, oldest first, in the batch's transaction.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

BATCH = 2000
WORD = re.compile(r"[^\W_]+")

env = os.environ
BOOTSTRAP = env["BENCH_BOOTSTRAP"]
CASE = env["BENCH_CASE"]
MODE = env.get("BENCH_MODE", "alos")
SOURCE = env["BENCH_IN"]
SINK = env.get("BENCH_OUT", "")
GROUP = env["BENCH_GROUP"]

stopping = threading.Event()


def _stop(_signum: int, _frame: Any) -> None:
    stopping.set()


def consumer() -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 100,
        }
    )


def producer(transactional: bool) -> Producer:
    config: dict[str, Any] = {
        "bootstrap.servers": BOOTSTRAP,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "batch.num.messages": 10000,
        "queue.buffering.max.kbytes": 262144,
    }
    if transactional:
        config["transactional.id"] = f"{GROUP}.raw"
    return Producer(config)


def offsets(messages: list[Message]) -> list[TopicPartition]:
    nexts: dict[tuple[str, int], int] = {}
    for m in messages:
        nexts[(m.topic(), m.partition())] = m.offset() + 1  # type: ignore[operator]
    return [TopicPartition(t, p, o) for (t, p), o in nexts.items()]


def produce_all(prod: Producer, outputs: list[tuple[bytes | None, bytes]]) -> None:
    produce = prod.produce
    for key, value in outputs:
        while True:
            try:
                produce(SINK, value, key)
                break
            except BufferError:
                prod.poll(0.05)
    prod.poll(0)


def run_stream(transform: Callable[[list[Message]], list[tuple[bytes | None, bytes]]]) -> None:
    eos = MODE == "eos"
    cons, prod = consumer(), producer(eos)
    if eos:
        prod.init_transactions(30)
    cons.subscribe([SOURCE])
    while not stopping.is_set():
        batch = [m for m in cons.consume(BATCH, 0.1) if m.error() is None]
        if not batch:
            continue
        outputs = transform(batch)
        if eos:
            prod.begin_transaction()
            produce_all(prod, outputs)
            prod.send_offsets_to_transaction(offsets(batch), cons.consumer_group_metadata(), 30)
            prod.commit_transaction(30)
        else:
            produce_all(prod, outputs)
            if prod.flush(30):
                raise SystemExit("outputs not acknowledged within 30 s")
            cons.commit(offsets=offsets(batch), asynchronous=False)
    cons.close()
    prod.flush(10)


def stateless_json(batch: list[Message]) -> list[tuple[bytes | None, bytes]]:
    loads, dumps = json.loads, json.dumps
    outputs = []
    for m in batch:
        value = loads(m.value())  # type: ignore[arg-type]
        value["user"] = value["user"].upper()
        outputs.append((m.key(), dumps(value, separators=(",", ":")).encode()))
    return outputs


counts: dict[str, int] = {}


def wordcount(batch: list[Message]) -> list[tuple[bytes | None, bytes]]:
    findall = WORD.findall
    outputs = []
    for m in batch:
        for word in findall(m.value().decode().lower()):  # type: ignore[union-attr]
            total = counts.get(word, 0) + 1
            counts[word] = total
            outputs.append((word.encode(), str(total).encode()))
    return outputs


def materialise() -> None:
    import psycopg

    table = env["BENCH_TABLE"]
    db = psycopg.connect(env["BENCH_DB_URL"])
    with db.cursor() as cur:
        cur.execute(
            f'CREATE TABLE IF NOT EXISTS "{table}" (id TEXT PRIMARY KEY, seq BIGINT '
            "NOT NULL, name TEXT NOT NULL, amount DOUBLE PRECISION NOT NULL, qty "
            "BIGINT NOT NULL)"
        )
    db.commit()
    upsert = (
        f'INSERT INTO "{table}" (id, seq, name, amount, qty) '
        "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::float8[], %s::bigint[]) "
        "ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, name = EXCLUDED.name, "
        "amount = EXCLUDED.amount, qty = EXCLUDED.qty"
    )
    cons = consumer()
    cons.subscribe([SOURCE])
    loads = json.loads
    while not stopping.is_set():
        batch = [m for m in cons.consume(BATCH, 0.1) if m.error() is None]
        if not batch:
            continue
        rows: dict[str, dict[str, Any]] = {}
        for m in batch:
            row = loads(m.value())  # type: ignore[arg-type]
            rows[row["id"]] = row  # the last of each key wins
        values = list(rows.values())
        with db.cursor() as cur:
            cur.execute(
                upsert,
                (
                    [r["id"] for r in values],
                    [r["seq"] for r in values],
                    [r["name"] for r in values],
                    [r["amount"] for r in values],
                    [r["qty"] for r in values],
                ),
            )
        db.commit()
        try:
            cons.commit(offsets=offsets(batch), asynchronous=False)
        except Exception as error:  # the rows are in; the offsets only save rework
            if getattr(error.args[0], "code", lambda: None)() != KafkaError._NO_OFFSET:
                raise
    cons.close()
    db.close()


WINDOW_MS = int(env.get("BENCH_WINDOW_MS", "60000"))
#: per partition: its stream time, and its open windows (start -> key -> count)
stream_time: dict[int, int] = {}
open_windows: dict[int, dict[int, dict[bytes, int]]] = {}


def windowed(batch: list[Message]) -> list[tuple[bytes | None, bytes]]:
    loads, dumps = json.loads, json.dumps
    for m in batch:
        partition = m.partition()
        ts = loads(m.value())["ts"]  # type: ignore[arg-type]
        latest = stream_time.get(partition, ts)  # type: ignore[arg-type]
        start = ts - ts % WINDOW_MS
        if start + WINDOW_MS <= latest:  # late: its window is closed
            continue
        stream_time[partition] = max(latest, ts)  # type: ignore[index]
        keys = open_windows.setdefault(partition, {}).setdefault(start, {})  # type: ignore[arg-type]
        key = m.key() or b""
        keys[key] = keys.get(key, 0) + 1
    outputs: list[tuple[bytes | None, bytes]] = []
    for partition, windows in open_windows.items():
        now = stream_time[partition]
        for start in sorted(s for s in windows if s + WINDOW_MS <= now):
            end = start + WINDOW_MS
            for key, count in windows.pop(start).items():
                value = {"start": start, "end": end, "value": count}
                outputs.append((key, dumps(value, separators=(",", ":")).encode()))
    return outputs


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if CASE == "stateless-json":
        run_stream(stateless_json)
    elif CASE == "wordcount":
        run_stream(wordcount)
    elif CASE == "materialise":
        materialise()
    elif CASE == "windowed":
        run_stream(windowed)
    else:
        print(f"raw: unknown case {CASE!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
