"""A latency run: how long a record takes through a system under a steady offered load.

A latency run starts the system, waits until it is consuming, sends warm-up records, then
offers ``rate`` records/s for ``seconds`` from a producer thread whose keys carry the send
time (ns); a consumer of the output computes receive time minus send time.

Latencies are reported as p50, p90, p99 and max (ms), with the rate actually offered; a
system that falls behind is "saturated" (its latencies are those of what arrived). :func:`run`
is what :class:`bench.harness.Harness` calls for ``stateless-json-latency``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import data
from bench.measure import Child
from bench.runs import Result

if TYPE_CHECKING:
    from bench.harness import Harness


def run(h: Harness, result: Result, log: Path) -> None:
    o = h.o
    group, out, _ = h.names(result)
    source = f"{group}-in"
    h.broker.create_topics([source], o.partitions)
    h.topics.add(source)
    total = int(o.latency_rate * o.latency_seconds)
    result.input_records = result.outputs_expected = total
    child, watched, _ = h.start(result, log, source, out)
    try:
        _offer_load(h, result, child, watched, source, out, total)
    finally:
        end = child.stop()
        result.exit_code = end.code
        result.cpu_total_s = round(end.cpu_total_s, 2)
        result.peak_rss_mb = round(child.peak_rss_mb(), 1) or None


def _offer_load(
    h: Harness, result: Result, child: Child, group: str, source: str, sink: str, total: int
) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    o = h.o
    deadline = time.monotonic() + min(o.timeout, 180)
    while not h.broker.group_active(group):
        if child.poll() is not None or time.monotonic() > deadline:
            result.status = "failed" if child.poll() is not None else "timeout"
            result.error = f"the system never started consuming:\n{child.tail()}"
            return
        time.sleep(0.1)
    latencies: list[int] = []
    warm = threading.Event()
    done = threading.Event()
    stop = threading.Event()

    def consume() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": o.bootstrap,
                "group.id": f"{sink}-lat",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 5,
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(sink, p, 0) for p in range(o.partitions)])
        try:
            while not stop.is_set():
                # consume(n, timeout) waits out its timeout until it has n records: the
                # first of them would be timed up to 50 ms late. What is fetched is read
                # at once; otherwise the wait is for one record only.
                messages = consumer.consume(1000, 0) or consumer.consume(1, 0.05)
                received = time.time_ns()
                for message in messages:
                    key = message.key()
                    if message.error() is not None or not key:
                        continue
                    if key.startswith(b"w"):
                        warm.set()
                    else:
                        latencies.append(received - int(key))
                if len(latencies) >= total:
                    done.set()
        finally:
            consumer.close()

    reader = threading.Thread(target=consume, name="latency-consumer", daemon=True)
    reader.start()
    producer = Producer(
        {
            "bootstrap.servers": o.bootstrap,
            "linger.ms": 1,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
        }
    )
    rng = random.Random(o.seed)
    try:
        warm_until = time.monotonic() + 60
        while not warm.is_set() and time.monotonic() < warm_until:  # warm-up records
            for i in range(10):
                value = json.dumps(data.json_record(rng, i), separators=(",", ":"))
                producer.produce(source, value.encode(), f"w{i}".encode())
            producer.flush(5)
            warm.wait(1.0)
        if not warm.is_set():
            result.status = "failed"
            result.error = f"no warm-up record came through in 60 s:\n{child.tail()}"
            return
        values = [
            json.dumps(data.json_record(rng, i), separators=(",", ":")).encode()
            for i in range(min(total, 10000))
        ]
        cpu_before, started = child.cpu(), time.monotonic()
        tick = 0.005
        per_tick = max(1, round(o.latency_rate * tick))
        sent = 0
        while sent < total:
            due = started + sent / o.latency_rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            for _ in range(min(per_tick, total - sent)):
                producer.produce(source, values[sent % len(values)], str(time.time_ns()).encode())
                sent += 1
            producer.poll(0)
        producer.flush(30)
        offered = time.monotonic() - started
        done.wait(max(30.0, o.latency_seconds))
        result.cpu_s = round(child.cpu() - cpu_before, 2)
        result.wall_s = round(offered, 3)
    finally:
        stop.set()
        reader.join(10)
    result.outputs_seen = len(latencies)
    code = child.poll()
    if code is not None:
        result.status = "failed"
        result.error = (
            f"{result.system} exited with {code} under load ({len(latencies)} of "
            f"{total} outputs arrived):\n{child.tail()}"
        )
    elif len(latencies) < total:
        result.status = "saturated"
        result.error = (
            f"could not keep up with {o.latency_rate:,} records/s: {len(latencies)} of "
            f"{total} outputs arrived by 30 s after the load ended (latencies of those)"
        )
    if latencies:
        ordered = sorted(latencies)

        def pct(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 2)

        result.latency_ms = {
            "p50": pct(0.50),
            "p90": pct(0.90),
            "p99": pct(0.99),
            "max": round(ordered[-1] / 1e6, 2),
            "offered_per_s": round(total / result.wall_s, 1) if result.wall_s else 0.0,
        }
        if result.cpu_s is not None:
            result.cpu_s_per_million = round(result.cpu_s / total * 1e6, 2)
