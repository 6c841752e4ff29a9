"""A burst of ingest requests against `flows run` of the wordcount app: every request gets
an HTTP answer, and the counts in PostgreSQL match the accepted lines exactly.

The app is ``examples/wordcount`` (its functions, its ingest route ``POST /lines``) on topics
and tables of this test's own, so it runs beside other tests.
"""

from __future__ import annotations

import random
import signal
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import UniqueFn
from tests.helpers import flows_env, kill, start_cli, wait_until, write_app
from tests.wordcount_check import expected_counts, text_lines

APP = """
from dataclasses import dataclass, field

from examples.wordcount.app import body_lines, count, split
from flows import JSON, STR, App, Explode, Ingest, Materialise, StatefulMap, Topic

lines = Topic("{lines}", value_format=STR)
words = Topic("{words}", key_format=STR, value_format=STR)
counts = Topic("{counts}", key_format=STR, value_format=STR)


@dataclass
class WordCount:
    __tablename__ = "{table}"
    word: str = field(metadata={{"primary_key": True}})
    count: int = 0


def to_row(record):
    return WordCount(word=record.key, count=int(record.value))


app = App("{name}", [
    Explode(name="split", source=lines, sink=words, fn=split, exactly_once=True),
    StatefulMap(name="count", source=words, sink=counts, fn=count, state_format=JSON),
    Materialise(name="store", source=counts, table=WordCount, fn=to_row),
    Ingest(name="ingest", path="/lines", sink=lines, fn=body_lines, body_format=STR, explode=True),
])
"""

POSTS = 400
AT_ONCE = 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(port: int, path: str, body: bytes) -> str:
    """The status of the answer, or what happened instead (``reset``, ``no answer``)."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except ConnectionResetError:
        return "reset"
    except OSError as error:
        return type(error).__name__
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    if not head.startswith(b"http/"):
        return "no answer"
    status = head.split()[1].decode()
    if status == "503" and b"\r\nretry-after:" not in head:
        return "503 without Retry-After"
    return status


def _get(port: int, path: str) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            return int(sock.recv(65536).split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_a_burst_of_posts_is_answered_and_counted_exactly(
    tmp_path: Path, unique: UniqueFn, bootstrap_servers: str, database_url: str, engine: sa.Engine
) -> None:
    table = unique("counts").replace("-", "_")
    path = write_app(
        tmp_path / "app.py",
        APP.format(
            lines=unique("lines"),
            words=unique("words"),
            counts=unique("counts"),
            table=table,
            name=unique("burst"),
        ),
    )
    port = _free_port()
    log = tmp_path / "worker.log"
    process = start_cli(
        ["run", str(path), "--http-port", str(port), "--http-host", "127.0.0.1"],
        flows_env(bootstrap_servers, database_url),
        log,
    )
    try:
        wait_until(
            lambda: _get(port, "/readyz") == 200 or process.poll() is not None, 90, "readiness"
        )
        assert process.poll() is None, log.read_text()

        rng = random.Random(14)
        text = text_lines(POSTS * 2, seed=14)
        bodies: list[list[str]] = []
        for _ in range(POSTS):
            take = rng.randint(1, 3)
            bodies.append([text.pop() for _ in range(min(take, len(text)))] or ["spare line"])
        with ThreadPoolExecutor(AT_ONCE) as pool:
            outcomes = list(
                pool.map(lambda b: _post(port, "/lines", "\n".join(b).encode()), bodies)
            )
        tally = Counter(outcomes)
        print(f"{POSTS} posts, {AT_ONCE} at a time: {dict(tally)}")  # shown with pytest -s
        assert set(tally) <= {"202", "503"}, tally  # an HTTP answer each, 503s with Retry-After
        accepted = [body for body, got in zip(bodies, outcomes, strict=True) if got == "202"]
        expected = expected_counts([line for body in accepted for line in body])
        assert expected

        def counted() -> Counter[str]:
            with engine.connect() as connection:
                rows = connection.execute(sa.text(f"SELECT word, count FROM {table}")).all()
            return Counter({word: count for word, count in rows})

        def done() -> bool:
            try:
                return counted() == expected
            except sa.exc.ProgrammingError:  # the table is not there yet
                return False

        wait_until(done, 120, "the counts of the accepted lines")
    finally:
        kill(process, signal.SIGTERM)
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    assert process.returncode == 0, log.read_text()[-3000:]
