"""The HTTP server without services: a real server on a free port, the in-memory state store
(filled by the test driver) and a broker stand-in that records what it is asked to send."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from flows import BYTES, JSON, STR, App, Ingest, Message, StatefulMap, Topic, protobuf
from flows._proto.flows_envelope_pb2 import Envelope
from flows.errors import BrokerUnavailableError, ConfigError, FlowsError, TableMissingError
from flows.ports import StoredState
from flows.records import RawMessage
from flows.steps import Step
from flows.testing import TestDriver
from runtimes.cli import _settings, parser
from runtimes.config import Settings
from runtimes.container import Container
from runtimes.http import (
    CachedCheck,
    HttpApi,
    HttpRuntime,
    IdempotencyCache,
    Response,
    cursor,
    from_cursor,
    key_bytes,
)
from runtimes.kafka import KafkaIngest
from runtimes.metrics import PrometheusMetrics

words = Topic("words", key_format=STR, value_format=STR)
counts = Topic("counts", key_format=STR, value_format=STR)
blobs = Topic("blobs", key_format=BYTES, value_format=BYTES)
blob_out = Topic("blob-out")
nums = Topic("nums", key_format=JSON, value_format=JSON)
num_out = Topic("num-out", key_format=JSON, value_format=JSON)


def _count(record: Any, state: Any) -> tuple[str, int]:
    total = (state or 0) + 1
    return str(total), total


def _last(record: Any, state: Any) -> tuple[None, Envelope]:
    return None, Envelope(source_topic=record.topic, source_offset=record.offset + 7)


def _accept(record: Any) -> Message:
    if "word" not in record.value:
        raise ValueError("no word")
    return Message(record.value["word"], key=record.value["word"])


APP = App(
    "unit",
    [
        Ingest(
            name="in", path="/words", sink=words, fn=_accept, max_body=100, headers=("X-Source",)
        ),
        StatefulMap(name="count", source=words, sink=counts, fn=_count),
        StatefulMap(
            name="blob", source=blobs, sink=blob_out, fn=_last, state_format=protobuf(Envelope)
        ),
        StatefulMap(name="num", source=nums, sink=num_out, fn=_count),
    ],
)


class FakeBroker:
    def __init__(self) -> None:
        self.sent: list[RawMessage] = []
        self.checks = 0
        self.down = False
        self.fail: FlowsError | None = None
        self.delay = 0.0
        self.opened: list[str] = []
        self.closed = False

    def open(self, topics: Sequence[Topic]) -> None:
        self.opened = [t.name for t in topics]

    def check(self) -> None:
        self.checks += 1
        if self.down:
            raise BrokerUnavailableError("no broker at nowhere:9092")

    def send(self, messages: Sequence[RawMessage]) -> None:
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.sent.extend(messages)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeWorker:
    step: Step
    assigned_once: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None


@dataclass
class Server:
    runtime: HttpRuntime
    broker: FakeBroker
    driver: TestDriver
    workers: list[FakeWorker]
    metrics: PrometheusMetrics

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        host, port = self.runtime.address
        connection = http.client.HTTPConnection(host, port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def json(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        status, got, data = self.request(method, path, body, headers)
        assert got["Content-Type"] == "application/json"
        return status, json.loads(data)


def _serve(token: str | None = None) -> Iterator[Server]:
    driver = TestDriver(APP)
    broker = FakeBroker()
    metrics = PrometheusMetrics()
    workers = [FakeWorker(step) for step in APP.steps]
    api = HttpApi(
        APP,
        APP.routes,
        metrics=metrics,
        broker=broker,
        workers=workers,
        store=driver.store,
        query_store=driver.store,
        token=token,
        check_ttl=0,
    )
    runtime = HttpRuntime(Settings(http_host="127.0.0.1", http_port=0), api)
    runtime.start()
    try:
        yield Server(runtime, broker, driver, workers, metrics)
    finally:
        runtime.stop()
    assert broker.closed


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _serve()


@pytest.fixture
def guarded() -> Iterator[Server]:
    yield from _serve(token="t0ken")


def test_health_and_metrics(server: Server) -> None:
    assert server.json("GET", "/healthz") == (200, {"status": "ok"})
    server.metrics.increment("records_consumed", 3, flow="count", step="count.rekey")
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'flows_records_consumed_total{flow="count",step="count.rekey"} 3.0' in body.decode()
    assert server.json("POST", "/healthz")[0] == 405
    assert server.broker.opened == ["words"]  # the ingest sinks, created at start


def test_readiness_needs_every_assignment_the_broker_and_the_database(server: Server) -> None:
    status, body = server.json("GET", "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["reasons"] == ["waiting for a partition assignment: count, blob, num"]
    for worker in server.workers:
        worker.assigned_once.set()
    assert server.json("GET", "/readyz") == (200, {"ready": True})
    server.broker.down = True
    status, body = server.json("GET", "/readyz")
    assert status == 503
    assert body["reasons"] == ["the broker does not answer: no broker at nowhere:9092"]
    server.broker.down = False
    server.workers[0].stopping.set()
    assert server.json("GET", "/readyz")[1]["reasons"] == ["stopping"]


def test_checks_are_cached() -> None:
    calls = []
    now = [100.0]
    check = CachedCheck("x", lambda: calls.append(1), ttl=1.0, clock=lambda: now[0])
    assert check.reason() is None and check.reason() is None
    assert len(calls) == 1
    now[0] += 1.5
    check.reason()
    assert len(calls) == 2


def test_state_of_a_key_and_404s(server: Server) -> None:
    for word in ("b", "a", "b", "ä/ö"):
        server.driver.pipe("words", word, key=word)
    assert server.json("GET", "/state/count/b") == (200, {"flow": "count", "key": "b", "state": 2})
    assert server.json("GET", "/state/count/%C3%A4/%C3%B6")[1]["state"] == 1  # '/' in a key
    assert server.json("GET", "/state/count/%C3%A4%2F%C3%B6")[1]["key"] == "ä/ö"
    assert server.json("GET", "/state/count/zzz")[0] == 404
    assert server.json("GET", "/state/nothing/b")[0] == 404
    assert server.json("GET", "/state/in/b")[0] == 404  # an ingest is not stateful
    assert server.json("GET", "/state/count/%FF")[0] == 400  # not UTF-8 for a str key
    assert server.json("POST", "/state/count/b")[0] == 405


class TablelessStore:
    """A query store whose tables do not exist yet, as PostgreSQL before any worker ran."""

    def state(self, table: str, key: bytes) -> StoredState | None:
        raise TableMissingError(f"reading a state of {table!r}: it does not exist")

    def states(
        self,
        table: str,
        prefix: bytes,
        after: bytes | None,
        limit: int,
        where: str | None = None,
    ) -> list[StoredState]:
        raise TableMissingError(f"scanning {table!r}: it does not exist")


def test_a_state_table_that_does_not_exist_yet_reads_as_empty() -> None:
    api = HttpApi(
        APP, (), metrics=PrometheusMetrics(), broker=FakeBroker(), query_store=TablelessStore()
    )
    answer = api.state("/state/count/w", "")
    assert answer.status == 404, answer.body
    assert json.loads(answer.body) == {"error": "no state for this key in flow 'count'"}
    page = api.state("/state/count", "")
    assert (page.status, json.loads(page.body)) == (200, {"items": [], "next": None})


class BrokenStore:
    """A query store with a bug: its error text is internal and must not reach clients."""

    def state(self, table: str, key: bytes) -> StoredState | None:
        raise RuntimeError("password=hunter2 at /srv/flows/store.py:42")

    def states(
        self,
        table: str,
        prefix: bytes,
        after: bytes | None,
        limit: int,
        where: str | None = None,
    ) -> list[StoredState]:
        raise RuntimeError("password=hunter2 at /srv/flows/store.py:42")


def test_a_500_answers_a_request_id_and_logs_the_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = HttpApi(
        APP, (), metrics=PrometheusMetrics(), broker=FakeBroker(), query_store=BrokenStore()
    )
    runtime = HttpRuntime(Settings(http_host="127.0.0.1", http_port=0), api)
    runtime.start()
    try:
        server = Server(runtime, FakeBroker(), TestDriver(APP), [], PrometheusMetrics())
        with caplog.at_level(logging.INFO, logger="flows.http"):
            status, headers, body = server.request("GET", "/state/count/w")
    finally:
        runtime.stop()
    assert status == 500
    assert b"hunter2" not in body and b"RuntimeError" not in body
    request_id = headers["X-Request-Id"]
    assert json.loads(body) == {"error": f"internal error (request id {request_id})"}
    [logged] = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged.levelno == logging.ERROR
    assert "RuntimeError: password=hunter2" in logged.getMessage()
    assert logged.exc_info is not None  # the traceback, server-side only


def test_json_bytes_and_protobuf_values(server: Server) -> None:
    server.driver.pipe("nums", 5, key=42)
    server.driver.pipe("nums", 6, key="42")
    assert server.json("GET", "/state/num/42")[1] == {"flow": "num", "key": 42, "state": 1}
    assert server.json("GET", "/state/num/%2242%22")[1]["key"] == "42"
    server.driver.pipe_raw("blobs", b"v", key=b"\xff\x00k")
    status, body = server.json("GET", "/state/blob/%FF%00k")
    assert status == 200
    assert body["key"] == base64.b64encode(b"\xff\x00k").decode()
    assert body["state"] == {"sourceTopic": "blobs", "sourceOffset": "7"}  # MessageToDict


def test_paging_in_key_order(server: Server) -> None:
    keys = ["a1", "a2", "a3", "b1", "b2"]
    for key in reversed(keys):
        server.driver.pipe("words", key, key=key)
    seen: list[str] = []
    after = ""
    while True:
        status, page = server.json("GET", f"/state/count?limit=2{after}")
        assert status == 200 and len(page["items"]) <= 2
        seen += [item["key"] for item in page["items"]]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert seen == keys
    _, prefixed = server.json("GET", "/state/count?prefix=a&limit=1000000")
    assert [i["key"] for i in prefixed["items"]] == ["a1", "a2", "a3"]
    assert prefixed["next"] is None
    assert server.json("GET", "/state/count?limit=0")[0] == 400
    assert server.json("GET", "/state/count?after=!!!")[0] == 400
    assert from_cursor(cursor(b"\xff\x00")) == b"\xff\x00"


def test_ingest(server: Server) -> None:
    status, body = server.json("POST", "/words", b'{"word": "hi"}', {"X-Source": "unit"})
    assert (status, body) == (202, {"produced": 1})
    [sent] = server.broker.sent
    assert (sent.topic, sent.key, sent.value) == ("words", b"hi", b"hi")
    assert sent.headers == (("x-source", b"unit"),)
    assert server.json("POST", "/words", b"{oops")[0] == 400
    assert server.json("POST", "/words", b'{"other": 1}')[0] == 422
    assert server.json("POST", "/words", b"x" * 101)[0] == 413
    assert server.json("POST", "/words", iter([b'{"word": "', b"x" * 100, b'"}']))[0] == 413
    assert server.json("POST", "/words", iter([b'{"word": ', b'"chunked"}']))[0] == 202
    assert server.json("GET", "/words")[0] == 405
    assert server.json("POST", "/elsewhere", b"{}")[0] == 404
    assert [m.value for m in server.broker.sent] == [b"hi", b"chunked"]
    server.broker.fail = BrokerUnavailableError("timed out")
    assert server.json("POST", "/words", b'{"word": "x"}') == (503, {"error": "timed out"})
    server.broker.fail = FlowsError("refused")
    assert server.json("POST", "/words", b'{"word": "x"}')[0] == 502


def test_a_request_without_a_length_or_with_garbage_does_not_stop_the_server(
    server: Server,
) -> None:
    host, port = server.runtime.address
    for raw in (
        b"POST /words HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /words HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
        b"BREW /words HTTP/1.1\r\n\r\n",
    ):
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(raw)
            answer = sock.makefile("rb").read()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split()[1] in (b"400", b"411", b"501"), answer
        assert b"application/json" in head and "error" in json.loads(body)
    assert server.json("GET", "/healthz")[0] == 200


def test_idempotency_key_produces_once_and_forgets_failures(server: Server) -> None:
    key = {"Idempotency-Key": "abc"}
    server.broker.fail = BrokerUnavailableError("down")
    assert server.json("POST", "/words", b'{"word": "w"}', key)[0] == 503
    server.broker.fail = None
    first = server.request("POST", "/words", b'{"word": "w"}', key)
    again = server.request("POST", "/words", b'{"word": "w"}', key)
    assert first[0] == again[0] == 202 and first[2] == again[2]
    assert again[1].get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first[1]
    assert len(server.broker.sent) == 1
    assert server.json("POST", "/words", b'{"word": "v"}', key)[0] == 422  # another body
    assert server.json("POST", "/words", b'{"word": "w"}', {"Idempotency-Key": "x" * 256})[0] == 400


def test_concurrent_duplicates_wait_for_the_first(server: Server) -> None:
    server.broker.delay = 0.5
    answers: list[int] = []

    def post() -> None:
        answers.append(
            server.json("POST", "/words", b'{"word": "w"}', {"Idempotency-Key": "same"})[0]
        )

    threads = [threading.Thread(target=post) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [202] * 5
    assert len(server.broker.sent) == 1


def test_idempotency_cache_is_bounded_in_size_and_age() -> None:
    now = [0.0]
    cache = IdempotencyCache(capacity=2, ttl=10, clock=lambda: now[0])
    done = 0

    def work() -> Response:
        nonlocal done
        done += 1
        return Response(202, b"{}")

    def ok(r: Response) -> bool:
        return r.status == 202

    for key in ("a", "b", "c"):
        cache.run("/p", key, b"", work, ok)
    assert len(cache) == 2 and done == 3
    assert cache.run("/p", "a", b"", work, ok)[1] is False  # "a" was evicted: done again
    assert cache.run("/p", "c", b"", work, ok)[1] is True
    now[0] = 11
    assert cache.run("/p", "c", b"", work, ok)[1] is False  # expired
    assert cache.run("/q", "c", b"", work, ok)[1] is False  # another route
    assert done == 6


def test_the_token_guards_state_and_ingest_but_not_health(guarded: Server) -> None:
    guarded.driver.pipe("words", "w", key="w")
    assert guarded.json("GET", "/healthz")[0] == 200
    assert guarded.request("GET", "/metrics")[0] == 200
    assert guarded.json("GET", "/readyz")[0] == 503
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "t0ken"}):
        status, got, _ = guarded.request("GET", "/state/count/w", headers=headers)
        assert status == 401 and got["WWW-Authenticate"].startswith("Bearer")
        assert guarded.json("GET", "/state/count", headers=headers)[0] == 401
        assert guarded.json("POST", "/words", b'{"word": "w"}', headers)[0] == 401
    good = {"Authorization": "Bearer t0ken"}
    assert guarded.json("GET", "/state/count/w", headers=good)[1]["state"] == 1
    assert guarded.json("POST", "/words", b'{"word": "w"}', good)[0] == 202


def test_key_bytes() -> None:
    assert key_bytes(BYTES, b"\xff") == b"\xff"
    assert key_bytes(STR, "é".encode()) == "é".encode()
    assert key_bytes(JSON, b"7") == b"7"
    assert key_bytes(JSON, b"abc") == b'"abc"'
    with pytest.raises(TypeError):
        key_bytes(protobuf(Envelope), b"x")


class RawKeys:
    """A user's bytes format: not flows' BytesFormat, not a subclass of anything."""

    name = "raw"

    def encode(self, value: bytes) -> bytes:
        if not isinstance(value, bytes):
            raise TypeError(f"raw needs bytes, got {type(value).__name__}")
        return value

    def decode(self, data: bytes) -> bytes:
        return data


class UserJson:
    """A user's JSON format, written without flows' JsonFormat."""

    name = "user-json"

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


def test_key_bytes_works_for_any_object_with_name_encode_decode() -> None:
    assert key_bytes(RawKeys(), b"\xff\x00k") == b"\xff\x00k"
    assert key_bytes(UserJson(), b"7") == b"7"  # the number, as the format writes it
    assert key_bytes(UserJson(), b"[1, 2]") == b"[1,2]"
    assert key_bytes(UserJson(), b"abc") == b'"abc"'  # not JSON: the text as a JSON string
    assert key_bytes(UserJson(), b'"42"') == b'"42"'


def test_settings_cli_and_container() -> None:
    assert Settings().http_port == 8080 and Settings().http_host == "0.0.0.0"
    settings = Settings.from_sources(
        environ={"FLOWS_HTTP_TOKEN": "hunter2", "FLOWS_HTTP_PORT": "9000"}
    )
    assert settings.http_port == 9000
    assert settings.masked()["http_token"] == "***"
    assert "hunter2" not in repr(settings)
    assert Settings().masked()["http_token"] is None
    with pytest.raises(ConfigError):
        Settings(http_port=70000)
    with pytest.raises(ConfigError):
        Settings.from_sources(environ={"FLOWS_HTTP_TOKEN": ""})
    args = parser().parse_args(["run", "x", "--http-port", "0", "--http-host", "127.0.0.1"])
    assert (_settings(args).http_port, _settings(args).http_host) == (0, "127.0.0.1")

    names = [r.name for r in Container(settings=Settings(), app=APP).runtimes()]
    assert names == ["kafka-admin", "postgres", "http", "workers"]
    names = [r.name for r in Container(settings=Settings(http_port=0), app=APP).runtimes()]
    assert names == ["kafka-admin", "postgres", "workers"]


def test_kafka_ingest_answers_503_when_no_broker_acknowledges() -> None:
    """The real producer against a port where nothing listens: bounded, then 503."""
    broker = KafkaIngest(Settings(bootstrap_servers="127.0.0.1:1"), "unit.http", timeout=1.0)
    broker.open([])  # no topics to create: nothing asks the broker yet
    api = HttpApi(APP, APP.routes, metrics=PrometheusMetrics(), broker=broker, check_ttl=0)
    try:
        started = time.monotonic()
        answer = api.ingest(APP.routes[0], b'{"word": "w"}', {})
        assert answer.status == 503, answer.body
        assert "timed out" in json.loads(answer.body)["error"].lower()
        assert time.monotonic() - started < 10
        ready = api.readyz()
        reasons = json.loads(ready.body)["reasons"]
        assert ready.status == 503 and reasons[0].startswith("the broker does not answer")
    finally:
        broker.close()
