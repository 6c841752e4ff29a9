"""Helpers shared by integration, fault and example tests: run the CLI, produce, consume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

FLOWS = [sys.executable, "-m", "runtimes.cli"]
REPO = Path(__file__).resolve().parent.parent


def flows_env(bootstrap: str, database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # several workers run side by side in tests: no HTTP server unless a test asks for one
    env.update(
        {
            "FLOWS_BOOTSTRAP_SERVERS": bootstrap,
            "FLOWS_DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
            "FLOWS_HTTP_PORT": "0",
        }
    )
    env.update(extra)
    return env


def run_cli(
    args: Iterable[str], env: Mapping[str, str], timeout: float = 300, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``flows ARGS`` to its end; the caller checks the return code."""
    return subprocess.run(
        [*FLOWS, *args],
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def start_cli(args: Iterable[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Starts ``flows ARGS`` in the background, its output in ``log``."""
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*FLOWS, *args], env=dict(env), stdout=handle, stderr=subprocess.STDOUT, cwd=REPO
        )


def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=60)


def write_app(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
) -> int:
    """Produces (key, value) pairs with an idempotent producer; returns how many."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "partitioner": "murmur2_random",
        }
    )
    count = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    assert producer.flush(60) == 0
    return count


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    committed_only: bool = True,
    expected: int | None = None,
    idle: float = 3.0,
    timeout: float = 120.0,
) -> list[Consumed]:
    """Every record of ``topic`` (read_committed by default), in partition/offset order.

    Stops once ``idle`` seconds pass without a record (after ``expected`` records, when
    given, so a slow start is not mistaken for the end), or at ``timeout``.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "flows-tests-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    found: list[Consumed] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            messages = consumer.consume(5000, 0.5)
            for message in messages:
                if message.error():
                    continue
                found.append(
                    Consumed(
                        message.partition(),
                        message.offset(),
                        message.key(),
                        message.value(),
                        tuple(message.headers() or ()),
                    )
                )
            if messages:
                last = time.monotonic()
            elif time.monotonic() - last > idle and (expected is None or len(found) >= expected):
                break
    finally:
        consumer.close()
    return sorted(found, key=lambda c: (c.partition, c.offset))


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
