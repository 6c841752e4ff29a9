"""What ``history=True`` costs the wordcount's count flow: its throughput with and without
history, runs interleaved (off, on, on, off, ...) so that drift on a shared machine falls on
both sides alike.

    .venv/bin/python scripts/history_cost.py                 # 300,000 words, 3 pairs of runs
    .venv/bin/python scripts/history_cost.py --words 500000 --pairs 2

Needs Kafka and PostgreSQL (``FLOWS_BOOTSTRAP_SERVERS``, ``FLOWS_DATABASE_URL``). The words
of ``examples/wordcount/sample.txt``, repeated, go once into a fresh 4-partition topic keyed
by word; each run is ``flows run --until-idle`` of an app holding only the example's count
flow (its ``count`` function, JSON states) under a fresh name, so a fresh group and fresh
tables. A run's time is from its first commit to the commit of the last word, by polling
PostgreSQL's watermarks every 50 ms. Tables are dropped after each run. Run it from a
checkout to measure that checkout (``PYTHONPATH=<checkout>``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin does not re-export it for mypy

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 4

APP = """
from examples.wordcount.app import count
from flows import JSON, STR, App, StatefulMap, Topic

words = Topic("{words}", key_format=STR, value_format=STR, partitions={partitions})
counts = Topic("{counts}", key_format=STR, value_format=STR, partitions={partitions})
app = App("{name}", [
    StatefulMap(name="count", source=words, sink=counts, fn=count, state_format=JSON,
                history={history}),
])
"""


def _words(total: int) -> list[str]:
    text = (REPO / "examples" / "wordcount" / "sample.txt").read_text().lower()
    vocabulary = re.findall(r"[^\W_]+", text)
    return [vocabulary[i % len(vocabulary)] for i in range(total)]


def _produce(bootstrap: str, topic: str, words: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=60)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "partitioner": "murmur2_random"}
    )
    for word in words:
        while True:
            try:
                producer.produce(topic, word.encode(), word.encode())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)


def _run(
    engine: sa.Engine, env: dict[str, str], words: str, total: int, history: bool
) -> dict[str, Any]:
    name = f"hc{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "app.py"
        app.write_text(
            APP.format(
                words=words,
                counts=f"{name}-counts",
                name=name,
                partitions=PARTITIONS,
                history=history,
            )
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "runtimes.cli", "run", str(app), "--until-idle", "3"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        query = sa.text(
            "SELECT coalesce(sum(next_offset), 0) FROM flows_offsets WHERE group_id = :g"
        )
        first = done = None
        while done is None:
            with engine.connect() as conn:
                moved = int(conn.execute(query, {"g": f"{name}.count"}).scalar_one())
            now = time.monotonic()
            if moved and first is None:
                first = (now, moved)
            if moved >= total:
                done = now
            if process.poll() is not None and done is None:
                raise RuntimeError(process.stderr.read().decode()[-3000:] if process.stderr else "")
            time.sleep(0.05)
        process.wait(timeout=120)
    assert first is not None
    seconds = done - first[0]
    result: dict[str, Any] = {
        "name": name,
        "history": history,
        "seconds": round(seconds, 2),
        "words_per_second": round((total - first[1]) / seconds),
    }
    tables = [f"{name}_count_state", f"{name}_count_state_history"]
    with engine.begin() as conn:
        if history:
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {tables[1]}")).scalar_one()
            size = conn.execute(
                sa.text("SELECT pg_total_relation_size(:t)"), {"t": tables[1]}
            ).scalar_one()
            result.update(history_rows=rows, history_bytes_per_row=round(size / max(rows, 1)))
        for table in tables:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(
            sa.text("DELETE FROM flows_offsets WHERE group_id = :g"), {"g": f"{name}.count"}
        )
        conn.execute(
            sa.text("DELETE FROM flows_pending WHERE group_id = :g"), {"g": f"{name}.count"}
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=300_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    bootstrap = os.environ.get("FLOWS_BOOTSTRAP_SERVERS", "localhost:9092")
    url = os.environ.get(
        "FLOWS_DATABASE_URL", "postgresql://postgres:postgres@localhost:5432/flows"
    )
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    env = {**os.environ, "FLOWS_HTTP_PORT": "0", "PYTHONPATH": str(REPO)}
    topic = f"hc-words-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, topic, _words(args.words))
    runs = []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for history in order:
            runs.append(_run(engine, env, topic, args.words, history))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    off = [r["words_per_second"] for r in runs if not r["history"]]
    on = [r["words_per_second"] for r in runs if r["history"]]
    made = [topic] + [f"{r.pop('name')}-counts" for r in runs]
    AdminClient({"bootstrap.servers": bootstrap}).delete_topics(made)
    summary = {
        "words": args.words,
        "runs": runs,
        "median_words_per_second": {"off": statistics.median(off), "on": statistics.median(on)},
        "history_cost": f"{1 - statistics.median(on) / statistics.median(off):.1%}",
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
