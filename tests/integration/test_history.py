"""History and streams of changes of `flows run` against the real broker and database.

Each test runs a counter with ``history=True`` in a subprocess on a free port; records go
straight to its source topic; history is read over HTTP, with the CLI, and followed with a
Server-Sent Events client that reads the raw stream.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from tests.conftest import UniqueFn
from tests.helpers import flows_env, kill, produce, run_cli, start_cli, wait_until, write_app
from tests.integration.test_http import call, free_port

APP = """
from flows import JSON, STR, App, StatefulMap, Topic

events = Topic("{events}", key_format=STR, value_format=JSON, partitions=3)
counts = Topic("{counts}", key_format=STR, value_format=STR, partitions=3)


def count(record, state):
    total = (state or {{}}).get("n", 0) + 1
    return str(total), {{"n": total, "pad": record.value.get("pad", "")}}


app = App("{name}", [
    StatefulMap(name="count", source=events, sink=counts, fn=count, history=True),
])
"""


@dataclass
class Running:
    host: str
    port: int
    events: str
    process: Popen[bytes]
    log: Path
    path: Path
    env: dict[str, str]

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture
def running(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    unique: UniqueFn,
    bootstrap_servers: str,
    database_url: str,
) -> Iterator[Running]:
    """The app, started with `flows run --http-port` (``request.param``: extra settings);
    SIGTERM at the end must exit 0."""
    extra: dict[str, str] = getattr(request, "param", {})
    events, counts, name = unique("events"), unique("counts"), unique("hist")
    path = write_app(tmp_path / "app.py", APP.format(events=events, counts=counts, name=name))
    env = flows_env(bootstrap_servers, database_url, **extra)
    port, log = free_port(), tmp_path / "worker.log"
    process = start_cli(
        ["run", str(path), "--http-port", str(port), "--http-host", "127.0.0.1"], env, log
    )
    app = Running("127.0.0.1", port, events, process, log, path, env)
    try:
        wait_until(lambda: _ready(app.base) or process.poll() is not None, 90, "readiness")
        assert process.poll() is None, log.read_text()
        yield app
    finally:
        kill(process, signal.SIGTERM)
    assert process.returncode == 0, log.read_text()[-3000:]


def _ready(base: str) -> bool:
    try:
        return call(f"{base}/readyz").status == 200
    except OSError:  # not listening yet
        return False


def _produce(app: Running, keys: list[str], pad: str = "") -> None:
    value = json.dumps({"pad": pad}).encode()
    bootstrap = app.env["FLOWS_BOOTSTRAP_SERVERS"]
    produce(bootstrap, app.events, ((k.encode(), value) for k in keys))


@dataclass
class SseClient:
    """Reads ``GET path`` of a stream of changes in a thread of its own, block by block
    (``{field: value}`` per event or comment, up to a blank line), until the stream ends.
    The request is sent and the head read at once; the body is read from :meth:`start` on.
    ``receive_buffer`` shrinks the socket's receive buffer."""

    app: Running
    path: str
    last_event_id: int | None = None
    receive_buffer: int | None = None
    status: int = 0
    blocks: list[dict[str, str]] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        if self.receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        self.sock.settimeout(120)
        self.sock.connect((self.app.host, self.app.port))
        resume = "" if self.last_event_id is None else f"Last-Event-ID: {self.last_event_id}\r\n"
        self.sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: x\r\n{resume}\r\n".encode())
        self.reader = self.sock.makefile("rb")
        self.status = int(self.reader.readline().split()[1])
        while self.reader.readline() not in (b"\r\n", b""):  # the headers
            pass
        self.thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> SseClient:
        self.thread.start()
        return self

    def _read(self) -> None:
        try:
            block: dict[str, str] = {}
            for raw in self.reader:
                line = raw.decode("utf-8").rstrip("\n")
                if line:
                    name, _, value = line.partition(":")
                    block[name or "comment"] = value.removeprefix(" ")
                elif block:
                    self.blocks.append(block)
                    block = {}
        except OSError:
            pass
        finally:
            self.ended.set()

    def changes(self) -> list[dict[str, Any]]:
        """The change events received so far (their data), in order; each id checked."""
        found = []
        for block in list(self.blocks):
            if "data" in block and "event" not in block:
                data = json.loads(block["data"])
                assert int(block["id"]) == data["id"]
                found.append(data)
        return found

    def wait_for(self, count: int, what: str) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.changes()) >= count or self.ended.is_set(), 120, what)
        changes = self.changes()
        last = self.blocks[-1] if self.blocks else {}
        ending = f"{last.get('event')} {last.get('data', '')[:300]}"
        assert len(changes) >= count, f"the stream ended after {len(changes)}: {ending}"
        return changes

    def close(self) -> None:
        """Ends the connection: the reading thread meets its end, then the file and the
        socket close (the descriptor closes with the last of them)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if self.thread.is_alive():
            self.thread.join(30)
        self.reader.close()
        self.sock.close()


def _check_in_order(changes: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Checks that ``changes`` (the full history of some keys from their first change) is
    what the counter must have written, and returns each key's counts."""
    ids = [c["id"] for c in changes]
    assert ids == sorted(set(ids)), "ids not strictly increasing"
    counts: dict[str, list[int]] = defaultdict(list)
    offsets: dict[int, list[int]] = defaultdict(list)
    for change in changes:
        previous = change["previous"]["n"] if change["previous"] else None
        mine = counts[change["key"]]
        assert previous == (mine[-1] if mine else None), change
        mine.append(change["value"]["n"])
        offsets[change["partition"]].append(change["offset"])
    for key, values in counts.items():
        assert values == list(range(1, len(values) + 1)), key
    for partition, seen in offsets.items():
        assert seen == sorted(set(seen)), f"offsets of partition {partition} out of order"
    return counts


