"""The HTTP API: what each endpoint answers, independent of how the bytes move.

:class:`HttpApi` answers health, readiness, metrics, state queries and ingest requests (see
the package docstring for the endpoints); ``server.py`` only parses requests and writes
answers. The protocols here are what the API needs of its collaborators.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

from prometheus_client import CONTENT_TYPE_LATEST

from flows.app import App
from flows.errors import (
    DecodeError,
    EncodeError,
    FlowsError,
    TableMissingError,
    TransientError,
    UserFunctionError,
)
from flows.formats import Format
from flows.records import RawMessage
from flows.steps import IngestRoute, StatefulStep, Step
from flows.steps.timed_state import TimedStatefulStep
from flows.steps.window import WindowStep
from flows.topics import Topic
from runtimes.http.idempotency import IdempotencyCache
from runtimes.http.responses import Response, error_response, json_response
from runtimes.http.timed_state import WindowQueryStore, open_windows, timed_state

log = logging.getLogger("flows.http")

#: how long a readiness check's answer is reused
CHECK_TTL = 1.0
PAGE_DEFAULT, PAGE_MAX = 100, 1000


# --- collaborators -----------------------------------------------------------------------


@runtime_checkable
class QueryStore(Protocol):
    """What state queries need of a state store (both stores have it).

    A table that does not exist reads as empty, or raises :class:`TableMissingError`
    (PostgreSQL); either way the API answers as for a table without the key.
    """

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def scan(
        self, table: str, prefix: bytes, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]: ...


class Exposition(Protocol):
    """Metrics that render as Prometheus text (:class:`runtimes.metrics.PrometheusMetrics`)."""

    def exposition(self) -> bytes: ...


class WorkerState(Protocol):
    """What readiness reads of a worker (:class:`flows.engine.Worker`)."""

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


# --- small mechanisms --------------------------------------------------------------------


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


def key_bytes(fmt: Format[Any], raw: bytes) -> bytes:
    """The encoded key named by the percent-decoded URL bytes ``raw`` (package docstring).

    Any format works, flows' own or a user's (any object with ``name``, ``encode`` and
    ``decode``): the format itself is asked. When it decodes ``raw``, the key is that value
    encoded again (bytes and str formats give ``raw`` back; JSON gives its own spelling, so
    ``[1, 2]`` names the key stored as ``[1,2]``). Otherwise ``raw`` is UTF-8 text given to
    ``encode`` (a JSON format writes it as a JSON string). Raises ``ValueError`` or
    ``TypeError`` when neither fits; the caller answers 400.
    """
    try:
        value: Any = fmt.decode(raw)
    except ValueError:  # the Format contract: malformed bytes raise ValueError
        value = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
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
        #: flows whose rows fall due in time: their own queries (runtimes/http/timed_state.py)
        self.windowed: dict[str, WindowStep[Any] | TimedStatefulStep] = {
            s.flow: s for s in app.steps if isinstance(s, WindowStep | TimedStatefulStep)
        }
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
        if flow in self.windowed:
            return self._timed(self.windowed[flow], key_part if slash else "")
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

    def _timed(self, step: WindowStep[Any] | TimedStatefulStep, key_part: str) -> Response:
        """One key's open windows, or its state and timers (no listing of all keys)."""
        if not key_part:
            return error_response(400, f"name a key: /state/{step.flow}/<key>")
        if not isinstance(self.query_store, WindowQueryStore):
            return error_response(503, "no state store is configured")
        key_format = step.sources[0].key_format
        raw = unquote_to_bytes(key_part.encode("latin-1"))
        try:
            key = key_bytes(key_format, raw)
        except (TypeError, ValueError) as error:
            return error_response(
                400, f"the key does not fit the key format {key_format.name}: {error}"
            )
        shown = _decoded(key_format, key)
        if isinstance(step, WindowStep):
            return open_windows(step, self.query_store, key, shown)
        return timed_state(step, self.query_store, key, shown)

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
        except TableMissingError:  # no worker of the flow has created it yet
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
        except TableMissingError:
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
