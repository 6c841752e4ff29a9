"""``flows produce`` and ``flows consume`` with Schema Registry formats (``--format``).

``flows produce TOPIC --format avro --schema order.avsc`` reads one JSON value a line and
writes it in Confluent's wire format, registering the schema under ``TOPIC-value`` when it
is not there yet (the formats' defaults: :class:`flows.Registry`). ``--schema`` is:

* ``avro``: a file holding the Avro schema (JSON);
* ``json-schema``: a file holding the JSON Schema;
* ``protobuf``: the generated message class, ``module:Class`` (the module importable, e.g.
  ``shop.orders_pb2:Order``) or ``path/to/orders_pb2.py:Order``; a line is the message
  in protobuf's JSON mapping.

``flows consume TOPIC --format avro|json-schema`` prints each value decoded with the
schema its id names in the registry, as JSON (no ``--schema`` needed);
``--format protobuf`` needs ``--schema module:Class``, the class to parse into. A value
that does not decode is shown with the reason, and consuming goes on.

Blank lines are skipped; a line that is not JSON, or does not fit the schema, stops
``produce`` with an error naming the line (exit code 2). Keys stay text (``--key``).
The registry is the one of the settings (``FLOWS_SCHEMA_REGISTRY_URL``, or
``--schema-registry-url``), with their credentials.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from flows.errors import ConfigError, FlowsError
from flows.formats import protobuf
from flows.schema_registry import Registry, RegistryFormat, avro, json_schema
from runtimes.config import Settings

# confluent-kafka's registry modules (and runtimes.registry, built on them) are imported in
# the functions that use them: `flows` builds its parser, and these options, on every run
# of every command, and most never touch a registry.

FORMATS = ("avro", "protobuf", "json-schema")


def add_options(sub: argparse.ArgumentParser, *, produce: bool) -> None:
    """``--format``, ``--schema`` and ``--schema-registry-url`` of produce or consume."""
    sub.add_argument(
        "--format",
        choices=FORMATS,
        help="values in Confluent's wire format with this kind of schema, through the "
        "Schema Registry (default: the bytes of each line as they are)",
    )
    sub.add_argument(
        "--schema",
        metavar="FILE|MODULE:CLASS",
        help="the Avro or JSON Schema file, or the protobuf message class as module:Class"
        + (" (needed with --format)" if produce else " (--format protobuf only)"),
    )
    sub.add_argument(
        "--schema-registry-url",
        metavar="URL",
        help="the Schema Registry (FLOWS_SCHEMA_REGISTRY_URL, "
        "default http://localhost:8081/apis/ccompat/v7)",
    )


def message_class(reference: str) -> type[Message]:
    """The protobuf message class ``module:Class`` or ``path/to/file.py:Class`` names."""
    module_name, sep, name = reference.rpartition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"--schema {reference!r}: expected module:Class, e.g. shop_pb2:Order")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None:
                raise ConfigError(f"--schema {reference!r}: cannot import {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as error:
        raise ConfigError(
            f"--schema {reference!r}: cannot import {module_name}: {error}"
        ) from error
    found = getattr(module, name, None)
    if not (isinstance(found, type) and issubclass(found, Message)):
        raise ConfigError(f"--schema {reference!r}: {name} is not a protobuf message class")
    return found


def _declared(kind: str, schema: str | None) -> RegistryFormat[Any]:
    if schema is None:
        raise ConfigError(f"--format {kind} needs --schema (see `flows produce --help`)")
    if kind == "protobuf":
        return protobuf(message_class(schema), Registry())
    try:
        text = Path(schema).read_text(encoding="utf-8")
        return avro(text) if kind == "avro" else json_schema(text)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--schema {schema}: {error}") from error


class _Values:
    """What ``--format`` needs for one topic's values: a registry client, closed by
    :meth:`close` when the command is done."""

    def __init__(self, settings: Settings) -> None:
        from runtimes.registry import RegistryBinder

        self.binder = RegistryBinder.from_settings(settings)

    def close(self) -> None:
        self.binder.close()


class LineEncoder(_Values):
    """Turns line ``number``'s bytes into a record's value (None for a blank line)."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.declared = _declared(args.format, args.schema)
        super().__init__(settings)
        self.bound = self.binder.bind(self.declared, args.topic, "value")

    def __call__(self, number: int, line: bytes) -> bytes | None:
        if not line.strip():
            return None
        declared = self.declared
        try:
            value: Any = json.loads(line)
            if declared.message_class is not None:  # protobuf's JSON mapping
                value = json_format.ParseDict(value, declared.message_class())
            data: bytes = self.bound.encode(value)
        except FlowsError:
            raise  # the registry down or refusing: not the line's fault
        except Exception as error:
            raise ConfigError(
                f"line {number} does not fit {declared.name}: {type(error).__name__}: {error}"
            ) from error
        return data


class ValueShower(_Values):
    """Shows a record's value as JSON, or why it does not decode. Avro and JSON Schema
    values are read with their writer's schema, found by the id they carry."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.schema_registry.json_schema import JSONDeserializer
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        from runtimes.registry.client import SerializedFallback
        from runtimes.registry.formats import STRATEGIES

        if args.format == "protobuf" and args.schema is None:
            raise ConfigError("--format protobuf needs --schema module:Class to parse into")
        super().__init__(settings)
        client = self.binder.client
        conf = {"subject.name.strategy": STRATEGIES["topic"]}
        if args.format == "avro":
            self.deserialize: Any = AvroDeserializer(client, None, conf=conf)
        elif args.format == "json-schema":
            self.deserialize = JSONDeserializer(None, None, client, conf)
        else:
            cls = message_class(args.schema)
            self.deserialize = ProtobufDeserializer(cls, conf, SerializedFallback(client))
        self.context = SerializationContext(args.topic, MessageField.VALUE)

    def __call__(self, data: bytes) -> str:
        from runtimes.registry.errors import refusal, undecodable

        url = self.binder.url
        try:
            value = self.deserialize(data, self.context)
        except Exception as error:
            refused = refusal(error, url=url, subject=None, decoding=True)
            if refused is not None:
                raise refused from error
            return f"(undecodable: {undecodable(error, data, url)})"
        if isinstance(value, Message):
            return json_format.MessageToJson(value, indent=None)
        return json.dumps(value, ensure_ascii=False, default=_jsonable)


def value_encoder(args: argparse.Namespace, settings: Settings) -> LineEncoder | None:
    """The encoder of ``--format``'s lines, or None without ``--format``."""
    return None if args.format is None else LineEncoder(args, settings)


def value_shower(args: argparse.Namespace, settings: Settings) -> ValueShower | None:
    """The shower of ``--format``'s values, or None without ``--format``."""
    return None if args.format is None else ValueShower(args, settings)


def _jsonable(value: Any) -> Any:
    """JSON for what Avro decodes and ``json`` cannot write (bytes, decimals, dates)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


__all__ = [
    "FORMATS",
    "LineEncoder",
    "ValueShower",
    "add_options",
    "message_class",
    "value_encoder",
    "value_shower",
]
