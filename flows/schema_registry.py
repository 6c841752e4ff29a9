"""Schema Registry formats: Avro, Protobuf and JSON Schema in Confluent's wire format.

A record in Confluent's wire format is a magic byte, the id of its schema in a Schema
Registry, and the payload; readers find the writer's schema by that id. The formats here
are *declared* in the core and hold no client. What they need of a registry (its URL and
credentials, confluent-kafka's serializers) belongs to a runtime, which binds each declared
format once, at startup, for each place it is used: a topic's key or value, a state table,
an ingest body (:class:`FormatBinder`, through :meth:`flows.App.bind`). ``flows run`` binds
them to the registry of its settings; :class:`flows.testing.TestDriver` to an in-memory
one. A format used unbound raises :class:`~flows.errors.FormatNotBoundError`.

Why per place: a subject (the name a schema is registered under) derives from the topic and
the part (key or value) by the naming strategy of :class:`Registry`, so one declared format
writes subject ``orders-value`` on one topic and ``totals-value`` on another.

Errors follow the :class:`~flows.formats.Format` contract: bytes that do not decode raise
:class:`WireFormatError` (a ``ValueError`` carrying the schema id), which becomes a
:class:`~flows.errors.DecodeError` and a dead letter; a registry that does not answer is a
:class:`~flows.errors.SchemaRegistryUnavailableError` (the batch is retried); a registry
that refuses (a schema missing while ``auto_register`` is off, an incompatible one) is a
:class:`~flows.errors.SchemaRegistryError` (the flow stops). Neither is the record's fault.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from flows.errors import FormatNotBoundError

if TYPE_CHECKING:
    from flows.formats import Format

T = TypeVar("T")

#: how a subject is named: ``<topic>-key``/``<topic>-value``, the record's full name, or
#: ``<topic>-<record name>`` (confluent-kafka's topic, record and topic-record strategies)
SubjectNaming = Literal["topic", "record", "topic_record"]
#: the part of a message a format is bound to (a state table's format is its ``value``)
Part = Literal["key", "value"]
SchemaKind = Literal["avro", "protobuf", "json_schema"]


@dataclass(frozen=True, slots=True)
class Registry:
    """How a registry format names its subject and finds its schema id.

    * ``subjects``: the naming strategy: ``"topic"`` (``<topic>-key``, ``<topic>-value``,
      Confluent's usual default), ``"record"`` (the record's full name: the Avro record's
      namespace and name, the Protobuf message's full name, the JSON Schema's ``title``),
      or ``"topic_record"`` (``<topic>-<record name>``).
    * ``auto_register``: on the first write, register the format's schema under its
      subject when it is not there yet (the registry checks compatibility). Off, a schema
      missing from the subject stops the flow with a
      :class:`~flows.errors.SchemaRegistryError`: register it first.
    * ``use_latest_version``: write with the subject's latest schema rather than the
      format's own, and read into it (needs ``auto_register=False``, as in confluent-kafka).

    ``Registry()`` is what a registry format uses when none is given.
    """

    subjects: SubjectNaming = "topic"
    auto_register: bool = True
    use_latest_version: bool = False

    def __post_init__(self) -> None:
        if self.subjects not in ("topic", "record", "topic_record"):
            raise ValueError(
                f"subjects must be 'topic', 'record' or 'topic_record', not {self.subjects!r}"
            )
        if self.auto_register and self.use_latest_version:
            raise ValueError(
                "use_latest_version writes with a schema already registered: "
                "set auto_register=False with it"
            )


class WireFormatError(ValueError):
    """Bytes that a registry format cannot read: no magic byte, an unknown schema id, a
    payload that does not match the schema of its id. ``schema_id`` is the id (or guid)
    the bytes carry, when they carry one; :func:`flows.encoding.decode_part` puts it in
    the :class:`~flows.errors.DecodeError`."""

    def __init__(self, message: str, schema_id: int | str | None = None) -> None:
        super().__init__(message)
        self.schema_id = schema_id


class RegistryFormat(Generic[T]):
    """A declared format in Confluent's wire format: a schema and :class:`Registry`
    options, no client. Build one with :func:`avro`, :func:`json_schema` or
    :func:`flows.protobuf` with ``registry=``.

    ``from_dict`` turns a decoded Avro or JSON value (a dict for a record) into the
    user's type, ``to_dict`` the other way before encoding; without them values are
    dicts. ``record_name`` is what the ``record`` naming strategies use.
    """

    __slots__ = (
        "from_dict",
        "kind",
        "message_class",
        "name",
        "record_name",
        "registry",
        "schema",
        "to_dict",
    )

    def __init__(
        self,
        kind: SchemaKind,
        name: str,
        registry: Registry,
        *,
        schema: str | None = None,
        message_class: type[T] | None = None,
        record_name: str | None = None,
        from_dict: Callable[[Any], T] | None = None,
        to_dict: Callable[[T], Any] | None = None,
    ) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"registry must be a flows.Registry, not {registry!r}")
        if registry.subjects != "topic" and not record_name:
            raise ValueError(
                f"{name}: subjects={registry.subjects!r} names subjects after the record, "
                "and this schema names none (an Avro record's name, a JSON Schema's title)"
            )
        self.kind = kind
        self.name = name
        self.registry = registry
        self.schema = schema
        self.message_class = message_class
        self.record_name = record_name
        self.from_dict = from_dict
        self.to_dict = to_dict

    def _unbound(self) -> FormatNotBoundError:
        return FormatNotBoundError(
            f"the {self.name} format is not bound to a Schema Registry: it must be bound by "
            "the runtime (`flows run` binds an app's formats at startup) or the test driver "
            "(flows.testing.TestDriver binds them to an in-memory registry); use it through "
            "the app they return (App.bind), not as declared"
        )

    def encode(self, value: T) -> bytes:
        raise self._unbound()

    def decode(self, data: bytes) -> T:
        raise self._unbound()

    def __repr__(self) -> str:
        return f"<{self.name} {self.registry}>"


class FormatBinder(Protocol):
    """Binds declared registry formats to a registry client; a runtime provides one
    (``runtimes.registry.RegistryBinder``)."""

    def bind(self, fmt: RegistryFormat[T], topic: str, part: Part) -> Format[T]:
        """``fmt`` as used for the ``part`` of ``topic`` (for a state format, ``topic`` is
        the state table's name). Asked again for the same place, returns the same object:
        the compiler compares formats by identity (bytes are copied between topics whose
        formats are the same object)."""
        ...


def _schema_text(schema: str | Mapping[str, Any] | list[Any], what: str) -> tuple[str, Any]:
    """The schema as JSON text and as parsed JSON; a ``ValueError`` names what is wrong."""
    if isinstance(schema, str):
        try:
            return schema, json.loads(schema)
        except json.JSONDecodeError as error:
            raise ValueError(f"the {what} schema is not JSON: {error}") from error
    if isinstance(schema, Mapping | list):
        return json.dumps(schema), schema
    raise TypeError(f"the {what} schema must be JSON text or a dict, not {type(schema).__name__}")


def avro(
    schema: str | Mapping[str, Any],
    registry: Registry | None = None,
    *,
    from_dict: Callable[[dict[str, Any]], Any] | None = None,
    to_dict: Callable[[Any], dict[str, Any]] | None = None,
) -> RegistryFormat[Any]:
    """Avro in Confluent's wire format, with ``schema`` (JSON text or a dict) as the
    writer schema when encoding and the reader schema when decoding: a record written with
    a compatible newer schema (a field added with a default) still decodes, its writer
    schema found by id. Values are what fastavro reads and writes (dicts for records),
    or pass through ``from_dict``/``to_dict``. ``registry`` defaults to ``Registry()``.
    """
    text, parsed = _schema_text(schema, "Avro")
    record_name: str | None = None
    if isinstance(parsed, dict):
        name = parsed.get("name")
        if isinstance(name, str):
            namespace = parsed.get("namespace")
            record_name = f"{namespace}.{name}" if namespace and "." not in name else name
        elif isinstance(parsed.get("type"), str):
            record_name = parsed["type"]
    elif isinstance(parsed, str):  # a primitive type: "string"
        record_name = parsed
    return RegistryFormat(
        "avro",
        f"avro:{record_name or 'union'}",
        registry or Registry(),
        schema=text,
        record_name=record_name,
        from_dict=from_dict,
        to_dict=to_dict,
    )


def json_schema(
    schema: str | Mapping[str, Any],
    registry: Registry | None = None,
    *,
    from_dict: Callable[[Any], Any] | None = None,
    to_dict: Callable[[Any], Any] | None = None,
) -> RegistryFormat[Any]:
    """JSON validated against a JSON Schema, in Confluent's wire format. Values are what
    ``json`` reads and writes, or pass through ``from_dict``/``to_dict``; a value that
    does not validate does not encode, bytes that do not validate do not decode. The
    schema's ``title`` is its record name. ``registry`` defaults to ``Registry()``."""
    text, parsed = _schema_text(schema, "JSON")
    title = parsed.get("title") if isinstance(parsed, dict) else None
    record_name = title if isinstance(title, str) and title else None
    return RegistryFormat(
        "json_schema",
        f"json-schema:{record_name}" if record_name else "json-schema",
        registry or Registry(),
        schema=text,
        record_name=record_name,
        from_dict=from_dict,
        to_dict=to_dict,
    )


def protobuf_registry(message_class: type[T], registry: Registry) -> RegistryFormat[T]:
    """A generated protobuf message class in Confluent's wire format (what
    :func:`flows.protobuf` returns when given a ``registry``)."""
    full_name: str = getattr(message_class, "DESCRIPTOR").full_name  # noqa: B009
    return RegistryFormat(
        "protobuf",
        f"protobuf+registry:{full_name}",
        registry,
        message_class=message_class,
        record_name=full_name,
    )


__all__ = [
    "FormatBinder",
    "Part",
    "Registry",
    "RegistryFormat",
    "SubjectNaming",
    "WireFormatError",
    "avro",
    "json_schema",
    "protobuf_registry",
]
