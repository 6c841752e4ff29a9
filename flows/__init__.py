"""flows: stream processing on Apache Kafka with exactly-once per-key state in PostgreSQL.

This package is the pure core: records, topics and formats, the wiring configurations, the
compiler and the in-memory test driver (:mod:`flows.testing`). It never imports a Kafka or
database driver; those live in ``runtimes``.
"""

from flows.app import App, load_app, registered_apps
from flows.errors import (
    AppNotFoundError,
    BrokerError,
    BrokerUnavailableError,
    ConfigError,
    DatabaseUnavailableError,
    DecodeError,
    EncodeError,
    FencedError,
    FlowFailedError,
    FlowsError,
    KafkaFencedError,
    LateRecord,
    OffsetsAheadError,
    SerializationError,
    StateError,
    TableMissingError,
    TransientError,
    UserFunctionError,
    WatermarkMovedError,
    WiringError,
)
from flows.formats import BYTES, JSON, STR, Format, protobuf
from flows.records import KEEP, Message, Record
from flows.timers import Timer, TimerError, cancel_timer, schedule_timer
from flows.topics import Topic
from flows.windows import Hopping, Session, Sliding, Tumbling
from flows.wiring import (
    Deduplicate,
    Explode,
    Filter,
    Ingest,
    Join,
    Map,
    Materialise,
    Merge,
    Mirror,
    Split,
    StatefulExplode,
    StatefulMap,
    StatefulSplit,
    Window,
)

__version__ = "0.1.0"

__all__ = [
    "BYTES",
    "JSON",
    "KEEP",
    "STR",
    "App",
    "AppNotFoundError",
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigError",
    "DatabaseUnavailableError",
    "DecodeError",
    "Deduplicate",
    "EncodeError",
    "Explode",
    "FencedError",
    "Filter",
    "FlowFailedError",
    "FlowsError",
    "Format",
    "Hopping",
    "Ingest",
    "Join",
    "KafkaFencedError",
    "LateRecord",
    "Map",
    "Materialise",
    "Merge",
    "Message",
    "Mirror",
    "OffsetsAheadError",
    "Record",
    "SerializationError",
    "Session",
    "Sliding",
    "Split",
    "StateError",
    "StatefulExplode",
    "StatefulMap",
    "StatefulSplit",
    "TableMissingError",
    "Timer",
    "TimerError",
    "Topic",
    "TransientError",
    "Tumbling",
    "UserFunctionError",
    "WatermarkMovedError",
    "Window",
    "WiringError",
    "__version__",
    "cancel_timer",
    "load_app",
    "protobuf",
    "registered_apps",
    "schedule_timer",
]
