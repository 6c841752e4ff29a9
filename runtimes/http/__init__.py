"""The HTTP server runtime: health, readiness, metrics, state queries and ingest routes.

It parses requests with the standard library's :mod:`http.server` behind a bounded pool
of request threads (``server.py`` says how it holds up under bursts, slow clients and large
requests). The facade starts it after PostgreSQL and before the workers, and stops it in
reverse order. ``--http-port`` / ``FLOWS_HTTP_PORT`` (default 8080; ``0``: no
server) and ``FLOWS_HTTP_HOST`` (default ``0.0.0.0``) say where it listens; replicas on one
host need distinct ports.

Endpoints (JSON bodies, ``Content-Type: application/json``, unless noted)::

    GET  /healthz              200 {"status": "ok"} while the process runs
    GET  /readyz               200 {"ready": true} once every worker has its first partition
                               assignment, the broker answers and PostgreSQL answers (each
                               check cached for a second); else 503 {"ready": false,
                               "reasons": [...]}
    GET  /metrics              Prometheus text exposition
    GET  /state/<flow>/<key>   200 {"flow", "key", "state"} with an ETag (the state's
                               version); 304 and no body when If-None-Match names it; 404
                               when the key has no state or the app has no stateful flow of
                               that name
    GET  /state/<flow>?prefix=&limit=&after=&where=
                               200 {"items": [{"key", "state", "version"}],
                               "next": <cursor> | null}
    GET  /state/<flow>/<key>/history?limit=&before=
                               200 {"flow", "key", "items": [{"id", "key", "previous",
                               "value", "topic", "partition", "offset", "timestamp",
                               "committed_at"}], "next": <cursor> | null}, newest first
                               (flows with history=True; 400 otherwise)
    GET  /state/<flow>/changes[?key=|?prefix=]
                               200 text/event-stream: one event per committed change,
                               ``id:`` its history id, resumable with Last-Event-ID
    POST <ingest path>         202 {"produced": n} once the broker acknowledged every record

State queries read PostgreSQL, so any replica answers for any key, whichever worker owns it
(a process that runs no stateful flow gets a store for them from the container). A state
table that no worker created yet reads as empty; 503 when PostgreSQL does not answer.

Keys in URLs. ``<key>`` is everything after ``/state/<flow>/``, percent-decoded, and is
encoded with the key format of the stateful step's source (for a re-keyed flow or a
:class:`~flows.wiring.Join`, the intermediate topic, whose key format is the flow's
``key_format``). The format is asked: bytes it decodes are the key as it encodes that value
again, other bytes are UTF-8 text given to its ``encode``. So ``bytes`` keys take the
decoded bytes as they are (``%FF`` for any byte), ``str`` keys the UTF-8 text, ``json`` keys
the text parsed as JSON when it parses (``42`` is the number, ``%2242%22`` the string
``"42"``) and else the text as a JSON string, protobuf keys their wire bytes; a user's own
format works the same way. ``prefix``
matches the start of the *encoded* key bytes (for ``json`` string keys, begin it with
``%22``). ``limit`` defaults to 100 and is capped at 1000; ``next`` is an opaque cursor to
pass as ``after`` for the next page (``null`` on the last page).

History and changes (``history.py``, ``changes.py``; flows with ``history=True``): a
key's page of changes, and a Server-Sent Events stream of the flow's committed changes fed
by PostgreSQL ``LISTEN``/``NOTIFY`` (one connection per process, ``ChangeFeed``), so any
replica streams what any worker committed. ``/state/<flow>/changes`` and a path ending in
``/history`` are these, not keys: the state of a key named ``changes``, or ending in
``/history``, is reached with some of its characters percent-encoded (``%63hanges``,
``a%2Fhistory``).

Search and versions. ``where`` (percent-encoded JSON, for flows whose state format is
``json``) keeps the states whose value contains it, as PostgreSQL's ``jsonb @>`` does
(``where={"plan":"pro"}`` matches ``{"plan": "pro", "total": 3}``); paging works as without
it. A ``where`` that is not JSON, or on a flow whose state is not JSON, is a 400 saying
what to fix. A state's version names the input record that last changed it
(``<partition>-<offset>``; ``u<microseconds>`` of its last write for a state stored before
versions were kept); ``ETag`` carries it quoted, and ``If-None-Match`` with it (or ``*``)
answers 304. Windowed flows and flows with timers or a TTL answer without an ETag.

Values in JSON. Keys and states are decoded with their formats and written as JSON:
protobuf messages through ``google.protobuf.json_format.MessageToDict`` (the canonical proto3
JSON mapping), bytes as standard base64 text (padded), dataclasses as objects, sets as
lists, anything else JSON cannot write as its ``str()``.

Ingest. ``POST`` to the path of an :class:`~flows.wiring.Ingest` route: the body (at most
``max_body`` bytes, with ``Content-Length`` or chunked; 413 past it, 411 without either) is
given to the route's function, and its records are produced with an idempotent producer.
Answers: 202 once every record is acknowledged; 400 for a body that does not decode; 422
when the function fails or an output does not fit the sink's format; 503 when the broker
does not acknowledge within 10 s; 502 when the broker refuses them. After a 503 or 502 some
of the records may have been produced, and a retry produces them again (failures are not
remembered, see below): ingest is at-least-once when the broker fails.

``Idempotency-Key``: a request carrying this header (1 to 255 printable ASCII characters)
produces at most once per route and key *in this process*: a retry gets the first answer
again (with ``Idempotent-Replayed: true``); a concurrent duplicate waits for the first and
gets its answer (409 if that takes longer than 30 s); a key reused with a different body is
refused with 422 (as ``draft-ietf-httpapi-idempotency-key-header`` suggests). Only successes
(202) are remembered, for an hour and for at most 10,000 keys; a failed attempt is
forgotten, so its retry produces. **The memory is per process**: a retry that a load
balancer sends to another replica, or that arrives after a restart, produces again.

Authentication: when ``FLOWS_HTTP_TOKEN`` is set, ``/state/*`` and the ingest routes need
``Authorization: Bearer <token>`` (compared in constant time); 401 otherwise. Bearer JWTs
(``FLOWS_HTTP_JWT_SECRET`` for HS256, ``FLOWS_HTTP_JWT_JWKS`` for RS256) open the flows
their ``flows`` claim names, besides the token (``auth.py``; 403 for another flow).
``/healthz``, ``/readyz`` and ``/metrics`` stay open. The states of a flow with
``encrypt=True`` are decrypted for authenticated callers only: a server that asks for no
credential answers 403 for them (what is encrypted at rest is never open to every caller),
and a process without ``FLOWS_STATE_KEYS`` 503; ``where`` is a 400 for them (PostgreSQL
holds ciphertext).

A bad request never stops the server: each error is one log line (method, path, status,
reason; never a header, so never the token) and a JSON ``{"error": ...}`` answer. A 500 (a
bug, or a stored state that does not decode) answers only ``internal error (request id
<id>)``, with the id also in ``X-Request-Id``; the details and traceback are logged at
ERROR under that id.

Limits: at most ``FLOWS_HTTP_THREADS`` (16) requests are handled at once and
``FLOWS_HTTP_QUEUE`` (128) wait; past that a connection is answered 503 with
``Retry-After: 1`` at once. A client has ``FLOWS_HTTP_HEADER_TIMEOUT`` (10 s) to send its
request line and headers and ``FLOWS_HTTP_BODY_TIMEOUT`` (30 s) for its body (408 past
them); headers are bounded by ``FLOWS_HTTP_MAX_HEADER_BYTES`` (16 KiB) and
``FLOWS_HTTP_MAX_HEADERS`` (100) (431); a body on a route that takes none by 8 KiB (413).

The package, one concern per module: ``api.py`` (:class:`HttpApi`, readiness checks, the
collaborators' protocols), ``state_query.py`` and ``timed_state.py`` (state queries),
``history.py`` (a key's history), ``changes.py`` (streams of changes),
``server.py`` (the handler and :class:`HttpRuntime`),
``auth.py`` (the token and JWTs), ``pool.py`` (the bounded pool of request threads),
``connections.py`` (deadlines and head limits on reads, the 503 at overload), ``bodies.py``
(request bodies), ``streams.py`` (long-lived answers, :class:`StreamResponse`, in threads
of their own), ``idempotency.py`` (:class:`IdempotencyCache`), ``responses.py``
(:class:`Response`, JSON).
The ingest producer is the Kafka adapter's :class:`runtimes.kafka.KafkaIngest`.
"""

from runtimes.http.api import (
    CHECK_TTL,
    CachedCheck,
    Exposition,
    HttpApi,
    IngestBroker,
    WorkerState,
)
from runtimes.http.idempotency import IdempotencyCache
from runtimes.http.responses import (
    JSON_TYPE,
    Response,
    StreamResponse,
    error_response,
    json_response,
    stream_response,
    to_json,
)
from runtimes.http.server import HttpRuntime
from runtimes.http.state_query import QueryStore, cursor, from_cursor, key_bytes

__all__ = [
    "CHECK_TTL",
    "JSON_TYPE",
    "CachedCheck",
    "Exposition",
    "HttpApi",
    "HttpRuntime",
    "IdempotencyCache",
    "IngestBroker",
    "QueryStore",
    "Response",
    "StreamResponse",
    "WorkerState",
    "cursor",
    "error_response",
    "from_cursor",
    "json_response",
    "key_bytes",
    "stream_response",
    "to_json",
]
