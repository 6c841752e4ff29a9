"""The examples, end to end against the real broker and database, as a user runs them."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from examples.orders.app import CUSTOMER_TOTAL, ORDER
from flows.partitioning import partition_for
from tests.helpers import REPO, Consumed, consume_all, flows_env, produce, run_cli
from tests.window_check import _mismatch, produce_partitioned
from tests.window_simulation import Incoming, SessionWindows, Spec, TumblingWindows, simulate
from tests.wordcount_check import check_output, expected_counts, table_counts, text_lines


def test_uppercase_reflects_every_line(bootstrap_servers: str, database_url: str) -> None:
    env = flows_env(bootstrap_servers, database_url)
    assert run_cli(["reset", "uppercase", "--yes"], env).returncode == 0
    lines = [f"line number {i} " + "x" * (i % 60) for i in range(2000)] + ["   "]
    produce(
        bootstrap_servers,
        "uppercase-input",
        ((f"k{i}".encode(), v.encode()) for i, v in enumerate(lines)),
    )
    done = run_cli(["run", "uppercase", "--until-idle", "3"], env)
    assert done.returncode == 0, done.stderr
    out = consume_all(bootstrap_servers, "uppercase-output", expected=2000)
    assert sorted((r.value or b"").decode() for r in out) == sorted(
        v.strip().upper() for v in lines[:-1]
    )
    long = consume_all(bootstrap_servers, "uppercase-long", expected=1)
    assert sorted((r.value or b"").decode() for r in long) == sorted(
        v for v in lines if len(v) > 40
    )


def test_wordcount_counts_exactly(
    bootstrap_servers: str, database_url: str, engine: sa.Engine
) -> None:
    env = flows_env(bootstrap_servers, database_url)
    assert run_cli(["reset", "wordcount", "--yes"], env).returncode == 0
    lines = text_lines(3000, seed=99)
    lines += (REPO / "examples/wordcount/sample.txt").read_text().splitlines()
    produce(bootstrap_servers, "word-count-input", ((None, line.encode()) for line in lines))
    # malformed input never stops the flow and never touches a count
    produce(bootstrap_servers, "word-count-input", [(None, b"\xff\xfe caf\xc3"), (None, None)])
    done = run_cli(["run", "wordcount", "--until-idle", "5"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_counts(lines)
    assert table_counts(engine) == expected
    # the count flow's own state table answers plain SQL: TEXT keys, JSONB numbers
    with engine.connect() as conn:
        states = conn.execute(sa.text("SELECT key, value FROM wordcount_count_state")).all()
        the = conn.execute(
            sa.text("SELECT value FROM wordcount_count_state WHERE key = 'the'")
        ).scalar_one()
        history = conn.execute(
            sa.text(
                "SELECT key, array_agg(value::int ORDER BY id) FROM wordcount_count_state_history"
                " GROUP BY key"
            )
        ).all()
    assert dict(states) == expected
    assert the == expected["the"] > 0
    # the history of each word lists each of its counts once, in order
    assert dict(history) == {word: list(range(1, n + 1)) for word, n in expected.items()}
    check_output(
        consume_all(bootstrap_servers, "word-count-output", expected=sum(expected.values())),
        expected,
    )
    dead = consume_all(bootstrap_servers, "word-count-input.dlq", expected=2)
    assert len(dead) == 2
    assert {dict(d.headers)["flows.flow"] for d in dead} == {b"split"}


# --- pageviews -----------------------------------------------------------------------------

MINUTE = 60_000
PAGES = ("/home", "/about", *(f"/products/{i}" for i in range(8)))


def _page_views(seed: int, now: int) -> list[tuple[str, dict[str, Any]]]:
    """(user, view) pairs in production order: 300 users (a few hot), 3,000 views over
    about two hours of event time ending 35 minutes before ``now``, each a few seconds
    behind the clock, about 3 % minutes behind it (late for their minute, whose 10 s of
    grace have passed), with carts, checkouts and error pages.

    The last views are 35 minutes old, not fresher: a session closes 30 minutes after its
    last view, by stream time, which a quiet partition's idle advance moves to the wall
    clock; fresher views would hold ``--until-idle`` until then."""
    rng = random.Random(seed)
    users = [f"u{i:03d}" for i in range(300)]
    weights = [1 / (i + 1) ** 0.6 for i in range(len(users))]
    clock = now - 155 * MINUTE
    views = []
    for _ in range(3_000):
        clock += rng.randint(0, 4_000)
        user = rng.choices(users, weights)[0]
        draw = rng.random()
        page = (
            "/cart/add"
            if draw < 0.06
            else "/checkout"
            if draw < 0.09
            else rng.choice(("/error/500", "/error/404"))
            if draw < 0.16
            else rng.choice(PAGES)
        )
        behind = rng.randint(70_000, 300_000) if rng.random() < 0.03 else rng.randint(0, 3_000)
        views.append((user, {"user": user, "page": page, "ts": clock - behind}))
    assert clock < now - 35 * MINUTE
    return views


def _expected_alerts(views: Sequence[Incoming]) -> list[dict[str, Any]]:
    """The alerts of one input partition, from the app's docstring and the timer contract
    (flows/timers.py): stream time is the largest ``ts`` so far; a view that moves it first
    fires the timers due by it; an ``/error`` view alerts unless muted and mutes its user
    until the ``unmute`` timer, 1 minute later, fires; ``/cart/add`` (re)sets a timer 30
    minutes later that ``/checkout`` cancels and that alerts when it fires; a timer set in
    the past fires right after its view."""
    stream_time: int | None = None
    timers: dict[tuple[str, str], int] = {}
    muted: set[str] = set()
    alerts: list[dict[str, Any]] = []

    def fire() -> None:
        for (user, name), due in sorted(timers.items()):
            if stream_time is None or due > stream_time:
                continue
            del timers[user, name]
            if name == "unmute":
                muted.discard(user)
            else:
                alerts.append({"user": user, "alert": "abandoned-cart", "ts": due})

    for view in views:
        user, page, ts = view.value["user"], view.value["page"], view.timestamp
        if stream_time is None or ts > stream_time:
            stream_time = ts
            fire()
        if page == "/cart/add":
            timers[user, "abandoned-cart"] = ts + 30 * MINUTE
        elif page == "/checkout":
            timers.pop((user, "abandoned-cart"), None)
        elif page.startswith("/error") and user not in muted:
            timers[user, "unmute"] = ts + MINUTE
            muted.add(user)
            alerts.append({"user": user, "alert": "errors", "page": page, "ts": ts})
        fire()
    return alerts


def _flow_of(record: Consumed) -> bytes | None:
    return dict(record.headers).get("flows.flow")


def _sorted(items: Iterable[Any]) -> list[Any]:
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def test_pageviews_follows_its_contract(bootstrap_servers: str, database_url: str) -> None:
    started = time.monotonic()
    env = flows_env(bootstrap_servers, database_url)
    reset = run_cli(["reset", "pageviews", "--yes"], env)
    assert reset.returncode == 0, reset.stderr[-3000:]
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    partitions = len(admin.list_topics("pageviews", timeout=10).topics["pageviews"].partitions)
    views = _page_views(seed=20261208, now=int(time.time() * 1000))
    rows: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(partitions)}
    for user, view in views:  # each user in its murmur2 partition, as the default partitioner
        rows[partition_for(user.encode(), partitions)].append(
            (user.encode(), json.dumps(view).encode())
        )
    produce_partitioned(bootstrap_servers, "pageviews", rows)
    done = run_cli(["run", "pageviews", "--until-idle", "5"], env)
    assert done.returncode == 0, done.stderr[-3000:]

    # the input as the app read it, each partition in offset order
    inputs: dict[int, list[Incoming]] = {p: [] for p in range(partitions)}
    for record in consume_all(bootstrap_servers, "pageviews", expected=len(views), idle=1.0):
        assert record.key is not None and record.value is not None
        value = json.loads(record.value)
        inputs[record.partition].append(
            Incoming(record.offset, record.key, value["ts"], value, record.value)
        )
    assert {p: [(r.key, r.raw) for r in inputs[p]] for p in inputs} == rows

    minutes = simulate(
        Spec(TumblingWindows(MINUTE), lambda: 0, lambda r, acc: acc + 1, grace=10_000), inputs
    )
    sessions = simulate(
        Spec(
            SessionWindows(30 * MINUTE),
            lambda: {"views": 0, "pages": []},
            lambda r, acc: {
                "views": acc["views"] + 1,
                "pages": sorted({*acc["pages"], r.value["page"]}),
            },
        ),
        inputs,
    )
    expected_minutes = _sorted(
        {"user": e.key.decode(), **e.as_json()} for o in minutes.values() for e in o.emitted
    )
    expected_sessions = _sorted(
        {"user": e.key.decode(), "start": e.start, "end": e.end, **e.value}
        for o in sessions.values()
        for e in o.emitted
    )
    expected_late = sorted(r.raw for o in minutes.values() for r in o.late)
    expected_alerts = _sorted(a for p in inputs for a in _expected_alerts(inputs[p]))
    assert len(expected_late) > 10, f"only {len(expected_late)} late views"
    kinds = {a["alert"] for a in expected_alerts}
    assert kinds == {"errors", "abandoned-cart"}, f"alerts of kinds {kinds} only"

    def read(topic: str, expected: int) -> list[Consumed]:
        return consume_all(bootstrap_servers, topic, expected=expected, idle=1.0, timeout=60)

    per_minute = read("views-per-minute", len(expected_minutes))
    got_minutes = _sorted(
        {"user": (r.key or b"").decode(), **json.loads(r.value or b"null")} for r in per_minute
    )
    assert got_minutes == expected_minutes, _mismatch(
        "views-per-minute", got_minutes, expected_minutes
    )
    got_sessions = _sorted(
        json.loads(r.value or b"null") for r in read("sessions", len(expected_sessions))
    )
    assert got_sessions == expected_sessions, _mismatch("sessions", got_sessions, expected_sessions)
    alerts = read("alerts", len(expected_alerts))
    assert all(r.key == json.loads(r.value or b"null")["user"].encode() for r in alerts)
    got_alerts = _sorted(json.loads(r.value or b"null") for r in alerts)
    assert got_alerts == expected_alerts, _mismatch("alerts", got_alerts, expected_alerts)

    dead = read("pageviews.dlq", len(expected_late))
    late = [r for r in dead if _flow_of(r) == b"views-per-minute"]
    assert sorted(r.value or b"" for r in late) == expected_late
    assert {dict(r.headers).get("flows.error.type") for r in late} == {b"LateRecord"}
    session_late = sorted(r.raw for o in sessions.values() for r in o.late)
    assert sorted(r.value or b"" for r in dead if _flow_of(r) == b"sessions") == session_late
    assert len(dead) == len(late) + len(session_late), "dead letters of another flow"
    print(
        f"pageviews: {len(views)} views, {len(expected_minutes)} minutes, "
        f"{len(expected_sessions)} sessions, {len(expected_alerts)} alerts, "
        f"{len(expected_late)} late; {time.monotonic() - started:.0f} s"
    )


# --- orders ----------------------------------------------------------------------------------


@pytest.fixture
def registry_client(schema_registry_url: str) -> Iterator[SchemaRegistryClient]:
    """The checkout's side: a client of confluent-kafka's own, not flows'."""
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        yield client


