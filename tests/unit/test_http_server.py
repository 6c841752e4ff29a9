"""How the HTTP server holds up, without services: bursts, overload, slow clients, size
limits and long-lived streamed answers, against a real server on a free port."""

from __future__ import annotations

import json
import select
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from flows import STR, App, Ingest, Message, StatefulMap, Topic
from flows.errors import ConfigError
from flows.records import RawMessage
from runtimes.config import Settings
from runtimes.http import HttpApi, HttpRuntime, Response, StreamResponse, stream_response
from runtimes.http.pool import WorkerPool
from runtimes.metrics import PrometheusMetrics
from tests.helpers import wait_until

words = Topic("words", key_format=STR, value_format=STR)
counts = Topic("counts", key_format=STR, value_format=STR)


def _accept(record: Any) -> Message:
    return Message(record.value, key=record.value)


def _count(record: Any, state: Any) -> tuple[str, int]:
    return str((state or 0) + 1), (state or 0) + 1


APP = App(
    "server",
    [
        Ingest(name="in", path="/words", sink=words, fn=_accept, body_format=STR, max_body=100),
        StatefulMap(name="count", source=words, sink=counts, fn=_count),
    ],
)


class Broker:
    """Acknowledges at once, or once :attr:`release` is set when :attr:`hold` is."""

    def __init__(self) -> None:
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sent: list[RawMessage] = []

    def open(self, topics: Sequence[Topic]) -> None:
        pass

    def check(self) -> None:
        pass

    def send(self, messages: Sequence[RawMessage]) -> None:
        if self.hold:
            self.entered.set()
            assert self.release.wait(30)
        self.sent.extend(messages)

    def close(self) -> None:
        pass


class StreamingApi(HttpApi):
    """The API with a test route: ``GET /state/count/stream`` streams what :attr:`body`
    makes (a generator route for the server's stream mechanism, not a feature)."""

    body: Any = None
    cancels = 0

    def state(self, path: str, query: str, headers: Mapping[str, str] | None = None) -> Response:
        if path == "/state/count/stream":
            return stream_response(
                200, self.body(), "text/plain", (("X-Test", "yes"),), self.cancel
            )
        return super().state(path, query, headers)

    def cancel(self) -> None:
        self.cancels += 1


@dataclass
class Server:
    runtime: HttpRuntime
    api: StreamingApi
    broker: Broker

    @property
    def address(self) -> tuple[str, int]:
        return self.runtime.address

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=10)

    def raw(self, request: bytes) -> bytes:
        """Sends ``request`` on a new connection; the whole answer, up to the close."""
        with self.connect() as sock:
            sock.sendall(request)
            return _read_all(sock)

    def get(self, path: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
        return _parse(self.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()))


