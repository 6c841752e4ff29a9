"""Shared fixtures: the Kafka, PostgreSQL and Schema Registry services, and per-test topics,
groups and schemas.

The services are found once per session by ``tests/services.py`` (environment, then
testcontainers, then ``scripts/services.sh up``); unit tests that request none of these
fixtures never start anything.

Every test under ``tests/integration``, ``tests/faults`` and ``tests/examples`` is marked
``integration`` (and those under ``tests/faults`` also ``faults``), so ``-m "not integration"``
selects the tests that need no services.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin does not re-export it for mypy

from tests.helpers import kill_started
from tests.services import Services, provide_services, registry_answers

TESTS_DIR = Path(__file__).resolve().parent
_MARKED_DIRS: tuple[tuple[Path, tuple[str, ...]], ...] = (
    (TESTS_DIR / "integration", ("integration",)),
    (TESTS_DIR / "faults", ("integration", "faults")),
    (TESTS_DIR / "examples", ("integration",)),
)

TOPIC_READY_TIMEOUT_S = 30.0

UniqueFn = Callable[[str], str]
TopicFactory = Callable[..., str]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path)
        for directory, markers in _MARKED_DIRS:
            if path.is_relative_to(directory):
                existing = {mark.name for mark in item.iter_markers()}
                for name in markers:
                    if name not in existing:
                        item.add_marker(getattr(pytest.mark, name))


# --- the services ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def flows_services() -> Iterator[Services]:
    """The Kafka broker, PostgreSQL database and Schema Registry of this test session."""
    with provide_services() as services:
        yield services


@pytest.fixture(scope="session")
def bootstrap_servers(flows_services: Services) -> str:
    """Kafka's ``bootstrap.servers``."""
    return flows_services.bootstrap_servers


@pytest.fixture(scope="session")
def database_url(flows_services: Services) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://...``) for the test database."""
    return flows_services.database_url


@pytest.fixture(scope="session")
def schema_registry_url(flows_services: Services) -> str:
    """The Schema Registry's base URL for Confluent's REST API (``.../apis/ccompat/v7``).

    Fails the test with what to do when nothing answers there, rather than leaving it to
    a connection error deep in a client.
    """
    url, source = flows_services.schema_registry_url, flows_services.schema_registry_source
    if not registry_answers(url):
        pytest.fail(
            f"no Schema Registry answers at {url} (found by {source}):"
            " start one with `make services` (or `bash scripts/services.sh registry-start`),"
            " or set FLOWS_SCHEMA_REGISTRY_URL"
        )
    return url


# --- per-test helpers --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """Kills the workers a test started and did not stop (it failed before it could), so
    they neither hold its groups' partitions nor warn from ``Popen.__del__`` in a later test."""
    yield
    kill_started()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique() -> UniqueFn:
    """``unique(prefix)`` returns ``"{prefix}-{10 hex digits}"``, new on every call."""
    return _unique


@pytest.fixture
def group_id(unique: UniqueFn) -> str:
    """A consumer group id no other test uses."""
    return unique("group")


def _wait_for_topic(admin: AdminClient, name: str, partitions: int) -> None:
    """Until the metadata shows the topic with every partition led."""
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    while True:
        md = admin.list_topics(topic=name, timeout=5)
        topic = md.topics.get(name)
        if (
            topic is not None
            and topic.error is None
            and len(topic.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in topic.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} was not ready within {TOPIC_READY_TIMEOUT_S}s")
        time.sleep(0.1)


@pytest.fixture
def topic_factory(bootstrap_servers: str, unique: UniqueFn) -> Iterator[TopicFactory]:
    """``topic_factory(prefix="topic", partitions=1, config=None) -> name``.

    Creates a topic with a unique name, waits until it is usable, and deletes every topic
    it made when the test ends.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    created: list[str] = []

    def create(
        prefix: str = "topic", partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> str:
        name = unique(prefix)
        new = NewTopic(
            name, num_partitions=partitions, replication_factor=1, config=dict(config or {})
        )
        admin.create_topics([new], operation_timeout=30)[name].result(timeout=60)
        created.append(name)
        _wait_for_topic(admin, name, partitions)
        return name

    yield create

    if created:
        futures = admin.delete_topics(created, operation_timeout=30)
        for future in futures.values():
            try:
                future.result(timeout=60)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A SQLAlchemy engine on the test database, disposed of at the end of the test."""
    eng = sa.create_engine(database_url, pool_pre_ping=True)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def db_schema(engine: sa.Engine) -> Iterator[str]:
    """A new, empty schema of this test's own, dropped (CASCADE) at the end of the test."""
    name = f"test_{uuid.uuid4().hex}"
    quoted = engine.dialect.identifier_preparer.quote(name)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {quoted}"))
    try:
        yield name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {quoted} CASCADE"))
