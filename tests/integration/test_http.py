"""The HTTP server of `flows run` against the real broker and database.

Each test runs an app in a subprocess on a free port: an ingest route into the source topic
of a stateful counter. Requests go through ``urllib`` (no proxy), records are counted in
the topic itself, states are read back over HTTP.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import UniqueFn
from tests.helpers import consume_all, flows_env, kill, start_cli, wait_until, write_app

APP = """
from flows import JSON, STR, App, Ingest, Message, StatefulMap, Topic

events = Topic("{events}", key_format=STR, value_format=JSON, partitions=3)
counts = Topic("{counts}", key_format=STR, value_format=STR, partitions=3)


def accept(record):
    event = record.value
    if not isinstance(event, dict) or "user" not in event:
        raise ValueError("an event needs a user")
    return Message(event, key=event["user"])


def count(record, state):
    total = (state or 0) + 1
    return str(total), total


app = App("{name}", [
    Ingest(name="events-in", path="/events", sink=events, fn=accept, max_body=1000),
    StatefulMap(name="count", source=events, sink=counts, fn=count),
])
"""

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("Content-Type") == "application/json", self.headers
        return json.loads(self.body)


def call(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> Answer:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=30) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, dict(error.headers), error.read())


def post_json(url: str, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return call(
        url,
        "POST",
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Running:
    base: str
    events: str
    counts: str
    process: Popen[bytes]
    log: Path
    name: str


@pytest.fixture
def running(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    unique: UniqueFn,
    bootstrap_servers: str,
    database_url: str,
) -> Iterator[Running]:
    """The app, started with `flows run --http-port`; SIGTERM at the end must exit 0."""
    token: str | None = getattr(request, "param", None)
    events, counts, name = unique("events"), unique("counts"), unique("http")
    path = write_app(tmp_path / "app.py", APP.format(events=events, counts=counts, name=name))
    extra = {"FLOWS_HTTP_TOKEN": token} if token else {}
    env = flows_env(bootstrap_servers, database_url, **extra)
    port = free_port()
    log = tmp_path / "worker.log"
    process = start_cli(
        ["run", str(path), "--http-port", str(port), "--http-host", "127.0.0.1"], env, log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _answers(f"{base}/healthz") or process.poll() is not None, 60, "the HTTP server"
        )
        assert process.poll() is None, log.read_text()
        yield Running(base, events, counts, process, log, name)
    finally:
        kill(process, signal.SIGTERM)
    assert process.returncode == 0, log.read_text()
    if token:
        assert token not in log.read_text()


def _answers(url: str) -> bool:
    try:
        return call(url).status == 200
    except OSError:
        return False


def _ready(app: Running) -> None:
    wait_until(lambda: call(f"{app.base}/readyz").status == 200, 90, "readiness")
    assert call(f"{app.base}/readyz").json() == {"ready": True}


def _consumed(metrics: str, step: str) -> float | None:
    found = re.search(
        rf'^flows_records_consumed_total\{{flow="[^"]*",step="{re.escape(step)}"\}} (\S+)$',
        metrics,
        re.M,
    )
    return float(found.group(1)) if found else None


def test_health_ingest_state_paging_and_metrics(running: Running, bootstrap_servers: str) -> None:
    app = running
    health = call(f"{app.base}/healthz")
    assert health.status == 200 and health.json() == {"status": "ok"}
    _ready(app)

    users = ["alice", "bob", "alice", "carol", "bob", "alice"]
    for i, user in enumerate(users):
        answer = post_json(f"{app.base}/events", {"user": user, "n": i})
        assert answer.status == 202, answer.body
        assert answer.json() == {"produced": 1}

    # a retried request with one Idempotency-Key is produced once
    retry = {"Idempotency-Key": "dave-1"}
    first = post_json(f"{app.base}/events", {"user": "dave", "n": 99}, retry)
    again = post_json(f"{app.base}/events", {"user": "dave", "n": 99}, retry)
    assert (first.status, again.status) == (202, 202)
    assert again.json() == first.json() == {"produced": 1}
    assert again.headers.get("Idempotent-Replayed") == "true"
    reused = post_json(f"{app.base}/events", {"user": "dave", "n": 100}, retry)
    assert reused.status == 422

    # refused requests produce nothing
    malformed = call(
        f"{app.base}/events", "POST", b"{not json", {"Content-Type": "application/json"}
    )
    assert malformed.status == 400 and "error" in malformed.json()
    assert post_json(f"{app.base}/events", {"no": "user"}).status == 422
    oversized = post_json(f"{app.base}/events", {"user": "eve", "pad": "x" * 2000})
    assert oversized.status == 413 and "error" in oversized.json()
    chunked = call(
        f"{app.base}/events", "POST", iter([b'{"user": "eve", "pad": "', b"x" * 1200, b'"}'])
    )
    assert chunked.status == 413
    assert call(f"{app.base}/events").status == 405
    assert call(f"{app.base}/nowhere").status == 404

    # every accepted event is in the topic exactly once
    expected = [*users, "dave"]
    records = consume_all(bootstrap_servers, app.events, expected=len(expected), idle=2)
    assert Counter(r.key for r in records) == Counter(u.encode() for u in expected)
    assert {json.loads(r.value)["user"] for r in records if r.value} == set(expected)

    # the states, read from PostgreSQL
    def state(key: str) -> Answer:
        return call(f"{app.base}/state/count/{key}")

    wait_until(
        lambda: state("dave").status == 200 and state("alice").json()["state"] == 3,
        60,
        "the counts",
    )
    assert state("alice").json() == {"flow": "count", "key": "alice", "state": 3}
    assert state("bob").json()["state"] == 2
    assert state("carol").json()["state"] == 1
    assert state("dave").json()["state"] == 1
    assert state("nobody").status == 404
    assert call(f"{app.base}/state/no-such-flow/alice").status == 404
    assert call(f"{app.base}/state/events-in/alice").status == 404  # not a stateful flow

    # paging, in key order
    page = call(f"{app.base}/state/count?limit=2").json()
    assert _unversioned(page["items"]) == [
        {"key": "alice", "state": 3},
        {"key": "bob", "state": 2},
    ]
    assert page["next"]
    rest = call(f"{app.base}/state/count?limit=2&after={page['next']}").json()
    assert _unversioned(rest["items"]) == [
        {"key": "carol", "state": 1},
        {"key": "dave", "state": 1},
    ]
    assert rest["next"] is None
    assert call(f"{app.base}/state/count").json()["next"] is None
    assert [i["key"] for i in call(f"{app.base}/state/count?prefix=c").json()["items"]] == ["carol"]
    assert call(f"{app.base}/state/count?limit=zero").status == 400

    # metrics: the stateful flow consumed each accepted event once
    metrics = call(f"{app.base}/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    wait_until(
        lambda: _consumed(call(f"{app.base}/metrics").body.decode(), "count") == len(expected),
        30,
        "the consumed-records counter",
    )


def _unversioned(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != "version"} for item in items]


def test_search_versions_and_sql_against_postgresql(running: Running, engine: sa.Engine) -> None:
    """The states of a running app through the real store: searched by containment with
    paging, versioned with ETags, and read with plain SQL from their table."""
    app = running
    _ready(app)
    users = ["u1", "u2", "u1", "u3", "u1", "u2", "u4"]
    for user in users:
        assert post_json(f"{app.base}/events", {"user": user}).status == 202
    wait_until(
        lambda: (
            call(f"{app.base}/state/count/u4").status == 200
            and call(f"{app.base}/state/count/u1").json()["state"] == 3
        ),
        60,
        "the counts",
    )

    # where: containment (a count is a JSON number), with paging
    ones = call(f"{app.base}/state/count?where=1&limit=1").json()
    assert _unversioned(ones["items"]) == [{"key": "u3", "state": 1}]
    rest = call(f"{app.base}/state/count?where=1&limit=1&after={ones['next']}").json()
    assert _unversioned(rest["items"]) == [{"key": "u4", "state": 1}]
    assert rest["next"] is None
    assert call(f"{app.base}/state/count?where=%7B%22a%22%3A").status == 400
    assert "JSON" in call(f"{app.base}/state/count?where=nope").json()["error"]

    # versions: the ETag names the record that last changed the key, 304 until it changes
    first = call(f"{app.base}/state/count/u2")
    tag = first.headers["ETag"]
    assert re.fullmatch(r'"\d+-\d+"', tag), tag
    page_item = next(i for i in call(f"{app.base}/state/count").json()["items"] if i["key"] == "u2")
    assert f'"{page_item["version"]}"' == tag
    same = call(f"{app.base}/state/count/u2", headers={"If-None-Match": tag})
    assert (same.status, same.body, same.headers["ETag"]) == (304, b"", tag)
    assert post_json(f"{app.base}/events", {"user": "u2"}).status == 202
    wait_until(lambda: call(f"{app.base}/state/count/u2").json()["state"] == 3, 60, "the new count")
    changed = call(f"{app.base}/state/count/u2", headers={"If-None-Match": tag})
    assert changed.status == 200 and changed.headers["ETag"] != tag

    # plain SQL on the state table, <app>_<flow>_state
    table = re.sub(r"[^a-z0-9_]", "_", app.name.lower()) + "_count_state"
    assert _rows(engine, f"SELECT value FROM {table} WHERE key = 'u1'") == [(3,)]
    new_tag = changed.headers["ETag"].strip('"')
    assert _rows(
        engine, f"SELECT source_partition || '-' || source_offset FROM {table} WHERE key = 'u2'"
    ) == [(new_tag,)]


def _rows(engine: sa.Engine, statement: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(statement), params).all())


@pytest.mark.parametrize("running", ["s3cret-token"], indirect=True)
def test_the_bearer_token_guards_state_and_ingest_only(running: Running) -> None:
    app = running
    good = {"Authorization": "Bearer s3cret-token"}
    bad = {"Authorization": "Bearer wrong"}
    assert call(f"{app.base}/healthz").status == 200
    assert call(f"{app.base}/metrics").status == 200
    assert call(f"{app.base}/readyz").status in (200, 503)

    for headers in ({}, bad, {"Authorization": "Basic czNjcmV0LXRva2Vu"}):
        assert call(f"{app.base}/state/count/alice", headers=headers).status == 401
        assert call(f"{app.base}/state/count", headers=headers).status == 401
        assert post_json(f"{app.base}/events", {"user": "zed"}, headers).status == 401

    _ready(app)
    assert post_json(f"{app.base}/events", {"user": "zed"}, good).status == 202
    wait_until(
        lambda: call(f"{app.base}/state/count/zed", headers=good).status == 200,
        60,
        "the count of zed",
    )
    assert call(f"{app.base}/state/count/zed", headers=good).json()["state"] == 1
    assert call(f"{app.base}/state/count", headers=good).status == 200
