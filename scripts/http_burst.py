"""Bursts of concurrent HTTP requests against the flows HTTP server: how many got an answer
(by status), how many were reset or refused, and the rate.

    .venv/bin/python scripts/http_burst.py                       # 32 clients x 1,000 GET /healthz
    .venv/bin/python scripts/http_burst.py --method POST --path /lines --clients 32 --requests 13
    .venv/bin/python scripts/http_burst.py --url http://127.0.0.1:8080 --path /lines --method POST

Without ``--url`` it starts a server of the wordcount app in a child process (its own GIL,
as in production) with a broker stand-in that acknowledges every record at once, so no
Kafka or PostgreSQL is needed: what is measured is the server alone. Each request is a new
connection (the server answers ``Connection: close``). Run it from a checkout to measure
that checkout's server (``PYTHONPATH=<checkout>``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit


class _AckingBroker:
    """Acknowledges every record at once: the server is measured, not Kafka."""

    def open(self, topics: Sequence[Any]) -> None:
        pass

    def check(self) -> None:
        pass

    def send(self, messages: Sequence[Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def serve(busy: int) -> None:
    """Serves the wordcount app on a free port of 127.0.0.1, prints the port, and stops
    when its standard input closes. ``busy`` threads spin in Python meanwhile, as a
    worker's threads do in ``flows run``: they compete with the server for the GIL."""
    stop = threading.Event()
    for _ in range(busy):
        threading.Thread(target=_spin, args=(stop,), daemon=True).start()
    from examples.wordcount.app import app
    from runtimes.config import Settings
    from runtimes.http import HttpApi, HttpRuntime
    from runtimes.metrics import PrometheusMetrics

    api = HttpApi(app, app.routes, metrics=PrometheusMetrics(), broker=_AckingBroker())
    runtime = HttpRuntime(Settings.from_sources(http_host="127.0.0.1", http_port=0), api)
    runtime.start()
    print(runtime.address[1], flush=True)
    sys.stdin.read()
    stop.set()
    runtime.stop()


def _one(host: str, port: int, request: bytes, timeout: float) -> str:
    """The status code of one request's answer, or what went wrong instead."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except ConnectionResetError:
        return "reset"
    except BrokenPipeError:
        return "reset"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as error:
        return f"error {error.errno}"
    if not answer:
        return "closed without an answer"
    head = answer.split(b"\r\n", 1)[0].split()
    if len(head) < 2 or not head[1].isdigit():
        return "garbled"
    status = head[1].decode()
    if status in ("503", "429") and b"\r\nretry-after:" not in answer.lower():
        return f"{status} without Retry-After"
    return status


def burst(
    host: str, port: int, request: bytes, clients: int, requests: int, timeout: float
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client() -> None:
        mine: Counter[str] = Counter()
        start.wait()
        for _ in range(requests):
            mine[_one(host, port, request, timeout)] += 1
        with lock:
            outcomes.update(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    total = sum(outcomes.values())
    return {
        "clients": clients,
        "requests": total,
        "seconds": round(seconds, 2),
        "per_second": round(total / seconds, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "answered": sum(n for k, n in outcomes.items() if k.isdigit()),
        "resets": outcomes["reset"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000, help="per client")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--busy", type=int, default=0, help="threads spinning in the started server's process"
    )
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args.busy)
        return
    body = b"the quick brown fox\njumps over the lazy dog\n" if args.method == "POST" else b""
    child = None
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
    else:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "serve", "--busy", str(args.busy)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        host, port = "127.0.0.1", int(child.stdout.readline())
    request = (
        f"{args.method} {args.path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        result = burst(host, port, request, args.clients, args.requests, args.timeout)
    finally:
        if child is not None:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)
    print(json.dumps({"path": args.path, "method": args.method, **result}))


if __name__ == "__main__":
    main()
