"""History over HTTP without services: a real server on a free port, the in-memory store
(filled by the test driver) and a change feed that the test pumps from that store, built
on the PostgreSQL feed's own :class:`Subscription`."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from flows import JSON, STR, App, StatefulMap, StateKeys, Topic, Tumbling, Window
from flows.testing import TestDriver
from runtimes.config import Settings
from runtimes.http import HttpApi, HttpRuntime
from runtimes.metrics import PrometheusMetrics
from runtimes.postgres.changes import Subscription
from tests.unit.test_http_unit import FakeBroker

EVENTS = Topic("events", key_format=STR, value_format=JSON)
OUT = Topic("out", key_format=STR, value_format=STR)
TABLE = "unit_count_state_history"


def _count(record: Any, state: Any) -> tuple[str, Any]:
    if record.value.get("delete"):
        return "deleted", None
    total = (state or 0) + 1
    return str(total), total


APP = App(
    "unit",
    [
        StatefulMap(name="count", source=EVENTS, sink=OUT, fn=_count, history=True),
        StatefulMap(name="plain", source=EVENTS, sink=OUT, fn=_count),
        Window(
            name="win",
            source=EVENTS,
            sink=OUT,
            window=Tumbling(timedelta(seconds=1)),
            fn=lambda r, acc: acc,
        ),
    ],
)


class MemoryFeed:
    """Offers the in-memory store's new changes to subscriptions when the test pumps."""

    def __init__(self, driver: TestDriver) -> None:
        self.driver = driver
        self.subscriptions: list[Subscription] = []
        self.seen = 0
        self.subscribed = threading.Event()

    def subscribe(
        self,
        table: str,
        limit: int,
        key: bytes | None = None,
        prefix: bytes = b"",
        live: bool = True,
    ) -> Subscription:
        subscription = Subscription(self, table, key, prefix, limit, live)
        self.subscriptions.append(subscription)
        self.subscribed.set()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self.subscriptions:
            self.subscriptions.remove(subscription)

    def pump(self) -> None:
        entries = self.driver.store.history_after(TABLE, self.seen, 1 << 30)
        if entries:
            self.seen = entries[-1].id
        for subscription in list(self.subscriptions):
            subscription.offer(entries)


