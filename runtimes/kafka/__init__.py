"""The Kafka adapter: confluent-kafka behind the core's ports, and nothing else sees it."""

from runtimes.kafka.admin import Admin
from runtimes.kafka.broker import KafkaBroker
from runtimes.kafka.errors import translate
from runtimes.kafka.ingest import KafkaIngest
from runtimes.kafka.records import to_raw

__all__ = ["Admin", "KafkaBroker", "KafkaIngest", "to_raw", "translate"]
