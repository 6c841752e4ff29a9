"""The composition root: the only place that wires runtimes together (dependency-injector).

Everything else takes its collaborators as constructor arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dependency_injector import containers, providers

from flows.app import App
from flows.ports import StateStore
from flows.schema_registry import FormatBinder
from flows.steps import Step
from runtimes.config import Settings
from runtimes.facade import AdminRuntime, DatabaseRuntime, Facade, Runtime, WorkersRuntime
from runtimes.http import HttpApi, HttpRuntime, QueryStore
from runtimes.kafka import KafkaIngest
from runtimes.metrics import PrometheusMetrics


def _registry(settings: Settings, app: App) -> Any:
    """The binder of the app's Schema Registry formats (a ``RegistryBinder`` over the
    registry of ``settings``), or None for an app without them: then nothing of the
    registry adapter is even imported."""
    if not app.compiled.registry_formats:
        return None
    from runtimes.registry import RegistryBinder

    return RegistryBinder.from_settings(settings)


def _bound(settings: Settings, app: App, registry: FormatBinder | None) -> App:
    """The app with its registry formats bound and its encrypted flows given the state keys
    of ``settings``, once, for every runtime of the process. Without keys, encrypted flows
    stay without a cipher: their workers refuse to start and their state queries answer
    503, each saying to set ``FLOWS_STATE_KEYS``."""
    return app.bind(registry, state_keys=settings.state_keyring)


def _needs_database(steps: Sequence[Step]) -> bool:
    return any(s.keeps_state for s in steps)


def _store(settings: Settings, steps: Sequence[Step]) -> StateStore | None:
    """PostgreSQL, only for apps that keep state or rows (stateless apps never connect)."""
    if not _needs_database(steps):
        return None
    from runtimes.postgres import PostgresStateStore

    return PostgresStateStore(settings.database_url)


def _http(
    settings: Settings,
    app: App,
    flows: Sequence[str],
    metrics: PrometheusMetrics,
    workers: WorkersRuntime,
    store: StateStore | None,
) -> HttpRuntime | None:
    """The HTTP server, unless ``http_port`` is 0.

    It serves the ingest routes of the selected flows (all when none is selected) and state
    queries for every stateful flow of the app: a process that runs no stateful flow gets a
    store of its own for them, so any replica answers. With a flow that keeps history, it
    also gets the process's change feed (streams of changes).
    """
    if settings.http_port == 0:
        return None
    owned: list[Any] = []
    query_store = store if isinstance(store, QueryStore) else None
    if query_store is None and (app.state_tables() or app.window_tables()):
        from runtimes.postgres import PostgresStateStore

        query_store = PostgresStateStore(settings.database_url)
        owned.append(query_store)
    changes = None
    if app.history_tables() and query_store is not None:
        # one LISTEN connection for the process, opened by the first subscriber, closed
        # before the store it reads through
        from runtimes.postgres import PostgresStateStore
        from runtimes.postgres.changes import ChangeFeed

        if isinstance(query_store, PostgresStateStore):
            changes = ChangeFeed(settings.database_url, query_store, query_store.schema)
            owned.insert(0, changes)
    routes = [r for r in app.routes if not flows or r.flow in flows]
    broker = KafkaIngest(settings, client_id=f"{app.name}.http.{settings.instance_id}")
    api = HttpApi(
        app,
        routes,
        metrics=metrics,
        broker=broker,
        workers=workers.workers,
        store=store,
        query_store=query_store,
        token=settings.http_token,
        guarded=settings.http_guarded,
        changes=changes,
        changes_buffer=settings.http_changes_buffer,
        keepalive=settings.http_keepalive,
    )
    return HttpRuntime(settings, api, owned=owned)


def _runtimes(
    admin: AdminRuntime,
    store: StateStore | None,
    steps: Sequence[Step],
    workers: WorkersRuntime,
    http: HttpRuntime | None = None,
    registry: Any = None,
) -> list[Runtime]:
    # the registry's client first, so that it closes last, after the workers stopped
    ordered: list[Runtime] = [] if registry is None else [registry]
    ordered.append(admin)
    if store is not None:
        ordered.append(DatabaseRuntime(store, steps))
    if http is not None:  # after PostgreSQL (state queries), before the workers (readiness)
        ordered.append(http)
    ordered.append(workers)
    return ordered


class Container(containers.DeclarativeContainer):
    """Settings and app in, a ready :class:`Facade` out. Every runtime gets the app with
    its Schema Registry formats and state keys bound (``bound``), never the app as
    declared."""

    settings = providers.Dependency(instance_of=Settings)
    app = providers.Dependency(instance_of=App)
    flows = providers.Object(())

    registry = providers.Singleton(_registry, settings, app)
    bound = providers.Singleton(_bound, settings, app, registry)
    steps = providers.Singleton(lambda app, flows: app.select(flows), bound, flows)
    metrics = providers.Singleton(PrometheusMetrics)
    store = providers.Singleton(_store, settings, steps)
    admin = providers.Singleton(AdminRuntime, settings, bound, steps)
    workers = providers.Singleton(WorkersRuntime, steps, settings, store, metrics)
    http = providers.Singleton(_http, settings, bound, flows, metrics, workers, store)
    runtimes = providers.Singleton(_runtimes, admin, store, steps, workers, http, registry)
    facade = providers.Singleton(Facade, runtimes, workers, settings)
