"""The Faust (faust-streaming) side of the cases it has an answer for, as its docs show.

An app per run (its id is the consumer group), agents over topics, ``await topic.send``;
word counts as in Faust's own word-count example: one agent splits lines and sends each
word keyed by itself to an intermediate topic, a second counts them in a ``Table``
(in-memory store with its changelog topic: the RocksDB store needs a native build).
``BENCH_MODE=eos`` sets ``processing_guarantee="exactly_once"``. Faust has no PostgreSQL
sink, so ``materialise`` is not run for it.

Deviations from the defaults: ``consumer_auto_offset_reset="earliest"`` (the input is
produced first), ``broker_commit_interval=1.0`` (default 2.8 s), no web server (``--without-web``).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import faust

env = os.environ
CASE = env["BENCH_CASE"]
MODE = env.get("BENCH_MODE", "alos")
PARTITIONS = int(env.get("BENCH_PARTITIONS", "4"))
WORD = re.compile(r"[^\W_]+")

app = faust.App(
    env["BENCH_GROUP"],
    broker=f"kafka://{env['BENCH_BOOTSTRAP']}",
    store="memory://",
    processing_guarantee="exactly_once" if MODE == "eos" else "at_least_once",
    topic_partitions=PARTITIONS,
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=1.0,
    datadir=env.get("BENCH_STATE_DIR", "faust-data"),
)

if CASE == "stateless-json":
    source = app.topic(env["BENCH_IN"], key_serializer="raw", value_serializer="json")
    sink = app.topic(env["BENCH_OUT"], key_serializer="raw", value_serializer="json")

    @app.agent(source)
    async def shout(stream: Any) -> None:
        async for event in stream.events():
            value = event.value
            value["user"] = value["user"].upper()
            await sink.send(key=event.key, value=value)

elif CASE == "wordcount":
    lines = app.topic(env["BENCH_IN"], key_serializer="raw", value_type=str, value_serializer="raw")
    words = app.topic(
        f"{env['BENCH_OUT']}.words",
        key_type=str,
        value_type=str,
        key_serializer="raw",
        value_serializer="raw",
        partitions=PARTITIONS,
    )
    counts = app.topic(env["BENCH_OUT"], key_serializer="raw", value_serializer="raw")
    table = app.Table("word_counts", default=int, partitions=PARTITIONS)

    @app.agent(lines)
    async def split(stream: Any) -> None:
        async for line in stream:
            text = line.decode() if isinstance(line, bytes) else line
            for word in WORD.findall(text.lower()):
                await words.send(key=word, value=word)

    @app.agent(words)
    async def count(stream: Any) -> None:
        async for received in stream:
            word = received.decode() if isinstance(received, bytes) else received
            table[word] += 1
            await counts.send(key=word, value=str(table[word]))

else:
    print(f"faust: no {CASE!r} case (Faust has no PostgreSQL sink)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()
