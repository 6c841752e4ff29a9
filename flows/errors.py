"""The exceptions flows raises, one root and a subclass per area.

Every error a user can meet derives from :class:`FlowsError`, so ``except FlowsError`` is
enough to tell "flows refused or failed" from a bug in user code. Driver errors
(confluent-kafka, psycopg, SQLAlchemy) are translated at the edge in ``runtimes/``; the
original is kept as ``__cause__``.

The tree::

    FlowsError
    ├── ConfigError                 bad option, unknown app, invalid value (exit code 2)
    │   └── AppNotFoundError
    ├── WiringError                 a flow that cannot be built (names flow and field)
    ├── SerializationError
    │   ├── DecodeError             bytes that a format cannot read (names topic/partition/offset)
    │   └── EncodeError             a value that a format cannot write
    ├── UserFunctionError           a user function raised (names flow and record)
    ├── LateRecord                  a record whose windows had all closed (dead-lettered)
    ├── StateError
    │   ├── WatermarkMovedError     (also a FencedError) PostgreSQL's watermark moved under us
    │   ├── OffsetsAheadError       Kafka's committed offset is past PostgreSQL's watermark
    │   ├── TableMissingError       a state or materialised table does not exist (yet)
    │   └── StateDecryptionError    a stored state of an encrypted flow does not decrypt; stops it
    ├── FencedError                 another worker owns the partition: this one must not commit
    │   ├── WatermarkMovedError
    │   └── KafkaFencedError        Kafka fenced the producer, or the group has a new generation
    ├── BrokerError                 Kafka refused an operation for a reason that does not pass
    ├── SchemaRegistryError         a registry format cannot work (refused, unbound); stops the flow
    │   └── FormatNotBoundError     a registry format used before a runtime bound it
    ├── TransientError              worth retrying: the batch is retried as a whole
    │   ├── BrokerUnavailableError
    │   ├── DatabaseUnavailableError
    │   └── SchemaRegistryUnavailableError
    └── FlowFailedError             a flow that failed persistently; stops the process (exit 1)
"""

from __future__ import annotations


class FlowsError(Exception):
    """Root of every error flows raises on purpose."""


class ConfigError(FlowsError):
    """A configuration value, option or reference is wrong; the message names it."""


class AppNotFoundError(ConfigError):
    """An app reference (name, file path or ``module:attribute``) does not resolve."""


class WiringError(FlowsError):
    """A flow's wiring is invalid; raised when the app loads, never mid-stream."""

    def __init__(self, flow: str, field: str, problem: str) -> None:
        self.flow = flow
        self.field = field
        self.problem = problem
        super().__init__(f"flow {flow!r}, field {field!r}: {problem}")


class SerializationError(FlowsError):
    """Bytes could not become a value, or a value could not become bytes."""


