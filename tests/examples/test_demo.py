"""`make demo` as a newcomer runs it: a kill, a restart, "exact" (the table checked against an
independent count of the text), the top words, and an HTTP state answer."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess

import sqlalchemy as sa

from tests.helpers import REPO, flows_env
from tests.wordcount_check import expected_counts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo_text(lines: int) -> list[str]:
    """The text the demo generates, from its own generator (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("flows_demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: list[str] = module.generated_text(lines)
    return text


def test_the_demo_kills_restarts_and_proves_the_counts_exact(
    bootstrap_servers: str, database_url: str, engine: sa.Engine
) -> None:
    port = _free_port()
    env = flows_env(
        bootstrap_servers,
        database_url,
        FLOWS_DEMO_LINES="6000",
        FLOWS_DEMO_HTTP_PORT=str(port),
    )
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh")],  # what `make demo` runs
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
    assert "Top 10 words in the word_counts table:" in out
    # and the table, counted here once more from the same text
    expected = expected_counts(_demo_text(6000))
    with engine.connect() as connection:
        found = connection.execute(sa.text("SELECT word, count FROM word_counts")).all()
    table = {str(word): int(count) for word, count in found}
    assert table == dict(expected)
    assert "Traceback" not in done.stderr