def _read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(**settings)`` starts a server; each is stopped at the end."""
    started: list[HttpRuntime] = []

    def start(**settings: Any) -> Server:
        broker = Broker()
        api = StreamingApi(APP, APP.routes, metrics=PrometheusMetrics(), broker=broker)
        runtime = HttpRuntime(Settings(http_host="127.0.0.1", http_port=0, **settings), api)
        runtime.start()
        started.append(runtime)
        return Server(runtime, api, broker)

    yield start
    for runtime in started:
        runtime.stop()


# --- bursts and overload -------------------------------------------------------------------


def _outcome(address: tuple[str, int], request: bytes) -> str:
    try:
        with socket.create_connection(address, timeout=30) as sock:
            sock.sendall(request)
            answer = _read_all(sock)
    except ConnectionResetError:
        return "reset"
    except OSError as error:
        return type(error).__name__
    if not answer:
        return "closed without an answer"
    status, headers, _ = _parse(answer)
    if status == 503 and headers.get("Retry-After") != "1":
        return "503 without Retry-After"
    return str(status)


def test_a_burst_of_32_clients_times_1000_requests_is_answered_without_a_reset(
    serve: Any,
) -> None:
    server = serve()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        mine = Counter(_outcome(server.address, request) for _ in range(1000))
        with lock:
            outcomes.update(mine)

    threads = [threading.Thread(target=client) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"32 x 1,000 GET /healthz: {dict(outcomes)}")  # shown with pytest -s
    assert sum(outcomes.values()) == 32_000
    assert set(outcomes) <= {"200", "503"}, outcomes  # 503s carry Retry-After: 1


def test_an_overloaded_server_answers_each_post_and_produces_the_accepted_ones(
    serve: Any,
) -> None:
    """One thread and one place in the queue for 32 clients: most posts are refused with
    503, each with an answer, none with a reset (the refused bodies go unread: the closer
    reads and drops them), and exactly the accepted ones are produced."""
    server = serve(http_threads=1, http_queue=1)
    post = b"POST /words HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    with ThreadPoolExecutor(32) as clients:
        outcomes = Counter(clients.map(lambda _: _outcome(server.address, post), range(3200)))
    print(f"3,200 posts, 32 at a time, 1 thread: {dict(outcomes)}")
    assert set(outcomes) <= {"202", "503"}, outcomes
    assert len(server.broker.sent) == outcomes["202"]


def test_past_the_threads_and_the_queue_a_connection_gets_503_at_once(serve: Any) -> None:
    server = serve(http_threads=1, http_queue=1)
    server.broker.hold = True
    post = b"POST /words HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    held = server.connect()  # takes the one thread, inside broker.send
    held.sendall(post)
    assert server.broker.entered.wait(10)
    queued = server.connect()  # waits in the queue
    queued.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    pool = server.runtime._server.pool
    wait_until(lambda: pool.waiting == 1, 10, "the second connection to be queued")
    status, headers, body = _parse(server.raw(post))
    assert (status, headers["Retry-After"]) == (503, "1")
    assert "busy" in json.loads(body)["error"]
    server.broker.release.set()
    with held, queued:
        assert _parse(_read_all(held))[0] == 202
        assert _parse(_read_all(queued))[0] == 200
    assert len(server.broker.sent) == 1  # the refused post produced nothing


def test_the_pool_refuses_past_its_queue_and_finishes_what_it_holds_when_closed() -> None:
    done: list[int] = []
    gate = threading.Event()

    def work(item: int) -> None:
        gate.wait(10)
        done.append(item)

    pool: WorkerPool[int] = WorkerPool("test", threads=1, queue_size=2, work=work)
    pool.start()
    assert pool.offer(1)
    wait_until(lambda: pool.waiting == 0, 10, "the thread to take the first item")
    assert pool.offer(2) and pool.offer(3)
    assert not pool.offer(4)  # one in hand, two waiting: full
    gate.set()
    pool.close(timeout=10)
    assert done == [1, 2, 3]
    assert not pool.offer(5)


# --- slow clients and sizes ----------------------------------------------------------------


def test_a_client_that_stalls_in_its_headers_is_cut_off_and_blocks_nobody(serve: Any) -> None:
    server = serve(http_threads=2, http_header_timeout=2.0)
    with server.connect() as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert server.get("/healthz")[0] == 200  # meanwhile, from another thread
        assert select.select([slow], [], [], 0)[0] == []  # still waiting for its deadline
        status, _, body = _parse(_read_all(slow))
    assert status == 408
    assert "headers did not arrive within 2 s" in json.loads(body)["error"]


def test_a_client_that_trickles_bytes_is_cut_off_at_the_deadline(serve: Any) -> None:
    """A deadline for the whole head, not a timeout per read: a byte every 0.1 s would
    keep a per-read timeout of 1 s from ever firing."""
    server = serve(http_header_timeout=1.0)
    with server.connect() as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        for _ in range(300):  # 30 s of trickling at most
            if select.select([slow], [], [], 0.1)[0]:  # answered
                break
            slow.sendall(b"x")
        status, _, _ = _parse(_read_all(slow))
    assert status == 408


def test_a_body_that_stalls_gets_408(serve: Any) -> None:
    server = serve(http_body_timeout=1.0)
    with server.connect() as slow:
        slow.sendall(b"POST /words HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        status, _, body = _parse(_read_all(slow))
    assert status == 408 and "body did not arrive within 1 s" in json.loads(body)["error"]
    assert server.broker.sent == []


def test_sizes_are_bounded_on_every_route(serve: Any) -> None:
    server = serve(http_max_header_bytes=1024, http_max_headers=10)
    many = "".join(f"X-{i}: v\r\n" for i in range(11))
    assert server.get("/healthz", many)[0] == 431
    assert server.get("/healthz", "".join(f"X-{i}: v\r\n" for i in range(9)))[0] == 200
    status, _, body = server.get("/healthz", f"X-Big: {'v' * 1100}\r\n")
    assert status == 431 and "larger than 1024 bytes" in json.loads(body)["error"]
    assert server.get("/" + "a" * 2000)[0] == 414
    post = b"POST /words HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"w" * 101
    assert _parse(server.raw(post))[0] == 413  # the route's max_body
    for path in ("/healthz", "/state/count/a", "/nowhere"):
        big = f"GET {path} HTTP/1.1\r\nContent-Length: 9000\r\n\r\n".encode() + b"x" * 9000
        assert _parse(server.raw(big))[0] == 413, path
    small = b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    assert _parse(server.raw(small))[0] == 200  # a small body where none is used: dropped
    assert server.get("/healthz")[0] == 200


def test_settings_of_the_server_are_checked() -> None:
    settings = Settings.from_sources(
        environ={"FLOWS_HTTP_THREADS": "4", "FLOWS_HTTP_HEADER_TIMEOUT": "2.5"}
    )
    assert (settings.http_threads, settings.http_header_timeout) == (4, 2.5)
    cases: list[dict[str, Any]] = [
        {"http_threads": 0},
        {"http_queue": 0},
        {"http_backlog": 0},
        {"http_streams": 0},
        {"http_body_timeout": 0},
        {"http_max_headers": 101},
        {"http_max_header_bytes": 10},
    ]
    for bad in cases:
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Settings(**bad)


# --- streams -------------------------------------------------------------------------------


def _open_stream(server: Server) -> socket.socket:
    sock = server.connect()
    sock.sendall(b"GET /state/count/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = sock.recv(65536)
        assert chunk, f"the stream ended before {marker!r}: {got!r}"
        got += chunk
    return got


def test_a_stream_writes_each_chunk_as_it_comes(serve: Any) -> None:
    server = serve()
    second = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"one\n"
        assert second.wait(10)  # not before the client has read the first chunk
        yield b""
        yield b"two\n"

    server.api.body = body
    with _open_stream(server) as sock:
        got = _read_until(sock, b"one\n")
        second.set()
        got += _read_all(sock)
    status, headers, data = _parse(got)
    assert (status, data) == (200, b"one\ntwo\n")
    assert "Content-Length" not in headers
    assert headers["Connection"] == "close" and headers["X-Test"] == "yes"
    assert headers["Content-Type"] == "text/plain"


def test_streams_hold_no_request_thread_and_are_bounded(serve: Any) -> None:
    server = serve(http_threads=1, http_streams=1)
    ran = []
    ended = threading.Event()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        ran.append(1)
        try:
            yield b"open\n"
            while not release.wait(0.05):
                yield b""  # waiting for data, as a stream of changes does
        finally:
            ended.set()

    server.api.body = body
    with _open_stream(server) as sock:
        _read_until(sock, b"open\n")
        assert server.get("/healthz")[0] == 200  # the one request thread is free
        status, headers, _ = server.get("/state/count/stream")
        assert (status, headers["Retry-After"]) == (503, "1")
        assert ran == [1]  # the refused stream's body never ran
        release.set()
        assert ended.wait(10)
        _read_all(sock)
    wait_until(lambda: server.get("/state/count/stream")[0] == 200, 10, "a free stream")


def test_a_stream_ends_when_its_client_goes_away(serve: Any) -> None:
    server = serve()
    ended = threading.Event()

    def body() -> Iterator[bytes]:
        try:
            yield b"open\n"
            while True:
                yield b""
                threading.Event().wait(0.05)
        finally:
            ended.set()

    server.api.body = body
    with _open_stream(server) as sock:
        _read_until(sock, b"open\n")
    assert ended.wait(10)


def test_stopping_the_server_ends_its_streams(serve: Any) -> None:
    server = serve()
    ended = threading.Event()

    def body() -> Iterator[bytes]:
        try:
            yield b"open\n"
            while True:
                yield b""
                threading.Event().wait(0.05)
        finally:
            ended.set()

    server.api.body = body
    with _open_stream(server) as sock:
        _read_until(sock, b"open\n")
        server.runtime.stop()
        assert _read_all(sock) == b""  # the end of the stream
    assert ended.wait(10)
    assert server.api.cancels == 1


def test_a_stream_response_is_a_response_with_an_empty_body() -> None:
    answer = stream_response(200, iter([b"x"]), "text/event-stream")
    assert isinstance(answer, Response) and isinstance(answer, StreamResponse)
    assert answer.body == b"" and list(answer.chunks) == [b"x"]