class DecodeError(SerializationError):
    """A record's key or value did not decode with its topic's format.

    ``schema_id`` is the Schema Registry id (or guid) the bytes carry, when a registry
    format could read one: a record whose id is unknown, or whose payload does not match
    the schema of its id, says which schema it claimed.
    """

    def __init__(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        part: str,
        format_name: str,
        reason: str,
        schema_id: int | str | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.part = part
        self.format_name = format_name
        self.reason = reason
        self.schema_id = schema_id
        claimed = "" if schema_id is None else f" (schema id {schema_id})"
        super().__init__(
            f"cannot decode the {part} of {topic}[{partition}]@{offset} as "
            f"{format_name}{claimed}: {reason}"
        )


class EncodeError(SerializationError):
    """A value returned by a user function does not fit the sink topic's format."""


class UserFunctionError(FlowsError):
    """A user function raised; the record that caused it is named."""

    def __init__(self, flow: str, topic: str, partition: int, offset: int, cause: BaseException):
        self.flow = flow
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(
            f"flow {flow!r} failed on {topic}[{partition}]@{offset}: "
            f"{type(cause).__name__}: {cause}"
        )

    @classmethod
    def caused_by(
        cls, flow: str, topic: str, partition: int, offset: int, cause: BaseException
    ) -> UserFunctionError:
        """The error chained to ``cause`` (as ``raise ... from cause`` would), for a caller
        that hands it on instead of raising it: a dead letter names the cause's type."""
        error = cls(flow, topic, partition, offset, cause)
        error.__cause__ = cause
        return error


class LateRecord(FlowsError):  # noqa: N818 (the dead letter's error type, not raised)
    """A record of a windowed flow arrived after every window it falls into had closed.

    Not raised to the user: it is the ``flows.error.type`` of the record's dead letter
    (hence the name without ``Error``), counted by ``flows_records_late_total``.
    """

    def __init__(
        self, flow: str, topic: str, partition: int, offset: int, ts: int, stream_time: int | None
    ):
        self.flow = flow
        self.timestamp = ts
        self.stream_time = stream_time
        super().__init__(
            f"flow {flow!r}: {topic}[{partition}]@{offset} at {ts} ms is late: stream time "
            f"{stream_time} had passed the close time of every window it falls into; "
            f"a larger grace accepts later records"
        )


class StateError(FlowsError):
    """The per-key state or its offset watermark is not what the protocol expects."""


class FencedError(FlowsError):
    """Another worker owns the partition: this one must not commit, and rejoins the group.

    Raised on either side of the protocol: :class:`WatermarkMovedError` by the state store,
    :class:`KafkaFencedError` by the broker. Catch this class to handle both.
    """


class WatermarkMovedError(FencedError, StateError):
    """Another worker moved PostgreSQL's watermark: this one lost the partition."""


class KafkaFencedError(FencedError):
    """Kafka refused a transaction: a newer producer took the transactional id, or the
    consumer group moved to a generation this worker is not part of."""


class TableMissingError(StateError):
    """A state or materialised table does not exist: the app never ran, or was reset."""


class BrokerError(FlowsError):
    """Kafka refused an operation for a reason that will not pass by itself (an unknown
    topic, an authorisation failure, an invalid request); the message says which."""


class SchemaRegistryError(FlowsError):
    """A Schema Registry format cannot work, for a reason that will not pass by itself: a
    schema missing from the registry while ``auto_register`` is off, a schema the registry
    refuses as incompatible or invalid, credentials it rejects. Not the record's fault, so
    never a dead letter: the flow stops, and the message says what to fix."""


class FormatNotBoundError(SchemaRegistryError):
    """A Schema Registry format encoded or decoded before a runtime bound it to a registry
    client (``flows run`` binds every format of an app at startup, the test driver binds
    them to an in-memory registry)."""


class StateDecryptionError(StateError):
    """A stored value of a flow with ``encrypt=True`` does not decrypt: the key id it names
    is not among the state keys (``FLOWS_STATE_KEYS``), or it does not authenticate (it was
    changed, or copied from another key's row), or it is not encrypted at all.

    The state is not the record's fault, so the record is never dead-lettered for it; and
    treating the state as absent would overwrite it. The flow stops (like a state that does
    not decode), and the message names the flow, the table, the key and the key id
    (``None`` when the value names none), so the keys can be fixed before it starts again.
    """

    def __init__(self, flow: str, table: str, key: bytes, key_id: str | None, reason: str) -> None:
        self.flow = flow
        self.table = table
        self.key = key
        self.key_id = key_id
        self.reason = reason
        named = "names no key id" if key_id is None else f"was encrypted with key id {key_id!r}"
        super().__init__(
            f"flow {flow!r}: the stored state of key {key!r} in table {table!r} does not "
            f"decrypt: it {named}, and {reason}"
        )


class OffsetsAheadError(StateError):
    """Kafka's committed offset passed PostgreSQL's watermark (the database went back in time)."""

    def __init__(
        self,
        group: str,
        topic: str,
        partition: int,
        committed: int,
        watermark: int,
        sequences: tuple[int, int] | None = None,
    ):
        self.group = group
        self.topic = topic
        self.partition = partition
        self.committed = committed
        self.watermark = watermark
        ahead = (
            f"Kafka's committed offset {committed} is ahead of PostgreSQL's watermark {watermark}"
            if sequences is None
            else f"Kafka's commit sequence {sequences[0]} (offset {committed}) is ahead of "
            f"PostgreSQL's {sequences[1]} (watermark {watermark})"
        )
        super().__init__(
            f"group {group!r}, {topic}[{partition}]: {ahead}, so the database lost updates "
            f"that Kafka believes applied. Restore the database, or start over with "
            f"`flows reset <app> --yes`."
        )


class TransientError(FlowsError):
    """A failure expected to pass (an outage, a timeout, a serialization conflict)."""


class BrokerUnavailableError(TransientError):
    """The Kafka broker did not answer in time."""


class DatabaseUnavailableError(TransientError):
    """PostgreSQL did not answer, or dropped the connection."""


class SchemaRegistryUnavailableError(TransientError):
    """The Schema Registry did not answer (connection refused, a timeout, HTTP 5xx): the
    batch is retried, never dead-lettered, since the records are not at fault."""


class FlowFailedError(FlowsError):
    """A flow failed persistently; the process stops with exit code 1."""
