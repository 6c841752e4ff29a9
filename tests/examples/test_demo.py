"""`make demo` as a newcomer runs it: a kill, a restart, "exact", and an HTTP state answer."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

from tests.helpers import REPO, flows_env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_demo_kills_restarts_and_proves_the_counts_exact(
    bootstrap_servers: str, database_url: str
) -> None:
    port = _free_port()
    env = flows_env(
        bootstrap_servers,
        database_url,
        FLOWS_DEMO_LINES="6000",
        FLOWS_DEMO_HTTP_PORT=str(port),
    )
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    killed = re.search(r"SIGKILL the worker \(pid \d+\) with ([\d,]+) of ([\d,]+) words", out)
    assert killed, out
    at, total = (int(n.replace(",", "")) for n in killed.groups())
    assert 0 < at < total  # killed with work left: the restart had something to do
    assert "Exact after a kill: " in out and f"{total:,} occurrences" in out
    answer = json.loads(out.split("/state/count/")[1].splitlines()[1])
    assert answer["flow"] == "count" and answer["state"] > 0
    assert "Traceback" not in done.stderr