@dataclass
class Server:
    runtime: HttpRuntime
    driver: TestDriver
    feed: MemoryFeed

    def connect(self) -> http.client.HTTPConnection:
        host, port = self.runtime.address
        return http.client.HTTPConnection(host, port, timeout=10)

    def json(self, path: str) -> tuple[int, Any]:
        connection = self.connect()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def pipe(self, key: str, value: dict[str, Any] | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.driver.pipe("events", value or {}, key=key)
        self.feed.pump()


@pytest.fixture
def server() -> Iterator[Server]:
    driver = TestDriver(APP, flows=["count", "plain"])
    feed = MemoryFeed(driver)
    api = HttpApi(
        APP,
        [],
        metrics=PrometheusMetrics(),
        broker=FakeBroker(),
        query_store=driver.store,
        changes=feed,
        changes_buffer=5,
        keepalive=0.2,
    )
    runtime = HttpRuntime(Settings(http_host="127.0.0.1", http_port=0), api)
    runtime.start()
    try:
        yield Server(runtime, driver, feed)
    finally:
        runtime.stop()


class EventReader:
    """An SSE client over ``http.client``: events as (id, event type, data, comments)."""

    def __init__(self, server: Server, path: str, headers: dict[str, str] | None = None) -> None:
        self.connection = server.connect()
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()

    def block(self) -> dict[str, Any]:
        """The next block up to a blank line; ``{}`` at the end of the stream."""
        found: dict[str, Any] = {}
        while True:
            line = self.response.readline()
            if not line:
                return found
            text = line.decode("utf-8").rstrip("\n")
            if not text:
                return found
            name, _, value = text.partition(":")
            found[name or "comment"] = value.removeprefix(" ")

    def events(self, count: int) -> list[dict[str, Any]]:
        """The data of the next ``count`` change events (comments skipped)."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            block = self.block()
            assert block, f"the stream ended after {len(found)} events"
            if "data" in block:
                data = json.loads(block["data"])
                assert int(block["id"]) == data["id"]
                found.append(data)
        return found

    def close(self) -> None:
        self.connection.close()


def test_history_pages_newest_first(server: Server) -> None:
    server.pipe("a", times=5)
    server.pipe("a", {"delete": True})
    status, page = server.json("/state/count/a/history?limit=4")
    assert status == 200 and page["flow"] == "count" and page["key"] == "a"
    assert [(i["previous"], i["value"]) for i in page["items"]] == [
        (5, None),
        (4, 5),
        (3, 4),
        (2, 3),
    ]
    first = page["items"][0]
    assert (first["topic"], first["partition"], first["offset"]) == ("events", 0, 5)
    assert first["committed_at"].endswith("+00:00") and first["timestamp"] == 1_700_000_000_000
    status, older = server.json(f"/state/count/a/history?limit=4&before={page['next']}")
    assert [(i["previous"], i["value"]) for i in older["items"]] == [(1, 2), (None, 1)]
    assert older["next"] is None
    assert server.json("/state/count/nobody/history")[1]["items"] == []


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/state/plain/a/history", 400, "keeps no history"),
        ("/state/plain/changes", 400, "keeps no history"),
        ("/state/win/a/history", 400, "keeps no history"),
        ("/state/nothing/a/history", 404, "no stateful flow"),
        ("/state/count/a/history?limit=0", 400, "at least 1"),
        ("/state/count/a/history?before=x", 400, "'next' of a previous page"),
        ("/state/count/changes?key=a&prefix=b", 400, "not both"),
    ],
)
def test_history_queries_refused(server: Server, path: str, status: int, says: str) -> None:
    got, body = server.json(path)
    assert got == status and says in body["error"]


def test_a_bad_last_event_id_is_refused(server: Server) -> None:
    reader = EventReader(server, "/state/count/changes", {"Last-Event-ID": "x"})
    assert reader.response.status == 400
    reader.close()


def test_a_key_named_changes_is_still_reachable(server: Server) -> None:
    server.pipe("changes", times=2)
    assert server.json("/state/count/%63hanges")[1]["state"] == 2
    assert len(server.json("/state/count/changes/history")[1]["items"]) == 2


def test_a_subscriber_gets_the_changes_from_its_start_then_resumes_without_gap(
    server: Server,
) -> None:
    server.pipe("old")  # before the subscription: not sent
    reader = EventReader(server, "/state/count/changes")
    assert reader.response.status == 200
    assert reader.response.getheader("Content-Type") == "text/event-stream"
    start = reader.block()
    assert start == {"id": "1"}  # the position, no event
    server.pipe("a", times=3)
    server.pipe("b")
    got = reader.events(4)
    assert [(e["key"], e["previous"], e["value"]) for e in got] == [
        ("a", None, 1),
        ("a", 1, 2),
        ("a", 2, 3),
        ("b", None, 1),
    ]
    reader.close()

    server.pipe("a", times=2)  # while nobody listens
    resumed = EventReader(server, "/state/count/changes", {"Last-Event-ID": str(got[1]["id"])})
    replayed = resumed.events(4)
    assert [(e["key"], e["value"]) for e in replayed] == [("a", 3), ("b", 1), ("a", 4), ("a", 5)]
    server.pipe("c")
    assert [(e["key"], e["value"]) for e in resumed.events(1)] == [("c", 1)]
    resumed.close()


def test_key_and_prefix_filter_the_stream(server: Server) -> None:
    by_key = EventReader(server, "/state/count/changes?key=ab", {"Last-Event-ID": "0"})
    by_prefix = EventReader(server, "/state/count/changes?prefix=a", {"Last-Event-ID": "0"})
    for key in ("ab", "b", "ax", "ab"):
        server.pipe(key)
    assert [(e["key"], e["value"]) for e in by_key.events(2)] == [("ab", 1), ("ab", 2)]
    assert [e["key"] for e in by_prefix.events(3)] == ["ab", "ax", "ab"]
    by_key.close()
    by_prefix.close()


def test_a_quiet_stream_sends_keep_alive_comments(server: Server) -> None:
    reader = EventReader(server, "/state/count/changes")
    assert reader.block() == {"id": "0"}
    assert reader.block() == {"comment": ""}  # ": " after keepalive seconds
    reader.close()


def test_a_subscription_behind_by_more_than_its_buffer_ends() -> None:
    driver = TestDriver(APP, flows=["count"])
    driver.pipe_many("events", [{}] * 12, key="a")
    entries = driver.store.history_after(TABLE, 0, 100)
    feed = MemoryFeed(driver)
    subscription = feed.subscribe(TABLE, 5, key=b"a")
    subscription.offer(entries[:8])  # one commit, whatever its size, when nothing waits
    assert subscription.ended is None
    assert [e.id for e in subscription.take(0)] == list(range(1, 9))
    subscription.offer(entries[8:10])
    subscription.offer(entries[10:12])  # 4 waiting: fine
    assert subscription.ended is None
    subscription.offer(entries[:2])  # 6 waiting > 5: a slow subscriber
    assert (
        subscription.ended is not None and "fell more than 5 changes behind" in subscription.ended
    )
    assert subscription.take(0) == []  # what waited is dropped, not kept
    subscription.offer(entries)  # and nothing more is queued
    assert subscription.take(0) == []
    subscription.close()
    assert feed.subscriptions == []


def test_a_subscription_catching_up_ignores_offers_until_it_goes_live() -> None:
    driver = TestDriver(APP, flows=["count"])
    driver.pipe_many("events", [{}] * 3, key="a")
    entries = driver.store.history_after(TABLE, 0, 100)
    subscription = MemoryFeed(driver).subscribe(TABLE, 1, live=False)
    for _ in range(5):  # a long replay: not a slow subscriber
        subscription.offer(entries)
    assert subscription.ended is None and subscription.take(0) == []
    subscription.go_live()
    subscription.offer(entries[:1])
    assert [e.id for e in subscription.take(0)] == [1]


def test_an_ended_subscription_ends_its_stream_with_a_final_event(server: Server) -> None:
    reader = EventReader(server, "/state/count/changes?key=a")
    assert reader.block() == {"id": "0"}
    server.pipe("a", times=2)
    assert len(reader.events(2)) == 2
    (subscription,) = server.feed.subscriptions
    subscription.end("the subscriber fell behind")
    block = reader.block()
    assert block["event"] == "dropped"
    assert json.loads(block["data"]) == {"reason": "the subscriber fell behind", "last_id": 2}
    assert reader.block() == {}  # and the stream ends
    reader.close()


def test_stopping_the_server_ends_a_stream(server: Server) -> None:
    reader = EventReader(server, "/state/count/changes")
    assert reader.block() == {"id": "0"}
    server.runtime.stop()
    while reader.block():  # a final event may or may not make it out; then the end
        pass
    assert not server.feed.subscriptions  # the stream closed its subscription
    reader.close()


def test_an_encrypted_flows_history_is_served_to_authenticated_callers_only() -> None:
    app = App(
        "sealed",
        [StatefulMap(name="c", source=EVENTS, sink=OUT, fn=_count, history=True, encrypt=True)],
    )
    driver = TestDriver(app, state_keys=StateKeys.generate("k1"))
    driver.pipe("events", {}, key="a")

    def api(token: str | None) -> HttpApi:
        return HttpApi(
            driver.app,
            [],
            metrics=PrometheusMetrics(),
            broker=FakeBroker(),
            query_store=driver.store,
            token=token,
            changes=MemoryFeed(driver),
        )

    for path in ("/state/c/a/history", "/state/c/changes"):
        assert api(None).state(path, "").status == 403
    answer = api("t0ken").state("/state/c/a/history", "")
    assert answer.status == 200
    assert [i["value"] for i in json.loads(answer.body)["items"]] == [1]
