"""Find the Kafka broker, the PostgreSQL database and the Schema Registry that integration
tests run against.

In order of preference:

1. ``FLOWS_BOOTSTRAP_SERVERS`` / ``FLOWS_DATABASE_URL`` / ``FLOWS_SCHEMA_REGISTRY_URL`` from
   the environment;
2. throwaway testcontainers (``KafkaContainer``, ``PostgresContainer``, and Apicurio
   Registry in a plain ``DockerContainer``) when a Docker engine answers;
3. ``bash scripts/services.sh up`` (idempotent) and the local services it starts:
   Kafka on ``localhost:9092``, PostgreSQL on ``localhost:5432`` and the Schema Registry
   (Confluent's REST API) at ``http://localhost:8081/apis/ccompat/v7``.

Each variable is honoured on its own; what it does not name is found by 2 or 3, except
when Kafka's and PostgreSQL's are both set: then nothing is started, and the registry is
``FLOWS_SCHEMA_REGISTRY_URL`` or the local default (the ``schema_registry_url`` fixture
checks that it answers).
``provide_services()`` is a context manager, so that containers are stopped when the
caller (the session fixture in ``tests/conftest.py``) is done.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV_BOOTSTRAP_SERVERS = "FLOWS_BOOTSTRAP_SERVERS"
ENV_DATABASE_URL = "FLOWS_DATABASE_URL"
ENV_SCHEMA_REGISTRY_URL = "FLOWS_SCHEMA_REGISTRY_URL"

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT = REPO_ROOT / "scripts" / "services.sh"

LOCAL_BOOTSTRAP_SERVERS = "localhost:9092"
LOCAL_DATABASE_URL = "postgresql+psycopg://postgres:postgres@localhost:5432/flows"
# Apicurio Registry serves Confluent's REST API under this path.
CCOMPAT_PATH = "/apis/ccompat/v7"
LOCAL_SCHEMA_REGISTRY_URL = "http://localhost:8081" + CCOMPAT_PATH

# testcontainers' KafkaContainer drives the Confluent image's start scripts, so it needs
# a cp-kafka image (7.x is Apache Kafka 3.x); docker-compose.yml uses apache/kafka.
KAFKA_IMAGE = os.environ.get("FLOWS_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
POSTGRES_IMAGE = os.environ.get("FLOWS_TEST_POSTGRES_IMAGE", "postgres:16")
REGISTRY_IMAGE = os.environ.get("FLOWS_TEST_REGISTRY_IMAGE", "apicurio/apicurio-registry:3.3.3")

SERVICES_UP_TIMEOUT_S = 600.0
REGISTRY_READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Services:
    """Where the services are, and how each was found (env, testcontainers or script;
    the registry also ``default``: the local address, which nothing here started)."""

    bootstrap_servers: str
    database_url: str
    kafka_source: str
    database_source: str
    schema_registry_url: str
    schema_registry_source: str


def sqlalchemy_url(url: str) -> str:
    """The same PostgreSQL URL, naming SQLAlchemy's psycopg (3) driver."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def docker_available(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            docker = importlib.import_module("docker")  # untyped; a dependency of testcontainers
            client = docker.from_env(timeout=int(max(1, timeout)))
            try:
                return bool(client.ping())
            finally:
                client.close()
    except Exception:
        return False


def registry_answers(url: str, timeout: float = 5.0) -> bool:
    """True when ``GET {url}/subjects`` (Confluent's REST API) answers 200."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url.rstrip('/')}/subjects", timeout=timeout) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def run_services_script(command: str = "up") -> str:
    """Run ``scripts/services.sh COMMAND``; returns its output, raises with it on failure."""
    proc = subprocess.run(
        ["bash", str(SERVICES_SCRIPT), command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SERVICES_UP_TIMEOUT_S,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(
            f"`bash scripts/services.sh {command}` failed with exit code {proc.returncode}:\n"
            f"{output}"
        )
    return output


@contextlib.contextmanager
def _kafka_container() -> Iterator[str]:
    from testcontainers.community.kafka import KafkaContainer

    container = (
        KafkaContainer(KAFKA_IMAGE)
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_NUM_PARTITIONS", "1")
    )
    container.start(timeout=120)
    try:
        yield str(container.get_bootstrap_server())
    finally:
        container.stop()


@contextlib.contextmanager
def _postgres_container() -> Iterator[str]:
    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer(
        POSTGRES_IMAGE, username="postgres", password="postgres", dbname="flows", driver="psycopg"
    )
    container.start()
    try:
        yield sqlalchemy_url(str(container.get_connection_url()))
    finally:
        container.stop()


@contextlib.contextmanager
def _registry_container() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer

    # The same settings as docker-compose.yml's registry: Confluent's default compatibility.
    container = (
        DockerContainer(REGISTRY_IMAGE)
        .with_env("APICURIO_RULES_GLOBAL_COMPATIBILITY", "BACKWARD")
        .with_exposed_ports(8080)
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        url = f"http://{host}:{container.get_exposed_port(8080)}{CCOMPAT_PATH}"
        deadline = time.monotonic() + REGISTRY_READY_TIMEOUT_S
        while not registry_answers(url):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the {REGISTRY_IMAGE} container did not answer at {url} "
                    f"within {REGISTRY_READY_TIMEOUT_S}s"
                )
            time.sleep(0.5)
        yield url
    finally:
        container.stop()


@contextlib.contextmanager
def provide_services() -> Iterator[Services]:
    """Yields the services to test against; stops any containers it started on exit."""
    env_kafka = os.environ.get(ENV_BOOTSTRAP_SERVERS, "").strip()
    env_db = os.environ.get(ENV_DATABASE_URL, "").strip()
    env_registry = os.environ.get(ENV_SCHEMA_REGISTRY_URL, "").strip()
    with contextlib.ExitStack() as stack:
        if env_kafka and env_db:
            yield Services(
                env_kafka,
                sqlalchemy_url(env_db),
                "env",
                "env",
                env_registry or LOCAL_SCHEMA_REGISTRY_URL,
                "env" if env_registry else "default",
            )
            return
        if docker_available():
            kafka = env_kafka or stack.enter_context(_kafka_container())
            db = sqlalchemy_url(env_db) if env_db else stack.enter_context(_postgres_container())
            registry = env_registry or stack.enter_context(_registry_container())
            yield Services(
                kafka,
                db,
                "env" if env_kafka else "testcontainers",
                "env" if env_db else "testcontainers",
                registry,
                "env" if env_registry else "testcontainers",
            )
            return
        run_services_script("up")
        yield Services(
            env_kafka or LOCAL_BOOTSTRAP_SERVERS,
            sqlalchemy_url(env_db) if env_db else LOCAL_DATABASE_URL,
            "env" if env_kafka else "scripts/services.sh",
            "env" if env_db else "scripts/services.sh",
            env_registry or LOCAL_SCHEMA_REGISTRY_URL,
            "env" if env_registry else "scripts/services.sh",
        )
