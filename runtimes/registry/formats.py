"""A registry format bound to one place: confluent-kafka's own serializer and deserializer.

The wire format (magic byte, schema id, payload; Protobuf's message indexes) is never
written here: confluent-kafka's ``AvroSerializer``/``AvroDeserializer``,
``ProtobufSerializer``/``ProtobufDeserializer`` and ``JSONSerializer``/``JSONDeserializer``
do it all, and register and look up schemas through the client, caching what they learn
(one request per subject and per schema id, not per record). What this module adds is the
place (the ``SerializationContext`` of a topic and a part, from which subjects are named)
and the translation of their errors (:mod:`runtimes.registry.errors`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from confluent_kafka.schema_registry import (
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from flows.errors import ConfigError
from flows.schema_registry import Part, RegistryFormat
from runtimes.registry.client import SerializedFallback
from runtimes.registry.errors import refusal, undecodable

T = TypeVar("T")

#: confluent-kafka's subject name strategies, by :class:`flows.Registry` ``subjects``
STRATEGIES: dict[str, Callable[[Any, str | None], str | None]] = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic_record": topic_record_subject_name_strategy,
}


def _with_context(fn: Callable[[Any], Any] | None) -> Callable[[Any, Any], Any] | None:
    """A one-argument ``from_dict``/``to_dict`` as confluent-kafka calls it (with a
    ``SerializationContext`` second, which flows' callables do not need)."""
    if fn is None:
        return None
    return lambda value, _ctx: fn(value)


def serdes(fmt: RegistryFormat[Any], client: Any) -> tuple[Any, Any]:
    """confluent-kafka's serializer and deserializer for ``fmt``, over ``client``. The
    subject naming strategy is always given: confluent-kafka's default (``ASSOCIATED``)
    asks the registry for topic associations, which registries other than Confluent's
    may not serve."""
    options = fmt.registry
    strategy = STRATEGIES[options.subjects]
    reading = {"use.latest.version": options.use_latest_version, "subject.name.strategy": strategy}
    writing = {**reading, "auto.register.schemas": options.auto_register}
    if fmt.kind == "avro":
        return (
            AvroSerializer(client, fmt.schema, _with_context(fmt.to_dict), writing),
            AvroDeserializer(client, fmt.schema, _with_context(fmt.from_dict), conf=reading),
        )
    if fmt.kind == "json_schema":
        return (
            JSONSerializer(fmt.schema, client, _with_context(fmt.to_dict), writing),
            JSONDeserializer(fmt.schema, _with_context(fmt.from_dict), client, reading),
        )
    return (
        ProtobufSerializer(fmt.message_class, client, writing),
        ProtobufDeserializer(fmt.message_class, reading, SerializedFallback(client)),
    )


class BoundFormat(Generic[T]):
    """``declared`` as used for the ``part`` of ``topic`` (a state table's name for a
    state format): a :class:`flows.formats.Format` whose bytes are in Confluent's wire
    format. Errors as :mod:`runtimes.registry.errors` says."""

    __slots__ = ("_context", "_deserialize", "_serialize", "declared", "name", "subject", "url")

    def __init__(
        self, declared: RegistryFormat[T], topic: str, part: Part, client: Any, url: str
    ) -> None:
        self.declared = declared
        self.name = declared.name
        self.url = url
        field = MessageField.KEY if part == "key" else MessageField.VALUE
        self._context = SerializationContext(topic, field)
        #: the subject the format writes to (what its strategy names, for messages)
        self.subject = STRATEGIES[declared.registry.subjects](self._context, declared.record_name)
        try:
            self._serialize, self._deserialize = serdes(declared, client)
        except Exception as error:  # a schema confluent-kafka cannot parse, ...
            raise ConfigError(
                f"the {declared.name} format of {topic!r} ({part}) cannot be built: "
                f"{type(error).__name__}: {error}"
            ) from error

    def encode(self, value: T) -> bytes:
        try:
            data: bytes = self._serialize(value, self._context)
        except Exception as error:
            refused = refusal(error, url=self.url, subject=self.subject, decoding=False)
            if refused is None:
                raise  # the value does not fit the schema: an EncodeError for the caller
            raise refused from error
        return data

    def decode(self, data: bytes) -> T:
        try:
            value: T = self._deserialize(data, self._context)
        except Exception as error:
            refused = refusal(error, url=self.url, subject=self.subject, decoding=True)
            if refused is not None:
                raise refused from error
            raise undecodable(error, data, self.url) from error
        return value

    def __repr__(self) -> str:
        return f"<{self.name} subject {self.subject!r} at {self.url}>"


__all__ = ["STRATEGIES", "BoundFormat", "serdes"]
