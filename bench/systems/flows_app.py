"""The flows side of every case: one app file for ``flows run``, chosen by ``BENCH_CASE``.

Names come from the environment so that runs never collide: ``BENCH_APP`` names the app
(and so its consumer groups and state tables), ``BENCH_IN``/``BENCH_OUT`` the topics,
``BENCH_TABLE`` the materialised table. ``wordcount`` is ``examples/wordcount`` itself (its
functions and flows) with these names in place of the example's: split and count (lines in,
counts out, like the peers), plus its store flow in the ``eos-table`` variant;
``BENCH_ENCRYPT=1`` gives its count flow ``encrypt=True`` (keys from ``FLOWS_STATE_KEYS``),
to measure what encryption at rest costs. ``windowed``
is one :class:`~flows.Window`: a per-user count per one-minute tumbling window of the ``ts``
field, final results only, its window rows in ``BENCH_TABLE``. ``count`` (the failover and
keyspace cases) is wordcount's count flow alone over keyed records: a running count per
record key in PostgreSQL, out as ``"<count> <the input's value>"`` (the value carries the
failover case's marker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from examples.wordcount.app import WordCount, count, split, to_row
from flows import (
    JSON,
    STR,
    App,
    Explode,
    Map,
    Materialise,
    Record,
    StatefulMap,
    Topic,
    Tumbling,
    Window,
)

env = os.environ
CASE = env["BENCH_CASE"]
NAME = env["BENCH_APP"]
PARTITIONS = int(env.get("BENCH_PARTITIONS", "4"))
EOS = env.get("BENCH_MODE", "alos") == "eos"


def shout(record: Record[bytes | None, Any]) -> Any:
    value = record.value
    value["user"] = value["user"].upper()
    return value


def event_time(record: Record[str, Any]) -> int:
    return int(record.value["ts"])


def tally(record: Record[str, str], state: int | None) -> tuple[str, int]:
    """The key's running count, and the input's value after it (the failover marker)."""
    total = (state or 0) + 1
    return f"{total} {record.value}", total


def build() -> App:
    if CASE == "stateless-json":
        source = Topic(env["BENCH_IN"], value_format=JSON, partitions=PARTITIONS)
        sink = Topic(env["BENCH_OUT"], value_format=JSON, partitions=PARTITIONS)
        return App(NAME, [Map(name="shout", source=source, sink=sink, fn=shout, exactly_once=EOS)])
    if CASE == "wordcount":
        lines = Topic(env["BENCH_IN"], value_format=STR, partitions=PARTITIONS)
        words = Topic(
            f"{env['BENCH_OUT']}.words", key_format=STR, value_format=STR, partitions=PARTITIONS
        )
        counts = Topic(env["BENCH_OUT"], key_format=STR, value_format=STR, partitions=PARTITIONS)
        # the example's row dataclass under this run's table name (a subclass keeps its fields)
        table = type("BenchWordCount", (WordCount,), {"__tablename__": env["BENCH_TABLE"]})
        wired = [
            Explode(name="split", source=lines, sink=words, fn=split, exactly_once=True),
            StatefulMap(
                name="count",
                source=words,
                sink=counts,
                fn=count,
                state_format=JSON,
                encrypt=env.get("BENCH_ENCRYPT") == "1",
            ),
        ]
        if env.get("BENCH_VARIANT") == "eos-table":  # the example as shipped
            wired.append(Materialise(name="store", source=counts, table=table, fn=to_row))
        return App(NAME, wired)
    if CASE == "materialise":

        @dataclass
        class Row:
            __tablename__ = env["BENCH_TABLE"]
            id: str = field(metadata={"primary_key": True})
            seq: int = 0
            name: str = ""
            amount: float = 0.0
            qty: int = 0

        source = Topic(env["BENCH_IN"], value_format=JSON, partitions=PARTITIONS)
        return App(
            NAME,
            [Materialise(name="store", source=source, table=Row, fn=lambda record: record.value)],
        )
    if CASE == "windowed":
        events = Topic(env["BENCH_IN"], key_format=STR, value_format=JSON, partitions=PARTITIONS)
        results = Topic(env["BENCH_OUT"], key_format=STR, value_format=JSON, partitions=PARTITIONS)
        per_minute = Window(
            name="per_minute",
            source=events,
            sink=results,
            window=Tumbling(timedelta(milliseconds=int(env["BENCH_WINDOW_MS"]))),
            timestamp=event_time,
            initial=lambda: 0,
            fn=lambda record, acc: acc + 1,
            emit="final",
            table=env["BENCH_TABLE"],
        )
        return App(NAME, [per_minute])
    if CASE == "count":
        keyed = Topic(env["BENCH_IN"], key_format=STR, value_format=STR, partitions=PARTITIONS)
        counted = Topic(env["BENCH_OUT"], key_format=STR, value_format=STR, partitions=PARTITIONS)
        return App(
            NAME,
            [StatefulMap(name="count", source=keyed, sink=counted, fn=tally, state_format=JSON)],
        )
    raise SystemExit(f"flows bench app: unknown case {CASE!r}")


app = build()
