"""The composition root: the only place that wires runtimes together (dependency-injector).

Everything else takes its collaborators as constructor arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

from dependency_injector import containers, providers

from flows.app import App
from flows.compiler import MaterialiseStep, StatefulStep, Step
from flows.ports import StateStore
from runtimes.config import Settings
from runtimes.facade import AdminRuntime, DatabaseRuntime, Facade, Runtime, WorkersRuntime
from runtimes.metrics import PrometheusMetrics


def _needs_database(steps: Sequence[Step]) -> bool:
    return any(isinstance(s, StatefulStep | MaterialiseStep) for s in steps)


def _store(settings: Settings, steps: Sequence[Step]) -> StateStore | None:
    """PostgreSQL, only for apps that keep state or rows (stateless apps never connect)."""
    if not _needs_database(steps):
        return None
    from runtimes.postgres import PostgresStateStore

    return PostgresStateStore(settings.database_url)


def _runtimes(admin: AdminRuntime, store: StateStore | None, steps: Sequence[Step],
              workers: WorkersRuntime) -> list[Runtime]:
    ordered: list[Runtime] = [admin]
    if store is not None:
        ordered.append(DatabaseRuntime(store, steps))
    ordered.append(workers)
    return ordered


class Container(containers.DeclarativeContainer):
    """Settings and app in, a ready :class:`Facade` out."""

    settings = providers.Dependency(instance_of=Settings)
    app = providers.Dependency(instance_of=App)
    flows = providers.Object(())

    steps = providers.Singleton(lambda app, flows: app.select(flows), app, flows)
    metrics = providers.Singleton(PrometheusMetrics)
    store = providers.Singleton(_store, settings, steps)
    admin = providers.Singleton(AdminRuntime, settings, app, steps)
    workers = providers.Singleton(WorkersRuntime, steps, settings, store, metrics)
    runtimes = providers.Singleton(_runtimes, admin, store, steps, workers)
    facade = providers.Singleton(Facade, runtimes, workers, settings)
