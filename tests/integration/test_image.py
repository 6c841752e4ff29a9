"""The container image, built and run with podman: `flows list` as the image's non-root user,
and a worker in the image counting records from the host's Kafka into its PostgreSQL, healthy
by the image's own HEALTHCHECK and answering a state query.

Opt-in: run with ``FLOWS_TEST_IMAGE=1`` where podman is installed (``make image`` installs
nothing; ``apt-get install -y podman debootstrap runc``). ``make test`` leaves it out, since
it needs root, Debian's mirror and PyPI at test time, and a minute or more: skipped, with the
reason. ``scripts/image.sh`` makes a Debian base with debootstrap (about a minute, once), then
builds the Dockerfile on it (about 15 s from scratch, 2 s from podman's cache). The worker
runs a ``flows new`` scaffold with unique topic and app names, mounted into the container,
so it shares no consumer group or table with other tests (the wordcount example's are
fixed).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtimes.cli import main
from tests.helpers import REPO, produce

SCRIPT = REPO / "scripts" / "image.sh"
IMAGE = "localhost/flows:image-test"

pytestmark = pytest.mark.skipif(
    os.environ.get("FLOWS_TEST_IMAGE") != "1" or shutil.which("podman") is None,
    reason="opt-in: FLOWS_TEST_IMAGE=1 with podman installed (apt-get install -y podman "
    "debootstrap runc); tests/unit/test_container_files.py still lints the Dockerfile",
)


def image_sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "FLOWS_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.fixture(scope="module")
def image() -> str:
    base = image_sh("base", timeout=900)
    assert base.returncode == 0, base.stdout + base.stderr
    build = image_sh("build", timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    return IMAGE


def test_the_image_lists_the_apps_as_a_non_root_user(image: str) -> None:
    listed = image_sh("run", image, "list")
    assert listed.returncode == 0, listed.stderr
    assert "wordcount\texamples.wordcount.app:app" in listed.stdout
    user = image_sh("run", "--entrypoint", "id", image, "-u")
    assert user.returncode == 0, user.stderr
    assert user.stdout.strip() == "10001"


@pytest.fixture
def container() -> Iterator[str]:
    name = f"flows-test-{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run(["podman", "rm", "-f", "-t", "5", name], capture_output=True, check=False)


def test_a_worker_in_the_image_is_healthy_and_counts(
    image: str, container: str, tmp_path: Path, bootstrap_servers: str, database_url: str
) -> None:
    name = f"img{uuid.uuid4().hex[:10]}"
    assert main(["new", name, "--dir", str(tmp_path)], io.StringIO()) == 0
    port = free_port()
    started = image_sh(
        "run",
        "-d",
        "--name",
        container,
        "-e",
        f"FLOWS_BOOTSTRAP_SERVERS={bootstrap_servers}",
        "-e",
        f"FLOWS_DATABASE_URL={database_url}",
        "-e",
        f"FLOWS_HTTP_PORT={port}",
        "-v",
        f"{tmp_path / name}:/app:ro",
        image,
        "run",
        "/app/app.py",
    )
    assert started.returncode == 0, started.stderr

    def healthy() -> bool:
        check = subprocess.run(
            ["podman", "healthcheck", "run", container], capture_output=True, check=False
        )
        return check.returncode == 0

    def logs() -> str:
        out = subprocess.run(
            ["podman", "logs", container], capture_output=True, text=True, check=False
        )
        return out.stdout + out.stderr

    try:
        wait_until(healthy, 60, "the image's HEALTHCHECK")
        produce(
            bootstrap_servers,
            f"{name}-input",
            [(b"ann", b'{"page": "/"}'), (b"bob", b'{"page": "/"}'), (b"ann", b'{"page": "/"}')],
        )
        base = f"http://127.0.0.1:{port}/state/count"
        wait_until(lambda: (get_json(f"{base}/ann") or {}).get("state") == 2, 60, "ann's count")
        assert get_json(f"{base}/bob") == {"flow": "count", "key": "bob", "state": 1}
    except BaseException:
        print(logs())
        raise
