"""The HTTP API: what each endpoint answers, independent of how the bytes move.

:class:`HttpApi` answers health, readiness, metrics, state queries and ingest requests (see
the package docstring for the endpoints); ``server.py`` only parses requests and writes
answers. The protocols here are what the API needs of its collaborators; state queries are
answered by ``state_query.py`` and ``timed_state.py``.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import unquote, unquote_to_bytes

from prometheus_client import CONTENT_TYPE_LATEST

from flows.app import App
from flows.errors import (
    DecodeError,
    EncodeError,
    FlowsError,
    TransientError,
    UserFunctionError,
)
from flows.records import RawMessage
from flows.steps import IngestRoute, StatefulStep, Step
from flows.steps.timed_state import TimedStatefulStep
from flows.steps.window import WindowStep
from flows.topics import Topic
from runtimes.http.changes import ChangeSource, change_stream
from runtimes.http.history import HistoryStore, history_page, no_history
from runtimes.http.idempotency import IdempotencyCache
from runtimes.http.responses import Response, error_response, json_response
from runtimes.http.state_query import QueryStore, decoded, key_bytes, one_state, state_page
from runtimes.http.timed_state import WindowQueryStore, open_windows, timed_state

log = logging.getLogger("flows.http")

#: how long a readiness check's answer is reused
CHECK_TTL = 1.0


# --- collaborators -----------------------------------------------------------------------


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
        guarded: bool | None = None,
        check_ttl: float = CHECK_TTL,
        changes: ChangeSource | None = None,
        changes_buffer: int = 10_000,
        keepalive: float = 5.0,
    ) -> None:
        """``changes`` is the process's change feed (streams of changes; None: 503),
        ``changes_buffer`` and ``keepalive`` what each stream of changes is given
        (:func:`~runtimes.http.changes.change_stream`)."""
        self.app = app
        #: whether the server asks for a credential (the token, JWTs): encrypted flows'
        #: states are served only then (default: whether there is a token)
        self.guarded = token is not None if guarded is None else guarded
        self.routes = {route.path: route for route in routes}
        self.metrics = metrics
        self.broker = broker
        self.workers = workers
        self.query_store = query_store
        self.token = token.encode("utf-8") if token is not None else None
        self.changes = changes
        self.changes_buffer = changes_buffer
        self.keepalive = keepalive
        self.stateful = {s.flow: s for s in app.steps if isinstance(s, StatefulStep)}
        #: flows whose rows fall due in time: their own queries (runtimes/http/timed_state.py)
        self.windowed: dict[str, WindowStep[Any] | TimedStatefulStep] = {
            s.flow: s for s in app.steps if isinstance(s, WindowStep | TimedStatefulStep)
        }
        if not self.guarded:
            for flow in app.encrypted_flows():
                log.warning(
                    "flow %s encrypts its state; /state/%s answers 403 until the HTTP server "
                    "asks for a credential (FLOWS_HTTP_TOKEN, FLOWS_HTTP_JWT_SECRET or "
                    "FLOWS_HTTP_JWT_JWKS)",
                    flow,
                    flow,
                )
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

    def state(self, path: str, query: str, headers: Mapping[str, str] | None = None) -> Response:
        """``path`` starts with ``/state/``; ``query`` is the raw query string; ``headers``
        (lower-cased names) may carry ``if-none-match``."""
        flow_part, slash, key_part = path[len("/state/") :].partition("/")
        flow = unquote(flow_part)
        found: Step | None = self.windowed.get(flow) or self.stateful.get(flow)
        refused = None if found is None else self._sealed(found)
        if refused is not None:
            return refused
        if slash and (key_part == "changes" or key_part.endswith("/history")):
            return self._history(flow, key_part, query, headers or {})
        if flow in self.windowed:
            return self._timed(self.windowed[flow], key_part if slash else "")
        step = self.stateful.get(flow)
        if step is None:
            return error_response(404, f"app {self.app.name!r} has no stateful flow {flow!r}")
        if self.query_store is None:
            return error_response(503, "no state store is configured")
        if slash and key_part:
            # http.server decodes the request line as latin-1: encode back to the raw bytes
            raw = unquote_to_bytes(key_part.encode("latin-1"))
            return one_state(step, self.query_store, raw, (headers or {}).get("if-none-match"))
        return state_page(step, self.query_store, query)

    def _sealed(self, step: Step) -> Response | None:
        """Why the states of an encrypted flow are not served here (None: they are, or the
        flow does not encrypt): 403 to anyone while the server asks for no credential, so
        that what is encrypted at rest is never open to every caller; 503 while this process
        has no state keys to decrypt them."""
        if not getattr(step, "encrypt", False):
            return None
        if not self.guarded:
            return error_response(
                403,
                f"flow {step.flow!r} encrypts its state at rest, and this server serves it to "
                "authenticated callers only: set FLOWS_HTTP_TOKEN, FLOWS_HTTP_JWT_SECRET or "
                "FLOWS_HTTP_JWT_JWKS",
            )
        if getattr(step, "cipher", None) is None:
            return error_response(
                503,
                f"flow {step.flow!r} encrypts its state, and this process has no state keys "
                "to decrypt it: set FLOWS_STATE_KEYS",
            )
        return None

    def _history(self, flow: str, rest: str, query: str, headers: Mapping[str, str]) -> Response:
        """``/state/<flow>/changes`` and ``/state/<flow>/<key>/history``."""
        if flow in self.windowed:
            return no_history(flow)
        step = self.stateful.get(flow)
        if step is None:
            return error_response(404, f"app {self.app.name!r} has no stateful flow {flow!r}")
        store = self.query_store
        if not isinstance(store, HistoryStore):
            return error_response(503, "no state store is configured")
        if step.history_table is None:
            return no_history(flow)
        if rest == "changes":
            if self.changes is None:
                return error_response(503, "this server has no change feed (no PostgreSQL)")
            return change_stream(
                step,
                store,
                self.changes,
                query,
                headers.get("last-event-id"),
                self.changes_buffer,
                self.keepalive,
            )
        raw = unquote_to_bytes(rest[: -len("/history")].encode("latin-1"))
        return history_page(step, store, raw, query)

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
        shown = decoded(key_format, key)
        if isinstance(step, WindowStep):
            return open_windows(step, self.query_store, key, shown)
        return timed_state(step, self.query_store, key, shown)

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
