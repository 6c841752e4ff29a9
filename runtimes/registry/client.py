"""The Schema Registry client of a process, from its settings: the one translation of
flows' settings to confluent-kafka's ``SchemaRegistryClient`` configuration."""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry import SchemaRegistryError as ConfluentRegistryError

from runtimes.config import Settings

#: seconds a request to the registry may take. A worker waits on it mid-batch, and an
#: outage is retried by the worker with its own backoff (the batch as a whole), so a
#: request gives up soon rather than holding the batch.
REQUEST_TIMEOUT = 10.0
#: the client's own retries of a failed request (confluent-kafka's default is 3, with
#: waits of up to 20 s): one, to ride out a blip; the worker's retries do the rest
CLIENT_RETRIES = 1


def client_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka's client configuration for the registry of ``settings``: URL, basic
    auth, TLS (a CA to trust, a client certificate and its key)."""
    config: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": REQUEST_TIMEOUT,
        "max.retries": CLIENT_RETRIES,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 1000,
    }
    if settings.schema_registry_user is not None:
        password = settings.schema_registry_password or ""
        config["basic.auth.user.info"] = f"{settings.schema_registry_user}:{password}"
    if settings.schema_registry_ca is not None:
        config["ssl.ca.location"] = settings.schema_registry_ca
    if settings.schema_registry_cert is not None:
        config["ssl.certificate.location"] = settings.schema_registry_cert
    if settings.schema_registry_key is not None:
        config["ssl.key.location"] = settings.schema_registry_key
    return config


def registry_client(config: dict[str, Any]) -> Any:
    """A client for ``config``; an in-memory one for a ``mock://`` URL (confluent-kafka's
    ``MockSchemaRegistryClient``, whose schemas live in that client object only)."""
    return SchemaRegistryClient.new_client(config)


def mock_url() -> str:
    """A ``mock://`` URL nobody else uses (a binder's registry is its own)."""
    return f"mock://flows-{uuid.uuid4().hex[:12]}"


class SerializedFallback:
    """``client`` as confluent-kafka's ``ProtobufDeserializer`` should see it.

    That deserializer asks for a writer schema ``?format=serialized`` (a base64
    ``FileDescriptorProto``). Apicurio Registry (3.x) cannot render that format for a
    schema that confluent-kafka's ``ProtobufSerializer`` registered, which is stored in
    that very format already: it answers HTTP 500 (and 400 for a schema that is not
    Protobuf). The schema is then asked for again as stored; a registry that is down fails
    the second request too, and a schema that is not Protobuf fails to parse (the record's
    fault). Everything else is the client's own.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_schema(
        self,
        schema_id: int,
        subject_name: str | None = None,
        fmt: str | None = None,
        reference_format: str | None = None,
    ) -> Any:
        try:
            return self._client.get_schema(schema_id, subject_name, fmt, reference_format)
        except ConfluentRegistryError as error:
            status = error.http_status_code
            if fmt != "serialized" or not (status == 400 or status >= 500):
                raise
        return self._client.get_schema(schema_id, subject_name, None, reference_format)


__all__ = [
    "CLIENT_RETRIES",
    "REQUEST_TIMEOUT",
    "SerializedFallback",
    "client_config",
    "mock_url",
    "registry_client",
]
