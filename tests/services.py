"""Find the Kafka broker and the PostgreSQL database that integration tests run against.

In order of preference:

1. ``FLOWS_BOOTSTRAP_SERVERS`` / ``FLOWS_DATABASE_URL`` from the environment;
2. throwaway testcontainers (``KafkaContainer``, ``PostgresContainer``) when a Docker
   engine answers;
3. ``bash scripts/services.sh up`` (idempotent) and the local services it starts:
   Kafka on ``localhost:9092`` and PostgreSQL on ``localhost:5432``.

Each variable is honoured on its own; what it does not name is found by 2 or 3.
``provide_services()`` is a context manager, so that containers are stopped when the
caller (the session fixture in ``tests/conftest.py``) is done.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV_BOOTSTRAP_SERVERS = "FLOWS_BOOTSTRAP_SERVERS"
ENV_DATABASE_URL = "FLOWS_DATABASE_URL"

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT = REPO_ROOT / "scripts" / "services.sh"

LOCAL_BOOTSTRAP_SERVERS = "localhost:9092"
LOCAL_DATABASE_URL = "postgresql+psycopg://postgres:postgres@localhost:5432/flows"

# testcontainers' KafkaContainer drives the Confluent image's start scripts, so it needs
# a cp-kafka image (7.x is Apache Kafka 3.x); docker-compose.yml uses apache/kafka.
KAFKA_IMAGE = os.environ.get("FLOWS_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
POSTGRES_IMAGE = os.environ.get("FLOWS_TEST_POSTGRES_IMAGE", "postgres:16")

SERVICES_UP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Services:
    """Where the services are, and how each was found (env, testcontainers or script)."""

    bootstrap_servers: str
    database_url: str
    kafka_source: str
    database_source: str


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
def provide_services() -> Iterator[Services]:
    """Yields the services to test against; stops any containers it started on exit."""
    env_kafka = os.environ.get(ENV_BOOTSTRAP_SERVERS, "").strip()
    env_db = os.environ.get(ENV_DATABASE_URL, "").strip()
    with contextlib.ExitStack() as stack:
        if env_kafka and env_db:
            yield Services(env_kafka, sqlalchemy_url(env_db), "env", "env")
            return
        if docker_available():
            kafka = env_kafka or stack.enter_context(_kafka_container())
            db = sqlalchemy_url(env_db) if env_db else stack.enter_context(_postgres_container())
            yield Services(
                kafka,
                db,
                "env" if env_kafka else "testcontainers",
                "env" if env_db else "testcontainers",
            )
            return
        run_services_script("up")
        yield Services(
            env_kafka or LOCAL_BOOTSTRAP_SERVERS,
            sqlalchemy_url(env_db) if env_db else LOCAL_DATABASE_URL,
            "env" if env_kafka else "scripts/services.sh",
            "env" if env_db else "scripts/services.sh",
        )
