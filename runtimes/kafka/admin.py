"""Topic and group administration through confluent-kafka's admin client."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from flows.errors import BrokerError, BrokerUnavailableError, ConfigError
from flows.topics import Topic

#: group-deletion errors that pass by themselves: a coordinator not yet elected or loading
#: (a fresh or restarted broker), or the member of a killed worker awaiting its timeout
_WAITABLE = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.NON_EMPTY_GROUP,
)


class Admin:
    """Topic and group administration, with bounded waits and clear errors."""

    def __init__(self, config: dict[str, Any], timeout: float = 20.0) -> None:
        self.bootstrap = config.get("bootstrap.servers", "?")
        self.timeout = timeout
        self.client = AdminClient(config)

    def check(self) -> None:
        """Fails within ``timeout`` with the address when the broker does not answer."""
        try:
            self.client.list_topics(timeout=self.timeout)
        except KafkaException as error:
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {self.bootstrap} within {self.timeout:.0f} s "
                f"({error.args[0].str() if error.args else error}); start one with "
                f"`make services` or pass --bootstrap-servers"
            ) from error

    def existing(self) -> dict[str, int]:
        metadata = self.client.list_topics(timeout=self.timeout)
        return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}

    def ensure_topics(self, topics: Iterable[Topic]) -> list[str]:
        """Creates the missing topics and waits until they are usable; returns their names."""
        existing = self.existing()
        missing = {t.name: t for t in topics if t.name not in existing}
        if not missing:
            return []
        futures = self.client.create_topics(
            [
                NewTopic(
                    t.name,
                    num_partitions=t.partitions,
                    replication_factor=-1,
                    config=dict(t.config),
                )
                for t in missing.values()
            ],
            operation_timeout=self.timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=self.timeout)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ConfigError(f"cannot create topic {name!r}: {error}") from error
        self._wait(lambda names: set(missing) <= set(names), "topics to appear")
        return sorted(missing)

    def delete_topics(self, names: Sequence[str]) -> list[str]:
        present = [n for n in names if n in self.existing()]
        if not present:
            return []
        for name, future in self.client.delete_topics(
            present, operation_timeout=self.timeout
        ).items():
            try:
                future.result(timeout=self.timeout)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise BrokerError(f"cannot delete topic {name!r}: {error}") from error
        self._wait(lambda found: not set(present) & set(found), "topics to be deleted")
        return present

    def delete_groups(self, groups: Sequence[str]) -> list[str]:
        if not groups:
            return []
        deleted: list[str] = []
        remaining = list(groups)
        deadline = time.monotonic() + max(self.timeout, 45.0)
        while remaining:
            retry = []
            for group, future in self.client.delete_consumer_groups(
                remaining, request_timeout=self.timeout
            ).items():
                try:
                    future.result(timeout=self.timeout)
                    deleted.append(group)
                except KafkaException as error:
                    kafka_error = error.args[0]
                    if kafka_error.code() == KafkaError.GROUP_ID_NOT_FOUND:
                        continue
                    # a coordinator still loading after a restart, or the member of a killed
                    # worker that lingers until its session times out
                    waitable = kafka_error.retriable() or kafka_error.code() in _WAITABLE
                    if waitable and time.monotonic() < deadline:
                        retry.append(group)
                        continue
                    raise BrokerError(
                        f"cannot delete consumer group {group!r}: {error}; "
                        f"is a worker of it still running?"
                    ) from error
            remaining = retry
            if remaining:
                time.sleep(0.5)
        return deleted

    def _wait(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if done(self.client.list_topics(timeout=self.timeout).topics):
                return
            time.sleep(0.1)
        raise BrokerUnavailableError(f"timed out waiting for {what} on {self.bootstrap}")
