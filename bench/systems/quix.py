"""The Quix Streams side of every case, written as its documentation shows.

``Application`` with a consumer group per run, ``app.dataframe(topic)``, ``sdf.apply``;
word counts re-keyed with ``group_by`` and counted with ``apply(..., stateful=True)``
(RocksDB state with its changelog topic, the default); rows written by the community
``PostgreSQLSink`` with ``upsert_on_primary_key``. ``BENCH_MODE=eos`` sets
``processing_guarantee="exactly-once"``. ``windowed`` is
``sdf.tumbling_window(timedelta(minutes=1)).count().final()`` with the topic's
``timestamp_extractor`` reading the ``ts`` field (the event time flows uses), results
``{"start", "end", "value"}`` to the sink as JSON. ``final()`` closes windows by key
(its default); ``BENCH_QUIX_CLOSING=partition`` closes them by partition stream time, as
flows does. The input closes every expected window under both rules. ``count`` (the
failover and keyspace cases) is ``sdf.apply(tally, stateful=True)`` on keyed records (no
``group_by``: the input's key is the state key): a running count per key in RocksDB,
restored from its changelog topic by a replacement, out as ``"<count> <the input's value>"``.

Deviations from the defaults, the same for every case: ``auto_offset_reset="earliest"``
(the input is produced before the app starts) and ``commit_interval=1.0`` (default 5 s):
a run's last checkpoint would otherwise add up to 5 s to a run of a few seconds.
``BENCH_SESSION_TIMEOUT_MS`` (the failover case) sets the consumer's ``session.timeout.ms``:
the bench waits for a killed worker's session to end before it starts the replacement.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import timedelta
from typing import Any

from quixstreams import Application, State
from quixstreams.models import TimestampType

env = os.environ
CASE = env["BENCH_CASE"]
MODE = env.get("BENCH_MODE", "alos")
WORD = re.compile(r"[^\W_]+")


def shout(value: dict[str, Any]) -> dict[str, Any]:
    value["user"] = value["user"].upper()
    return value


def words(line: str) -> list[str]:
    return WORD.findall(line.lower())


def count(word: str, state: State) -> str:
    total = state.get("count", 0) + 1
    state.set("count", total)
    return str(total)


def tally(value: str, state: State) -> str:
    total = state.get("count", 0) + 1
    state.set("count", total)
    return f"{total} {value}"


def event_time(value: Any, _headers: Any, _timestamp: float, _timestamp_type: TimestampType) -> int:
    return int(value["ts"])


def main() -> int:
    app = Application(
        broker_address=env["BENCH_BOOTSTRAP"],
        consumer_group=env["BENCH_GROUP"],
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once" if MODE == "eos" else "at-least-once",
        commit_interval=1.0,
        state_dir=env.get("BENCH_STATE_DIR", "state"),
        loglevel=env.get("BENCH_LOGLEVEL", "WARNING"),
        consumer_extra_config=(
            {"session.timeout.ms": int(env["BENCH_SESSION_TIMEOUT_MS"])}
            if env.get("BENCH_SESSION_TIMEOUT_MS")
            else None
        ),
    )
    if CASE == "stateless-json":
        source = app.topic(env["BENCH_IN"], key_deserializer="bytes", value_deserializer="json")
        sink = app.topic(env["BENCH_OUT"], key_serializer="bytes", value_serializer="json")
        sdf = app.dataframe(source)
        sdf = sdf.apply(shout)
        sdf.to_topic(sink)
    elif CASE == "wordcount":
        source = app.topic(env["BENCH_IN"], key_deserializer="bytes", value_deserializer="str")
        sink = app.topic(env["BENCH_OUT"], key_serializer="str", value_serializer="str")
        sdf = app.dataframe(source)
        sdf = sdf.apply(words, expand=True)
        sdf = sdf.group_by(lambda word: word, name="word")
        sdf = sdf.apply(count, stateful=True)
        sdf.to_topic(sink)
    elif CASE == "materialise":
        from quixstreams.sinks.community.postgresql import PostgreSQLSink

        source = app.topic(env["BENCH_IN"], key_deserializer="str", value_deserializer="json")
        sink = PostgreSQLSink(
            host=env["BENCH_DB_HOST"],
            port=int(env["BENCH_DB_PORT"]),
            dbname=env["BENCH_DB_NAME"],
            user=env["BENCH_DB_USER"],
            password=env["BENCH_DB_PASSWORD"],
            table_name=env["BENCH_TABLE"],
            primary_key_columns="id",
            upsert_on_primary_key=True,
            include_metadata=False,
        )
        sdf = app.dataframe(source)
        sdf.sink(sink)
    elif CASE == "windowed":
        source = app.topic(
            env["BENCH_IN"],
            key_deserializer="str",
            value_deserializer="json",
            timestamp_extractor=event_time,
        )
        sink = app.topic(env["BENCH_OUT"], key_serializer="str", value_serializer="json")
        sdf = app.dataframe(source)
        window = sdf.tumbling_window(timedelta(milliseconds=int(env["BENCH_WINDOW_MS"])))
        sdf = window.count().final(closing_strategy=env.get("BENCH_QUIX_CLOSING", "key"))
        sdf.to_topic(sink)
    elif CASE == "count":
        source = app.topic(env["BENCH_IN"], key_deserializer="str", value_deserializer="str")
        sink = app.topic(env["BENCH_OUT"], key_serializer="str", value_serializer="str")
        sdf = app.dataframe(source)
        sdf = sdf.apply(tally, stateful=True)
        sdf.to_topic(sink)
    else:
        print(f"quix: unknown case {CASE!r}", file=sys.stderr)
        return 2
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
