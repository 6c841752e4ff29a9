"""Helpers shared by integration, fault and example tests: run the CLI, produce, consume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

FLOWS = [sys.executable, "-m", "runtimes.cli"]
#: ``flows run`` with a store that kills or pauses the process (tests/faults/crashing_worker.py)
CRASHING_WORKER = [sys.executable, "-m", "tests.faults.crashing_worker"]
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


#: every process start_cli started in this test session, so that a test that fails before
#: it kills its worker does not leave it running into the next test (conftest kills them)
STARTED: list[subprocess.Popen[bytes]] = []


def start_cli(
    args: Iterable[str], env: Mapping[str, str], log: Path, command: Sequence[str] = FLOWS
) -> subprocess.Popen[bytes]:
    """Starts ``flows ARGS`` (or ``command ARGS``) in the background, its output in ``log``."""
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [*command, *args], env=dict(env), stdout=handle, stderr=subprocess.STDOUT, cwd=REPO
        )
    STARTED.append(process)
    return process


def kill_started() -> None:
    """SIGKILLs and reaps every process start_cli started that is still running."""
    while STARTED:
        kill(STARTED.pop())


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
                headers: Any = message.headers() or ()
                found.append(
                    Consumed(
                        message.partition() or 0,
                        message.offset() or 0,
                        message.key(),
                        message.value(),
                        tuple(headers),
                    )
                )
            if messages:
                last = time.monotonic()
            elif time.monotonic() - last > idle and (expected is None or len(found) >= expected):
                break
    finally:
        consumer.close()
    return sorted(found, key=lambda c: (c.partition, c.offset))


def wait_until(
    condition: object,
    timeout: float,
    what: str,
    *,
    logs: Sequence[Path] = (),
    details: Callable[[], str] | None = None,
) -> None:
    """Polls ``condition`` every 0.2 s until it is true; on timeout fails naming ``what``,
    with what ``details`` says then and the last lines of each of ``logs`` (the workers'
    logs say why it never came)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    tails = (f"\n{details()}" if details is not None else "") + "".join(
        f"\n--- last lines of {log} ---\n{log.read_text()[-4000:]}" for log in logs if log.exists()
    )
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{tails}")


def stopped(process: subprocess.Popen[bytes]) -> bool:
    """True while ``process`` is stopped by a signal (Linux: its state in /proc is T)."""
    stat = Path(f"/proc/{process.pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


# --- what the workers log and commit -------------------------------------------------------

#: ``"<step> assigned <topic>[<p>], ..."`` and ``"<step> revoked ..."`` (flows/engine/worker.py,
#: the rebalance callbacks; "nothing" for an empty list)
_REBALANCE = re.compile(r" (?P<step>[\w.-]+) (?P<what>assigned|revoked) (?P<parts>.+)$")
#: ``"<step> lost a partition to another worker (<error>); rejoining"``: a fencing error;
#: the worker then starts over with fresh clients and no partitions
_FENCED = re.compile(r" (?P<step>[\w.-]+) lost a partition to another worker \(.*\); rejoining$")
#: ``"<step> re-emits <n> stored outputs of <topic>[<p>] <C>..<W>, ..."`` (recovery)
_REEMITS = re.compile(
    r" (?P<step>[\w.-]+) re-emits (?P<count>\d+) stored outputs .*?: (?P<parts>.+)$"
)
_PARTITION = re.compile(r"(?P<topic>[\w.-]+)\[(?P<partition>\d+)\]")
_RANGE = re.compile(r"(?P<topic>[\w.-]+)\[(?P<partition>\d+)\] offsets (?P<c>\d+) to (?P<w>\d+)")


def owned_partitions(log_text: str, step: str) -> set[tuple[str, int]]:
    """The partitions ``step`` holds at the end of ``log_text``, replayed from its
    assigned, revoked and fencing lines."""
    owned: set[tuple[str, int]] = set()
    for line in log_text.splitlines():
        if (fenced := _FENCED.search(line)) and fenced["step"] == step:
            owned.clear()
            continue
        match = _REBALANCE.search(line)
        if match is None or match["step"] != step:
            continue
        parts = {(p["topic"], int(p["partition"])) for p in _PARTITION.finditer(match["parts"])}
        if match["what"] == "assigned":
            owned |= parts
        else:
            owned -= parts
    return owned


def fenced_lines(log_text: str, step: str) -> list[str]:
    """The lines where ``step`` logged a fencing error."""
    return [
        line
        for line in log_text.splitlines()
        if (match := _FENCED.search(line)) and match["step"] == step
    ]


def reemitted(log_text: str, step: str) -> tuple[int, list[tuple[str, int, int, int]]]:
    """What ``step`` re-emitted on recovery: the number of outputs, and each partition as
    (topic, partition, Kafka's committed offset C or 0 when there is none, PostgreSQL's
    watermark W), in log order."""
    count, ranges = 0, []
    for line in log_text.splitlines():
        match = _REEMITS.search(line)
        if match is None or match["step"] != step:
            continue
        count += int(match["count"])
        ranges += [
            (r["topic"], int(r["partition"]), int(r["c"]), int(r["w"]))
            for r in _RANGE.finditer(match["parts"])
        ]
    return count, ranges


def committed_metadata(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int, str]]:
    """Kafka's committed offset of ``group`` on each partition of ``topic`` (negative: none)
    and the metadata committed with it (a timed step's commit sequence; "" when none).

    The consumer only asks the group coordinator; it never joins the group."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    # read_uncommitted: a read_committed fetch asks for stable offsets only, and waits (past
    # its timeout) while a killed worker's transaction still holds offsets of the group
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
    finally:
        consumer.close()
    return {tp.partition: (tp.offset, tp.metadata or "") for tp in found}


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Kafka's committed offset of ``group`` on each partition of ``topic`` (negative: none)."""
    return {p: offset for p, (offset, _) in committed_metadata(bootstrap, group, topic).items()}


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    """The high watermark (the next offset to be written) of each partition of ``topic``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "flows-tests-reader"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def database_sessions(engine: sa.Engine) -> str:
    """What every other session of the database is doing (a fault test's failure message:
    a worker blocked on a lock shows here)."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT pid, state, wait_event_type, wait_event, "
                "now() - xact_start AS in_transaction, left(query, 200) AS query "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ).all()
    return "database sessions:\n" + "\n".join(str(tuple(row)) for row in rows)


def stored_watermarks(engine: sa.Engine, group: str, topic: str) -> dict[int, int]:
    """PostgreSQL's watermark of ``group`` on each partition of ``topic`` that has one
    (none before the first worker created the bookkeeping tables)."""
    if not sa.inspect(engine).has_table("flows_offsets"):
        return {}
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT partition, next_offset FROM flows_offsets "
                "WHERE group_id = :group AND topic = :topic"
            ),
            {"group": group, "topic": topic},
        ).all()
    return {int(partition): int(offset) for partition, offset in rows}


def stored_sequences(engine: sa.Engine, group: str, topic: str) -> dict[int, tuple[int, int]]:
    """PostgreSQL's watermark and commit sequence (timed steps) of ``group`` on each
    partition of ``topic`` that has a watermark."""
    if not sa.inspect(engine).has_table("flows_offsets"):
        return {}
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT partition, next_offset, seq FROM flows_offsets "
                "WHERE group_id = :group AND topic = :topic"
            ),
            {"group": group, "topic": topic},
        ).all()
    return {int(partition): (int(offset), int(seq)) for partition, offset, seq in rows}
