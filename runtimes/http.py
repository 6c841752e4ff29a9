"""The HTTP server runtime: health, readiness, metrics, state queries and ingest routes.

It runs the standard library's :class:`~http.server.ThreadingHTTPServer` in a daemon thread
(one thread per request). The facade starts it after PostgreSQL and before the workers, and
stops it in reverse order. ``--http-port`` / ``FLOWS_HTTP_PORT`` (default 8080; ``0``: no
server) and ``FLOWS_HTTP_HOST`` (default ``0.0.0.0``) say where it listens; replicas on one
host need distinct ports.

Endpoints (JSON bodies, ``Content-Type: application/json``, unless noted)::

    GET  /healthz              200 {"status": "ok"} while the process runs
    GET  /readyz               200 {"ready": true} once every worker has its first partition
                               assignment, the broker answers and PostgreSQL answers (each
                               check cached for a second); else 503 {"ready": false,
                               "reasons": [...]}
    GET  /metrics              Prometheus text exposition
    GET  /state/<flow>/<key>   200 {"flow", "key", "state"}; 404 when the key has no state or
                               the app has no stateful flow of that name
    GET  /state/<flow>?prefix=&limit=&after=
                               200 {"items": [{"key", "state"}], "next": <cursor> | null}
    POST <ingest path>         202 {"produced": n} once the broker acknowledged every record

State queries read PostgreSQL, so any replica answers for any key, whichever worker owns it
(a process that runs no stateful flow gets a store for them from the container). A state
table that no worker created yet reads as empty; 503 when PostgreSQL does not answer.

Keys in URLs. ``<key>`` is everything after ``/state/<flow>/``, percent-decoded, and is
encoded with the key format of the stateful step's source (for a re-keyed flow or a
:class:`~flows.wiring.Join`, the intermediate topic, whose key format is the flow's
``key_format``): ``bytes`` keys take the decoded bytes as they are (``%FF`` for any byte),
``str`` keys the UTF-8 text, ``json`` keys the text parsed as JSON when it parses (``42`` is
the number, ``%2242%22`` the string ``"42"``) and else the text as a JSON string. ``prefix``
matches the start of the *encoded* key bytes (for ``json`` string keys, begin it with
``%22``). ``limit`` defaults to 100 and is capped at 1000; ``next`` is an opaque cursor to
pass as ``after`` for the next page (``null`` on the last page).

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
``Authorization: Bearer <token>`` (compared in constant time); 401 otherwise. ``/healthz``,
``/readyz`` and ``/metrics`` stay open.

A bad request never stops the server: each error is one log line (method, path, status,
reason; never a header, so never the token) and a JSON ``{"error": ...}`` answer.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

from confluent_kafka import KafkaError, KafkaException, Producer
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage
from prometheus_client import CONTENT_TYPE_LATEST

from flows.app import App
from flows.errors import (
    BrokerUnavailableError,
    ConfigError,
    DecodeError,
    EncodeError,
    FlowsError,
    StateError,
    TransientError,
    UserFunctionError,
)
from flows.formats import BytesFormat, Format, JsonFormat
from flows.records import RawMessage
from flows.steps import IngestRoute, StatefulStep, Step
from flows.topics import Topic
from runtimes.config import Settings
from runtimes.kafka import Admin, translate

log = logging.getLogger("flows.http")

JSON_TYPE = "application/json"
#: how long an ingest request waits for the broker's acknowledgements
INGEST_TIMEOUT = 10.0
#: how long a readiness check's answer is reused
CHECK_TTL = 1.0
#: the broker check's own bound
CHECK_TIMEOUT = 2.0
PAGE_DEFAULT, PAGE_MAX = 100, 1000
#: bytes of an oversized body read and discarded before answering 413, so the client, still
#: sending, reads the answer instead of a connection reset
_DRAIN_LIMIT = 1 << 20
_UNDEFINED_TABLE = "42P01"


# --- collaborators -----------------------------------------------------------------------


@runtime_checkable
class QueryStore(Protocol):
    """What state queries need of a state store (both stores have it)."""

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def scan(
        self, table: str, prefix: bytes, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]: ...


class Exposition(Protocol):
    """Metrics that render as Prometheus text (:class:`runtimes.metrics.PrometheusMetrics`)."""

    def exposition(self) -> bytes: ...


class WorkerState(Protocol):
    """What readiness reads of a worker (:class:`runtimes.worker.Worker`)."""

    @property
    def step(self) -> Step: ...

    @property
    def assigned_once(self) -> threading.Event: ...

    @property
    def stopping(self) -> threading.Event: ...

    @property
    def failure(self) -> BaseException | None: ...


class IngestBroker(Protocol):
    """The broker as the HTTP server uses it: a health check and acknowledged produces."""

    def open(self, topics: Sequence[Topic]) -> None:
        """Creates the missing ``topics`` (the ingest routes' sinks) and gets ready to send."""

    def check(self) -> None:
        """Returns when the broker answers; raises :class:`FlowsError` otherwise."""

    def send(self, messages: Sequence[RawMessage]) -> None:
        """Produces ``messages``, returning once every one is acknowledged.

        Raises :class:`BrokerUnavailableError` when they are not acknowledged in time and
        another :class:`FlowsError` when the broker refuses one.
        """

    def close(self) -> None:
        """Waits (bounded) for what is in flight, then releases the clients."""


class KafkaIngest:
    """:class:`IngestBroker` over confluent-kafka: one idempotent producer for all requests.

    A thread serves the producer's delivery reports; each request waits only for its own
    records. Records time out after ``timeout`` seconds (``message.timeout.ms``), so a
    request that gave up is not delivered much later.
    """

    def __init__(self, settings: Settings, client_id: str, timeout: float = INGEST_TIMEOUT) -> None:
        self.settings = settings
        self.client_id = client_id
        self.timeout = timeout
        self._admin: Admin | None = None
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    def open(self, topics: Sequence[Topic]) -> None:
        self._admin = Admin(self.settings.admin_config(), timeout=self.settings.startup_timeout)
        if not topics:
            return
        created = self._admin.ensure_topics(topics)
        if created:
            log.info("created topics %s", ", ".join(created))
        self._current()  # a bad librdkafka option fails the start, not the first request

    def _current(self) -> Producer:
        """The producer, created (with its poller thread) on first use."""
        with self._lock:
            if self._producer is None:
                if self._stopping.is_set():
                    raise BrokerUnavailableError("the HTTP server is stopping")
                self._producer = self._new_producer()
                if self._poller is None:
                    self._poller = threading.Thread(
                        target=self._poll, name="flows-http-producer", daemon=True
                    )
                    self._poller.start()
            return self._producer

    def _new_producer(self) -> Producer:
        config = self.settings.producer_config()
        config["message.timeout.ms"] = int(self.timeout * 1000)
        config["client.id"] = self.client_id
        config["delivery.report.only.error"] = False  # send() counts every acknowledgement
        try:
            return Producer(config)
        except KafkaException as error:
            raise ConfigError(f"cannot create the ingest producer: {error}") from error

    def _poll(self) -> None:
        while not self._stopping.is_set():
            producer = self._producer
            if producer is None:
                self._stopping.wait(0.1)
            else:
                producer.poll(0.1)

    def check(self) -> None:
        if self._admin is None:
            raise BrokerUnavailableError("the broker client is not open")
        try:
            self._admin.client.list_topics(timeout=CHECK_TIMEOUT)
        except KafkaException as error:
            raise translate(error, f"asking {self._admin.bootstrap} for metadata") from error

    def send(self, messages: Sequence[RawMessage]) -> None:
        if not messages:
            return
        producer = self._current()
        lock, done = threading.Lock(), threading.Event()
        waiting = [len(messages)]
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            with lock:
                if error is not None:
                    errors.append(error)
                waiting[0] -= 1
                if waiting[0] == 0:
                    done.set()

        deadline = time.monotonic() + self.timeout
        for out in messages:
            while True:
                try:
                    producer.produce(
                        out.topic,
                        out.value,
                        out.key,
                        headers=list(out.headers) or None,
                        timestamp=out.timestamp or 0,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:  # the queue is full: the poller thread drains it
                    if time.monotonic() > deadline:
                        raise BrokerUnavailableError(
                            f"the producer's queue stayed full for {self.timeout:g} s"
                        ) from None
                    time.sleep(0.02)
                except KafkaException as error:
                    raise translate(error, f"producing to {out.topic!r}") from error
        # The records time out after self.timeout; the margin lets their reports arrive.
        if not done.wait(self.timeout + 5):
            raise BrokerUnavailableError(
                f"the broker did not acknowledge {waiting[0]} records within {self.timeout:g} s"
            )
        if errors:
            if any(e.fatal() for e in errors):
                self._replace(producer)
            raise translate(KafkaException(errors[0]), "producing ingested records")

    def _replace(self, failed: Producer) -> None:
        """A fatal error leaves a producer unusable: the next requests get a new one."""
        with self._lock:
            if self._producer is failed:
                log.error("the ingest producer failed fatally; replacing it")
                self._producer = self._new_producer()

    def close(self) -> None:
        with self._lock:
            self._stopping.set()
            producer, self._producer = self._producer, None
        if producer is not None:
            remaining = producer.flush(5)
            if remaining:
                log.warning("%d ingested records were not acknowledged before stopping", remaining)
        if self._poller is not None:
            self._poller.join(5)


# --- small mechanisms --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    """What the server answers."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, default=to_json, ensure_ascii=False, separators=(",", ":"))
    return Response(status, body.encode("utf-8"), JSON_TYPE, headers)


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    return json_response(status, {"error": message}, headers)


def to_json(value: Any) -> Any:
    """``json.dumps``' fallback for the values formats decode to (see the module docstring)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, ProtoMessage):
        return json_format.MessageToDict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)


class CachedCheck:
    """A health check whose answer is reused for ``ttl`` seconds.

    Concurrent callers wait for one run instead of each asking the broker or the database.
    """

    def __init__(
        self,
        what: str,
        check: Callable[[], None],
        ttl: float = CHECK_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.check = check
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._reason: str | None = None

    def reason(self) -> str | None:
        """``None`` when the check passed, else why it failed."""
        with self._lock:
            if self._at is not None and self.clock() - self._at < self.ttl:
                return self._reason
            try:
                self.check()
                self._reason = None
            except Exception as error:
                self._reason = f"{self.what}: {error}"
            self._at = self.clock()
            return self._reason


@dataclass(eq=False)
class _Attempt:
    fingerprint: bytes
    created: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outcome: Response | None = None


class IdempotencyCache:
    """Remembers successful answers by (scope, key), bounded in size and age; thread-safe.

    :meth:`run` does the work once per key: a duplicate that arrives while the first runs
    waits for it; one that arrives after it succeeded gets its answer; after a failure the
    key is forgotten, so the next duplicate does the work again.
    """

    def __init__(
        self,
        capacity: int = 10_000,
        ttl: float = 3600.0,
        wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.wait = wait
        self.clock = clock
        self._lock = threading.Lock()
        self._attempts: OrderedDict[tuple[str, str], _Attempt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._attempts)

    def run(
        self,
        scope: str,
        key: str,
        body: bytes,
        work: Callable[[], Response],
        succeeded: Callable[[Response], bool],
    ) -> tuple[Response, bool]:
        """The answer for ``(scope, key)`` and whether it is a replay of an earlier one."""
        fingerprint = hashlib.sha256(body).digest()
        slot = (scope, key)
        while True:
            with self._lock:
                self._expire()
                attempt = self._attempts.get(slot)
                owner = attempt is None
                if attempt is None:
                    attempt = self._attempts[slot] = _Attempt(fingerprint, self.clock())
                    while len(self._attempts) > self.capacity:
                        self._attempts.popitem(last=False)
            if owner:
                return self._first(slot, attempt, work, succeeded), False
            if not hmac.compare_digest(attempt.fingerprint, fingerprint):
                return error_response(422, "this Idempotency-Key was used with another body"), False
            if not attempt.done.wait(self.wait):
                return error_response(
                    409, "a request with this Idempotency-Key is still in progress"
                ), False
            if attempt.outcome is not None:
                return attempt.outcome, True
            # the first attempt failed and was forgotten: try to be the next first

    def _first(
        self,
        slot: tuple[str, str],
        attempt: _Attempt,
        work: Callable[[], Response],
        succeeded: Callable[[Response], bool],
    ) -> Response:
        outcome: Response | None = None
        try:
            outcome = work()
            return outcome
        finally:
            with self._lock:
                if outcome is not None and succeeded(outcome):
                    attempt.outcome = outcome
                elif self._attempts.get(slot) is attempt:
                    del self._attempts[slot]
            attempt.done.set()

    def _expire(self) -> None:
        limit = self.clock() - self.ttl
        while self._attempts:
            slot, oldest = next(iter(self._attempts.items()))
            if oldest.created > limit:
                return
            del self._attempts[slot]


def key_bytes(fmt: Format[Any], raw: bytes) -> bytes:
    """The encoded key named by the percent-decoded URL bytes ``raw`` (module docstring)."""
    if isinstance(fmt, BytesFormat):
        return raw
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError: the caller answers 400
    value: Any = text
    if isinstance(fmt, JsonFormat):
        try:
            value = json.loads(text)
        except ValueError:
            value = text
    return fmt.encode(value)


def cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def from_cursor(text: str) -> bytes:
    """The key in a :func:`cursor`; ``binascii.Error`` when ``text`` is not one."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


# --- the API -----------------------------------------------------------------------------


class HttpApi:
    """Answers requests; the handler only moves bytes. Every method is thread-safe."""

    def __init__(
        self,
        app: App,
        routes: Sequence[IngestRoute],
        *,
        metrics: Exposition,
        broker: IngestBroker,
        workers: Sequence[WorkerState] = (),
        store: object | None = None,
        query_store: QueryStore | None = None,
        token: str | None = None,
        check_ttl: float = CHECK_TTL,
    ) -> None:
        self.app = app
        self.routes = {route.path: route for route in routes}
        self.metrics = metrics
        self.broker = broker
        self.workers = workers
        self.query_store = query_store
        self.token = token.encode("utf-8") if token is not None else None
        self.stateful = {s.flow: s for s in app.steps if isinstance(s, StatefulStep)}
        self.idempotency = IdempotencyCache()
        self._ready_lock = threading.Lock()
        self._was_ready: bool | None = None
        self.checks = [CachedCheck("the broker does not answer", broker.check, check_ttl)]
        ping = getattr(store, "ping", None)
        if ping is not None:
            self.checks.append(CachedCheck("PostgreSQL does not answer", ping, check_ttl))

    # --- open endpoints

    def healthz(self) -> Response:
        return json_response(200, {"status": "ok"})

    def readyz(self) -> Response:
        reasons: list[str] = []
        for worker in self.workers:
            if worker.failure is not None:
                reasons.append(f"flow {worker.step.name} failed: {worker.failure}")
        if any(w.stopping.is_set() for w in self.workers):
            reasons.append("stopping")
        waiting = [w.step.name for w in self.workers if not w.assigned_once.is_set()]
        if waiting:
            reasons.append(f"waiting for a partition assignment: {', '.join(waiting)}")
        for check in self.checks:
            reason = check.reason()
            if reason is not None:
                reasons.append(reason)
        ready = not reasons
        with self._ready_lock:
            changed, self._was_ready = ready != self._was_ready, ready
        if changed and ready:
            log.info("ready")
        elif changed:
            log.info("not ready: %s", "; ".join(reasons))
        if reasons:
            return json_response(503, {"ready": False, "reasons": reasons})
        return json_response(200, {"ready": True})

    def metrics_text(self) -> Response:
        return Response(200, self.metrics.exposition(), CONTENT_TYPE_LATEST)

    # --- guarded endpoints

    def authorised(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.token)

    def state(self, path: str, query: str) -> Response:
        """``path`` starts with ``/state/``; ``query`` is the raw query string."""
        flow_part, slash, key_part = path[len("/state/") :].partition("/")
        flow = unquote(flow_part)
        step = self.stateful.get(flow)
        if step is None:
            return error_response(404, f"app {self.app.name!r} has no stateful flow {flow!r}")
        if self.query_store is None:
            return error_response(503, "no state store is configured")
        key_format = step.sources[0].key_format
        if slash and key_part:
            # http.server decodes the request line as latin-1: encode back to the raw bytes
            raw = unquote_to_bytes(key_part.encode("latin-1"))
            return self._one(step, key_format, raw)
        return self._page(step, key_format, query)

    def _one(self, step: StatefulStep, key_format: Format[Any], raw: bytes) -> Response:
        try:
            key = key_bytes(key_format, raw)
        except (TypeError, ValueError) as error:
            return error_response(
                400,
                f"the key does not fit the key format "
                f"{key_format.name} of flow {step.flow!r}: {error}",
            )
        assert self.query_store is not None
        try:
            encoded = self.query_store.get(step.table, key)
        except StateError as error:
            if not _undefined_table(error):
                raise
            encoded = None
        if encoded is None:
            return error_response(404, f"no state for this key in flow {step.flow!r}")
        return json_response(
            200,
            {"flow": step.flow, "key": _decoded(key_format, key), "state": _state(step, encoded)},
        )

    def _page(self, step: StatefulStep, key_format: Format[Any], query: str) -> Response:
        # latin-1 turns the percent-decoded text back into the bytes the client sent
        params = dict(parse_qsl(query, keep_blank_values=True, encoding="latin-1"))
        prefix = params.get("prefix", "").encode("latin-1")
        try:
            limit = int(params.get("limit", PAGE_DEFAULT))
        except ValueError:
            return error_response(400, f"limit must be an integer, not {params['limit']!r}")
        if limit < 1:
            return error_response(400, "limit must be at least 1")
        limit = min(limit, PAGE_MAX)
        after = None
        if "after" in params:
            try:
                after = from_cursor(params["after"])
            except (binascii.Error, ValueError):
                return error_response(400, "after must be the 'next' of a previous page")
        assert self.query_store is not None
        try:
            found = self.query_store.scan(step.table, prefix, after, limit + 1)
        except StateError as error:
            if not _undefined_table(error):
                raise
            found = []
        items = [
            {"key": _decoded(key_format, k), "state": _state(step, v)} for k, v in found[:limit]
        ]
        more = len(found) > limit
        return json_response(
            200, {"items": items, "next": cursor(found[limit - 1][0]) if more else None}
        )

    def ingest(self, route: IngestRoute, body: bytes, headers: Mapping[str, str]) -> Response:
        """Produces what ``route`` makes of ``body``; ``headers`` are lower-cased."""
        key = headers.get("idempotency-key")
        if key is None:
            return self._produce(route, body, headers)
        if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
            return error_response(
                400, "Idempotency-Key must be 1 to 255 printable ASCII characters"
            )
        response, replayed = self.idempotency.run(
            route.path,
            key,
            body,
            lambda: self._produce(route, body, headers),
            succeeded=lambda r: r.status == 202,
        )
        if replayed:
            return dataclasses.replace(
                response, headers=(*response.headers, ("Idempotent-Replayed", "true"))
            )
        return response

    def _produce(self, route: IngestRoute, body: bytes, headers: Mapping[str, str]) -> Response:
        try:
            messages = route.messages(body, headers, int(time.time() * 1000))
        except DecodeError as error:
            return error_response(
                400, f"the body does not decode as {route.body_format.name}: {error.reason}"
            )
        except (UserFunctionError, EncodeError) as error:
            return error_response(422, str(error))
        try:
            self.broker.send(messages)
        except TransientError as error:  # BrokerUnavailableError included
            return error_response(503, str(error))
        except FlowsError as error:
            return error_response(502, str(error))
        return json_response(202, {"produced": len(messages)})


def _undefined_table(error: StateError) -> bool:
    """The state table does not exist yet: no worker of the flow has started."""
    orig = getattr(error.__cause__, "orig", None)
    return getattr(orig, "sqlstate", None) == _UNDEFINED_TABLE


def _decoded(fmt: Format[Any], data: bytes) -> Any:
    try:
        return fmt.decode(data)
    except Exception:
        return data  # shown as base64, like a bytes key


def _state(step: StatefulStep, encoded: bytes) -> Any:
    try:
        return step.state_format.decode(encoded)
    except Exception as error:
        raise FlowsError(
            f"a stored state of flow {step.flow!r} does not decode as "
            f"{step.state_format.name}: {error}"
        ) from error


# --- the server --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: HttpApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr: one log line instead
        error = sys.exc_info()[1]
        log.warning(
            "http connection from %s failed: %s: %s", client_address[0], type(error).__name__, error
        )


class _Server6(_Server):
    address_family = socket.AF_INET6


class _BodyError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "flows"
    sys_version = ""
    #: seconds a slow client may take per socket operation
    timeout = 30

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        try:
            response = self._respond(method, path, query)
        except _BodyError as error:
            response = error.response
        except TransientError as error:  # PostgreSQL or the broker is unavailable
            response = error_response(503, str(error))
        except Exception as error:
            response = error_response(500, f"{type(error).__name__}: {error}")
        # one line per refused or failed request; readiness logs its own changes
        if response.status >= 400 and path != "/readyz":
            level = logging.WARNING if response.status >= 500 else logging.INFO
            reason = _reason_of(response)
            log.log(level, "http %s %s -> %d: %s", method, path, response.status, reason)
        self._send(response)

    def _respond(self, method: str, path: str, query: str) -> Response:
        api = self.server.api
        if path in ("/healthz", "/readyz", "/metrics"):
            if method != "GET":
                return error_response(405, f"{path} answers GET", (("Allow", "GET"),))
            if path == "/healthz":
                return api.healthz()
            return api.readyz() if path == "/readyz" else api.metrics_text()
        route = api.routes.get(path)
        if path.startswith("/state/"):
            if method != "GET":
                return error_response(405, "state queries answer GET", (("Allow", "GET"),))
        elif route is None:
            return error_response(404, f"nothing at {path}")
        elif method != "POST":
            return error_response(405, f"{path} answers POST", (("Allow", "POST"),))
        if not api.authorised(self.headers.get("Authorization")):
            return error_response(
                401,
                "a valid bearer token is required",
                (("WWW-Authenticate", 'Bearer realm="flows"'),),
            )
        if route is None:
            return api.state(path, query)
        body = self._body(route.max_body)
        headers = {name.lower(): value for name, value in self.headers.items()}
        return api.ingest(route, body, headers)

    def _body(self, limit: int) -> bytes:
        """The request body, at most ``limit`` bytes; raises :class:`_BodyError`."""
        too_large = error_response(413, f"the body is larger than {limit} bytes")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked(limit, too_large)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _BodyError(
                error_response(411, "Content-Length or chunked Transfer-Encoding required")
            )
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            raise _BodyError(error_response(400, "Content-Length is not a number")) from None
        if length > limit:
            self._discard(length)
            raise _BodyError(too_large)
        body = self.rfile.read(length)
        if len(body) < length:
            raise _BodyError(error_response(400, "the body ended before Content-Length"))
        return body

    def _chunked(self, limit: int, too_large: Response) -> bytes:
        """A chunked body; past ``limit`` the rest is read and dropped (bounded), then 413."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(error_response(400, "malformed chunked body")) from None
            if size == 0:
                while self.rfile.readline(8194).strip():  # trailers
                    pass
                if total > limit:
                    raise _BodyError(too_large)
                return b"".join(parts)
            total += size
            if total > limit + _DRAIN_LIMIT:
                raise _BodyError(too_large)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _BodyError(error_response(400, "the chunked body ended early"))
            if total <= limit:
                parts.append(chunk)
            else:
                parts.clear()
            self.rfile.readline(3)  # the CRLF after the chunk

    def _discard(self, length: int) -> None:
        """Reads and drops a bounded part of a body we refuse (see ``_DRAIN_LIMIT``)."""
        left = min(length, _DRAIN_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Connection", "close")
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)
        except OSError as error:  # the client went away
            log.info("http answer not delivered: %s", error)
        self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Called by http.server itself for malformed requests and unknown methods: JSON too.
        log.info("http %s -> %d: %s", (self.requestline or "?")[:200], code, message)
        self._send(error_response(code, message or self.responses.get(code, ("error",))[0]))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)


def _reason_of(response: Response) -> str:
    try:
        return str(json.loads(response.body).get("error", ""))[:300]
    except (ValueError, AttributeError):
        return ""


class HttpRuntime:
    """Serves :class:`HttpApi` on ``settings.http_host``:``settings.http_port``.

    The container builds none when the port is 0; given port 0 directly, it listens on a
    free port (see :attr:`address`), which tests use.
    """

    name = "http"

    def __init__(self, settings: Settings, api: HttpApi, owned: Sequence[Any] = ()) -> None:
        """``owned``: objects with a ``close()`` that this runtime releases when it stops."""
        self.settings = settings
        self.api = api
        self.owned = tuple(owned)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (after :meth:`start`)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        host, port = self.settings.http_host, self.settings.http_port
        try:
            server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({error}); choose another "
                "--http-port / FLOWS_HTTP_PORT, or 0 for no HTTP server"
            ) from error
        server.api = self.api
        try:
            sinks = {r.sink.name: r.sink for r in self.api.routes.values()}
            self.api.broker.open([sinks[name] for name in sorted(sinks)])
        except BaseException:
            server.server_close()
            raise
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="flows-http",
            daemon=True,
        )
        self._thread.start()
        shown_host, shown_port = self.address
        log.info(
            "http server listening on %s:%d%s",
            shown_host,
            shown_port,
            f" (ingest: {', '.join(sorted(self.api.routes))})" if self.api.routes else "",
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.api.broker.close()
        for resource in self.owned:
            resource.close()


__all__ = [
    "CHECK_TTL",
    "INGEST_TIMEOUT",
    "JSON_TYPE",
    "CachedCheck",
    "Exposition",
    "HttpApi",
    "HttpRuntime",
    "IdempotencyCache",
    "IngestBroker",
    "KafkaIngest",
    "QueryStore",
    "Response",
    "WorkerState",
    "cursor",
    "error_response",
    "from_cursor",
    "json_response",
    "key_bytes",
    "to_json",
]