def test_orders_totals_avro_through_the_registry_with_a_schema_change(
    bootstrap_servers: str,
    database_url: str,
    schema_registry_url: str,
    registry_client: SchemaRegistryClient,
    engine: sa.Engine,
) -> None:
    """The checkout's own serializer writes orders, and moves to a newer compatible schema
    half way; flows' totals, read back by confluent-kafka's deserializer, count every order
    once; PostgreSQL's state answers plain SQL; what is not an order is dead-lettered."""
    env = flows_env(bootstrap_servers, database_url, FLOWS_SCHEMA_REGISTRY_URL=schema_registry_url)
    assert run_cli(["reset", "orders", "--yes"], env).returncode == 0
    client = registry_client
    newer = {
        **ORDER,
        "fields": [*ORDER["fields"], {"name": "coupon", "type": "string", "default": ""}],
    }
    context = SerializationContext("orders", MessageField.VALUE)
    v1, v2 = AvroSerializer(client, json.dumps(ORDER)), AvroSerializer(client, json.dumps(newer))
    rng = random.Random(20261206)
    orders: list[dict[str, Any]] = [
        {
            "order_id": f"o{i}",
            "customer": f"c{rng.randrange(40)}",
            "amount_cents": rng.randrange(1, 10_000),
        }
        for i in range(600)
    ]
    records: list[tuple[bytes | None, bytes | None]] = [
        (o["order_id"].encode(), v1(o, context) if i < 300 else v2({**o, "coupon": "x"}, context))
        for i, o in enumerate(orders)
    ]
    records[100:100] = [(b"bad", b'{"order_id": "json"}'), (b"bad", b"\0\x7f\xff\xff\xf0\x02")]
    produce(bootstrap_servers, "orders", records)
    done = run_cli(["run", "orders", "--until-idle", "5"], env)
    assert done.returncode == 0, done.stderr[-3000:]

    # Orders reach a customer's partition in no set order (keyed by order id, they are
    # re-keyed from every partition), so each customer's totals are checked as a sequence:
    # counts 1..n, each order once, each total the last one plus its order's amount.
    amounts = {o["order_id"]: o["amount_cents"] for o in orders}
    placed: dict[str, set[str]] = {}
    for o in orders:
        placed.setdefault(o["customer"], set()).add(o["order_id"])
    read = AvroDeserializer(client, json.dumps(CUSTOMER_TOTAL))
    out_context = SerializationContext("totals", MessageField.VALUE)
    got: dict[str, list[dict[str, Any]]] = {}
    for r in consume_all(bootstrap_servers, "totals", expected=len(orders)):
        total = read(r.value, out_context)
        assert r.key == total["customer"].encode()
        got.setdefault(total["customer"], []).append(total)
    assert set(got) == set(placed)
    for customer, totals in got.items():
        assert [t["orders"] for t in totals] == list(range(1, len(placed[customer]) + 1))
        assert {t["last_order_id"] for t in totals} == placed[customer]
        running = 0
        for t in totals:
            running += amounts[t["last_order_id"]]
            assert t["total_cents"] == running, (customer, totals)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT key, (value->>'total_cents')::bigint FROM orders_totals_state")
        ).all()
    assert dict(rows) == {c: sum(amounts[o] for o in ids) for c, ids in placed.items()}
    dead = consume_all(bootstrap_servers, "orders.dlq", expected=2)
    assert {dict(d.headers)["flows.error.type"] for d in dead} == {b"DecodeError"}
