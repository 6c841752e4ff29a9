"""Kafka as the broker port (:class:`flows.broker.Broker`): clients configured once, by
:class:`~runtimes.config.Settings`, the one translation point to librdkafka keys."""

from __future__ import annotations

from runtimes.config import Settings
from runtimes.kafka.consumer import KafkaConsumer
from runtimes.kafka.producer import KafkaProducer


class KafkaBroker:
    """Makes each worker's consumer and producer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def consumer(self, group_id: str, client_id: str) -> KafkaConsumer:
        config = {**self.settings.consumer_config(group_id), "client.id": client_id}
        return KafkaConsumer(config, timeout=self.settings.startup_timeout)

    def producer(self, transactional_id: str | None, client_id: str) -> KafkaProducer:
        config = {**self.settings.producer_config(transactional_id), "client.id": client_id}
        return KafkaProducer(
            config,
            operation_timeout=self.settings.transaction_op_timeout,
            flush_timeout=self.settings.shutdown_timeout,
        )