def test_a_subscriber_started_before_a_run_sees_every_change_and_resumes_without_gap(
    running: Running,
) -> None:
    client = SseClient(running, "/state/count/changes").start()
    assert client.status == 200
    wait_until(lambda: client.blocks, 30, "the stream's position")
    assert client.blocks[0] == {"id": "0"}  # nothing committed yet
    keys = [f"user-{n % 17}" for n in range(600)]
    _produce(running, keys)
    seen = client.wait_for(600, "600 changes")
    assert len(seen) == 600
    counts = _check_in_order(seen)
    assert {k: len(v) for k, v in counts.items()} == Counter(keys)
    assert {(c["partition"], c["offset"]) for c in seen} == {
        (p, o) for p in range(3) for o in range(sum(1 for c in seen if c["partition"] == p))
    }
    client.close()

    # resume from the 250th change: the rest is replayed from the history, then live
    resumed = SseClient(running, "/state/count/changes", last_event_id=seen[249]["id"]).start()
    assert resumed.wait_for(350, "the replay")[:350] == seen[250:]
    _produce(running, ["user-1", "late"])
    live = resumed.wait_for(352, "live changes after the replay")[350:]
    assert [(c["key"], c["value"]["n"]) for c in live] == [
        ("user-1", counts["user-1"][-1] + 1),
        ("late", 1),
    ]
    assert live[0]["id"] > seen[-1]["id"]
    resumed.close()

    one = SseClient(running, "/state/count/changes?key=user-3", last_event_id=0).start()
    assert [c["value"]["n"] for c in one.wait_for(len(counts["user-3"]), "user-3")] == (
        counts["user-3"]
    )
    one.close()


def test_history_pages_over_http_and_the_cli(running: Running) -> None:
    _produce(running, ["alice"] * 23 + ["bob"] * 2)
    wait_until(
        lambda: (
            call(f"{running.base}/state/count/alice").status == 200
            and json.loads(call(f"{running.base}/state/count/alice").body)["state"]["n"] == 23
        ),
        90,
        "alice counted",
    )
    pages, before = [], ""
    while True:
        page = json.loads(call(f"{running.base}/state/count/alice/history?limit=7{before}").body)
        pages.append(page)
        if page["next"] is None:
            break
        before = f"&before={page['next']}"
    assert [len(p["items"]) for p in pages] == [7, 7, 7, 2]
    items = [i for p in pages for i in p["items"]]
    assert [i["value"]["n"] for i in items] == list(range(23, 0, -1))
    _check_in_order(items[::-1])
    assert all(i["topic"] == running.events and i["committed_at"] for i in items)

    cli = ["state", "history", str(running.path), "count"]
    shown = run_cli([*cli, "alice", "--limit", "7", "--json"], running.env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == pages[0]
    text = run_cli([*cli, "bob"], running.env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "changes of key \"bob\" in flow 'count', newest first:"
    assert lines[1].endswith('{"n": 1, "pad": ""} -> {"n": 2, "pad": ""}')
    assert lines[2].endswith('(none) -> {"n": 1, "pad": ""}')
    assert len(lines) == 3


@pytest.mark.parametrize(
    "running",
    [{"FLOWS_HTTP_CHANGES_BUFFER": "50", "FLOWS_STATEFUL_BATCH_SIZE": "100"}],
    indirect=True,
)
def test_a_slow_subscriber_is_dropped_with_a_final_event_and_resumes(running: Running) -> None:
    # A client that reads nothing: once the sockets' buffers are full, the server's writes
    # block, the changes of later commits (of 100 records at most) wait for it, and past 50
    # it is dropped (never buffered further).
    slow = SseClient(running, "/state/count/changes?prefix=k", receive_buffer=4096)
    keys = [f"k{n % 5}" for n in range(3000)]
    _produce(running, keys, pad="x" * 4000)  # about 8 kB an event: megabytes in all
    wait_until(lambda: "dropped a slow subscriber" in running.log.read_text(), 120, "the drop")
    slow.start()  # now read it all
    wait_until(slow.ended.is_set, 120, "the end of the slow stream")
    final = slow.blocks[-1]
    assert final["event"] == "dropped", slow.blocks[-2:]
    reason = json.loads(final["data"])
    assert "fell more than 50 changes behind" in reason["reason"]
    got = slow.changes()
    assert 0 < len(got) < 3000 and reason["last_id"] == got[-1]["id"]
    slow.close()

    # resuming from where it was dropped gives the rest, no more, no less
    rest = SseClient(running, "/state/count/changes?prefix=k", last_event_id=got[-1]["id"]).start()
    everything = got + rest.wait_for(3000 - len(got), "the rest")
    assert len(everything) == 3000
    counts = _check_in_order(everything)
    assert {k: len(v) for k, v in counts.items()} == Counter(keys)
    rest.close()
