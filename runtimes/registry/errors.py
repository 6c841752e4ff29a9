"""confluent-kafka's Schema Registry errors translated at the edge.

Three kinds, by whose fault they are:

* the registry's: it did not answer (connection refused, a timeout, a TLS handshake that
  failed, HTTP 408, 429 or 5xx): :class:`~flows.errors.SchemaRegistryUnavailableError`,
  a transient error, so the worker retries the batch and finally stops;
* the deployment's: it answered no (a schema missing while ``auto_register`` is off, an
  incompatible or invalid schema, rejected credentials, a URL that serves no registry):
  :class:`~flows.errors.SchemaRegistryError`, which stops the flow;
* the record's: bytes that do not decode (no magic byte, an unknown schema id, a payload
  that does not match its schema): :class:`~flows.schema_registry.WireFormatError`, which
  becomes a :class:`~flows.errors.DecodeError` and a dead letter. A value that does not
  fit the schema keeps its own error, which becomes an :class:`~flows.errors.EncodeError`.
"""

from __future__ import annotations

import io
from typing import Any

# confluent-kafka's registry client sends its requests with httpx2 on Python 3.10 and newer
# (its ``schemaregistry`` extra requires it), and lets its transport errors through
import httpx2
from confluent_kafka.schema_registry import SchemaRegistryError as ConfluentRegistryError
from confluent_kafka.schema_registry.serde import SchemaId

from flows.errors import SchemaRegistryError, SchemaRegistryUnavailableError
from flows.schema_registry import WireFormatError

#: HTTP statuses of a registry that may answer later (confluent-kafka retries the same)
UNAVAILABLE_STATUSES = frozenset({408, 429})
#: the registry's error codes for a subject, or a version of one, it does not know; its
#: other 404 codes say a schema is unknown (Confluent's and Apicurio's say 40403 for an
#: unknown id, confluent-kafka's mock 40400). A 404 without a code is no registry answering
#: (a URL that is not the API root).
SUBJECT_NOT_FOUND = frozenset({40401, 40402})
#: the schema type :func:`schema_id_of` reads ids as: one without Protobuf's message
#: indexes, which follow the id, so that an id is named even when those are garbage
ID_ONLY = "AVRO"


def refusal(
    error: BaseException, *, url: str, subject: str | None, decoding: bool
) -> SchemaRegistryUnavailableError | SchemaRegistryError | None:
    """The flows error of a registry that failed or refused a request, or None when
    ``error`` is not one (or, ``decoding``, when it is an unknown schema id: the record's
    fault, see :func:`undecodable`)."""
    if isinstance(error, httpx2.TransportError):
        return SchemaRegistryUnavailableError(
            f"the Schema Registry at {url} did not answer: {type(error).__name__}: {error}"
        )
    if not isinstance(error, ConfluentRegistryError):
        return None
    status, code = error.http_status_code, error.error_code
    if status in UNAVAILABLE_STATUSES or status >= 500:
        return SchemaRegistryUnavailableError(
            f"the Schema Registry at {url} failed (HTTP {status}): {error.error_message}"
        )
    if decoding and status == 404 and unknown_schema(code):
        return None
    if status in (401, 403):
        return SchemaRegistryError(
            f"the Schema Registry at {url} refused flows' credentials (HTTP {status}): "
            f"check FLOWS_SCHEMA_REGISTRY_USER and FLOWS_SCHEMA_REGISTRY_PASSWORD"
        )
    if status == 404:
        return SchemaRegistryError(
            f"the Schema Registry at {url} has no schema for subject {subject!r} "
            f"({error.error_message}, code {code}): register it first, or use "
            f"Registry(auto_register=True); is FLOWS_SCHEMA_REGISTRY_URL the registry's "
            f"API root (e.g. http://localhost:8081/apis/ccompat/v7 for Apicurio)?"
        )
    if status == 409:
        return SchemaRegistryError(
            f"the Schema Registry at {url} refused the schema of subject {subject!r} as "
            f"incompatible with its earlier versions: {error.error_message}"
        )
    return SchemaRegistryError(
        f"the Schema Registry at {url} refused a request for subject {subject!r} "
        f"(HTTP {status}, code {code}): {error.error_message}"
    )


def unknown_schema(code: Any) -> bool:
    """Whether a 404's registry error code says a schema (not a subject) is unknown."""
    return isinstance(code, int) and 40400 <= code < 40500 and code not in SUBJECT_NOT_FOUND


def schema_id_of(data: bytes) -> int | str | None:
    """The schema id (or guid) that ``data`` carries in Confluent's wire format, read by
    confluent-kafka's own parser; None when it carries none."""
    schema_id = SchemaId(ID_ONLY)
    try:
        schema_id.from_bytes(io.BytesIO(data))
    except Exception:  # no magic byte, too short: no id to name
        return None
    found: Any = schema_id.id if schema_id.id is not None else schema_id.guid
    return found if found is None or isinstance(found, int) else str(found)


def undecodable(error: BaseException, data: bytes, url: str) -> WireFormatError:
    """The format error of bytes that do not decode, naming the schema id they carry."""
    schema_id = schema_id_of(data)
    if isinstance(error, ConfluentRegistryError):  # a 404 for the schema: see refusal()
        reason = f"unknown schema id: the Schema Registry at {url} has no schema {schema_id}"
    elif schema_id is None:
        reason = (
            f"not in Confluent's wire format (a magic byte and a schema id first; "
            f"{len(data)} bytes starting {data[:5].hex() or 'with nothing'}): {error}"
        )
    else:
        reason = f"the payload does not match its schema: {type(error).__name__}: {error}"
    return WireFormatError(reason, schema_id)


__all__ = ["refusal", "schema_id_of", "undecodable", "unknown_schema"]
