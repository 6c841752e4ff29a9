"""The HTTP ingest routes' producer: one idempotent confluent-kafka producer for all requests.

:class:`KafkaIngest` is the :class:`runtimes.http.IngestBroker` the container gives the HTTP
server; the server itself never imports confluent-kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from flows.errors import BrokerUnavailableError, ConfigError
from flows.records import RawMessage
from flows.topics import Topic
from runtimes.config import Settings
from runtimes.kafka.admin import Admin
from runtimes.kafka.errors import translate

# The HTTP server's logger: these lines are about its ingest requests.
log = logging.getLogger("flows.http")

#: how long an ingest request waits for the broker's acknowledgements
INGEST_TIMEOUT = 10.0
#: the broker check's own bound
CHECK_TIMEOUT = 2.0


class KafkaIngest:
    """:class:`runtimes.http.IngestBroker` over confluent-kafka: one idempotent producer for
    all requests.

    A thread serves the producer's delivery reports; each request waits only for its own
    records. Records time out after ``timeout`` seconds (``message.timeout.ms``), so a
    request that gave up is not delivered much later.
    """

    def __init__(self, settings: Settings, client_id: str, timeout: float = INGEST_TIMEOUT) -> None:
        self.settings = settings
        self.client_id = client_id
        self.timeout = timeout
        self._admin: Admin | None = None
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    def open(self, topics: Sequence[Topic]) -> None:
        self._admin = Admin(self.settings.admin_config(), timeout=self.settings.startup_timeout)
        if not topics:
            return
        created = self._admin.ensure_topics(topics)
        if created:
            log.info("created topics %s", ", ".join(created))
        self._current()  # a bad librdkafka option fails the start, not the first request

    def _current(self) -> Producer:
        """The producer, created (with its poller thread) on first use."""
        with self._lock:
            if self._producer is None:
                if self._stopping.is_set():
                    raise BrokerUnavailableError("the HTTP server is stopping")
                self._producer = self._new_producer()
                if self._poller is None:
                    self._poller = threading.Thread(
                        target=self._poll, name="flows-http-producer", daemon=True
                    )
                    self._poller.start()
            return self._producer

    def _new_producer(self) -> Producer:
        config = self.settings.producer_config()
        config["message.timeout.ms"] = int(self.timeout * 1000)
        config["client.id"] = self.client_id
        config["delivery.report.only.error"] = False  # send() counts every acknowledgement
        try:
            return Producer(config)
        except KafkaException as error:
            raise ConfigError(f"cannot create the ingest producer: {error}") from error

    def _poll(self) -> None:
        while not self._stopping.is_set():
            producer = self._producer
            if producer is None:
                self._stopping.wait(0.1)
            else:
                producer.poll(0.1)

    def check(self) -> None:
        if self._admin is None:
            raise BrokerUnavailableError("the broker client is not open")
        try:
            self._admin.client.list_topics(timeout=CHECK_TIMEOUT)
        except KafkaException as error:
            raise translate(error, f"asking {self._admin.bootstrap} for metadata") from error

    def send(self, messages: Sequence[RawMessage]) -> None:
        if not messages:
            return
        producer = self._current()
        lock, done = threading.Lock(), threading.Event()
        waiting = [len(messages)]
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            with lock:
                if error is not None:
                    errors.append(error)
                waiting[0] -= 1
                if waiting[0] == 0:
                    done.set()

        deadline = time.monotonic() + self.timeout
        for out in messages:
            while True:
                try:
                    producer.produce(
                        out.topic,
                        out.value,
                        out.key,
                        headers=list(out.headers) or None,
                        timestamp=out.timestamp or 0,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:  # the queue is full: the poller thread drains it
                    if time.monotonic() > deadline:
                        raise BrokerUnavailableError(
                            f"the producer's queue stayed full for {self.timeout:g} s"
                        ) from None
                    time.sleep(0.02)
                except KafkaException as error:
                    raise translate(error, f"producing to {out.topic!r}") from error
        # The records time out after self.timeout; the margin lets their reports arrive.
        if not done.wait(self.timeout + 5):
            raise BrokerUnavailableError(
                f"the broker did not acknowledge {waiting[0]} records within {self.timeout:g} s"
            )
        if errors:
            if any(e.fatal() for e in errors):
                self._replace(producer)
            raise translate(KafkaException(errors[0]), "producing ingested records")

    def _replace(self, failed: Producer) -> None:
        """A fatal error leaves a producer unusable: the next requests get a new one."""
        with self._lock:
            if self._producer is failed:
                log.error("the ingest producer failed fatally; replacing it")
                self._producer = self._new_producer()

    def close(self) -> None:
        with self._lock:
            self._stopping.set()
            producer, self._producer = self._producer, None
        if producer is not None:
            remaining = producer.flush(5)
            if remaining:
                log.warning("%d ingested records were not acknowledged before stopping", remaining)
        if self._poller is not None:
            self._poller.join(5)


__all__ = ["CHECK_TIMEOUT", "INGEST_TIMEOUT", "KafkaIngest"]
