"""An app: a named set of flows, validated and compiled when it is created."""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from flows.compiler import CompiledApp, compile_app
from flows.encryption import StateKeys
from flows.errors import AppNotFoundError, ConfigError
from flows.schema_registry import FormatBinder
from flows.steps import IngestRoute, MaterialiseStep, StatefulStep, Step
from flows.steps.dedupe import DeduplicateStep
from flows.steps.window import WindowStep
from flows.topics import Topic
from flows.wiring import FlowConfig

ENTRY_POINT_GROUP = "flows.apps"
_APP_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,99}$")


class App:
    """A named set of flows. Creating one validates and compiles every flow.

    The name prefixes each flow's consumer group (``<app>.<flow>``) and derived names
    (intermediate topics, state tables), so two apps never share them.
    """

    def __init__(
        self,
        name: str,
        flows: Sequence[FlowConfig],
        *,
        topics: Iterable[Topic] = (),
        description: str = "",
    ) -> None:
        if not isinstance(name, str) or not _APP_NAME.match(name):
            raise ConfigError(
                f"app name {name!r} must be 1 to 100 ASCII letters, digits, '-' or '_', "
                "starting with a letter or digit (it names consumer groups and topics)"
            )
        self.name = name
        self.description = description
        self.flows = tuple(flows)
        self._topics = tuple(topics)
        #: what :meth:`bind` bound (kept, so that binding again adds to it)
        self._binder: FormatBinder | None = None
        self._state_keys: StateKeys | None = None
        self.compiled: CompiledApp = compile_app(name, self.flows, self._topics)

    def bind(
        self, binder: FormatBinder | None = None, *, state_keys: StateKeys | None = None
    ) -> App:
        """This app with its Schema Registry formats bound by ``binder`` and its encrypted
        flows given the cipher of ``state_keys``: a copy compiled again, whose topics,
        steps and routes hold them. An app with nothing to bind (no such formats or no
        binder, no encrypted flow or no keys) is returned as it is.

        Runtimes call this once at startup (``flows run`` with the registry and the state
        keys of its settings, the test driver with an in-memory registry and the keys it
        was given); the app itself, often a module global shared by several drivers in one
        process, is never changed."""
        binder = binder or self._binder
        state_keys = state_keys or self._state_keys
        formats = binder is not None and self.compiled.registry_formats
        keys = state_keys is not None and self.compiled.encrypted
        if (not formats or binder is self._binder) and (not keys or state_keys is self._state_keys):
            return self
        bound = copy.copy(self)
        bound._binder = binder if formats else None
        bound._state_keys = state_keys if keys else None
        bound.compiled = compile_app(
            self.name, self.flows, self._topics, bound._binder, bound._state_keys
        )
        return bound

    def encrypted_flows(self) -> tuple[str, ...]:
        """The flows that encrypt their state (``encrypt=True``)."""
        return tuple(s.flow for s in self.steps if getattr(s, "encrypt", False))

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.compiled.steps

    @property
    def topics(self) -> dict[str, Topic]:
        """Every topic the app reads or writes, internal ones included, by name."""
        return self.compiled.topics

    @property
    def routes(self) -> tuple[IngestRoute, ...]:
        """The HTTP ingest routes of the app."""
        return self.compiled.routes

    @property
    def flow_names(self) -> tuple[str, ...]:
        return tuple(flow.name for flow in self.flows)

    def select(self, flows: Iterable[str] = ()) -> tuple[Step, ...]:
        """The steps of the named flows (all when none is named), in topological order."""
        wanted = set(flows)
        unknown = wanted - set(self.flow_names)
        if unknown:
            raise ConfigError(
                f"app {self.name!r} has no flow {sorted(unknown)}; its flows are "
                f"{list(self.flow_names)}"
            )
        return tuple(s for s in self.steps if not wanted or s.flow in wanted)

    def state_tables(self) -> dict[str, str]:
        """Table name by flow, for stateful flows."""
        return {s.flow: s.table for s in self.steps if isinstance(s, StatefulStep)}

    def history_tables(self) -> dict[str, str]:
        """History table name by flow, for stateful flows with ``history=True``."""
        return {
            s.flow: s.history_table
            for s in self.steps
            if isinstance(s, StatefulStep) and s.history_table is not None
        }

    def window_tables(self) -> dict[str, str]:
        """Table name by flow, for windowed and deduplicating flows (window-shaped tables;
        stateful flows with time are among :meth:`state_tables`)."""
        return {s.flow: s.table for s in self.steps if isinstance(s, WindowStep | DeduplicateStep)}

    def materialised_tables(self) -> dict[str, str]:
        return {
            s.flow: s.shape.name
            for s in self.steps
            if isinstance(s, MaterialiseStep) and s.shape is not None
        }

    def __repr__(self) -> str:
        return f"App({self.name!r}, flows={list(self.flow_names)})"


def registered_apps() -> dict[str, str]:
    """Registered app names and what each names (``module:attribute`` or a ``.py`` path).

    Two registries: installed entry points of the ``flows.apps`` group (a package's
    ``pyproject.toml``), and the ``[apps]`` table of a ``flows.toml`` in the working
    directory (what ``flows new`` writes: a project registers its apps without installing
    anything); paths there are relative to that file. A name in both is the local one.
    """
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    apps = {ep.name: ep.value for ep in sorted(found, key=lambda ep: ep.name)}
    apps.update(local_apps(Path(LOCAL_REGISTRY)))
    return apps


#: the project-local registry :func:`registered_apps` reads, in the working directory
LOCAL_REGISTRY = "flows.toml"


def local_apps(path: Path) -> dict[str, str]:
    """The ``[apps]`` table of the registry file ``path`` (none when it does not exist);
    a malformed file is a :class:`ConfigError` that names it."""
    if not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("apps", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a valid TOML file ({error})") from error
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigError(f'{path}: [apps] must map names to strings, e.g. shop = "shop/app.py"')
    base = path.resolve().parent
    return {
        name: str(base / target) if target.endswith(".py") else target
        for name, target in sorted(table.items())
    }


def load_app(reference: str) -> App:
    """The app named by ``reference``: a registered name, a ``.py`` path, or ``module:attr``.

    A file or module holding exactly one :class:`App` needs no attribute name.
    """
    registered = registered_apps()
    if reference in registered:
        reference = registered[reference]
    module_name, _, attribute = reference.partition(":")
    try:
        if module_name.endswith(".py") or Path(module_name).is_file():
            path = Path(module_name)
            if not path.is_file():
                raise AppNotFoundError(f"no app file at {path}")
            spec = importlib.util.spec_from_file_location(f"flows_app_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise AppNotFoundError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        known = ", ".join(registered) or "none"
        raise AppNotFoundError(
            f"no app {reference!r}: not a registered name (registered: {known}), not a file, "
            f"and module {error.name!r} cannot be imported"
        ) from error
    if attribute:
        app = getattr(module, attribute, None)
        if not isinstance(app, App):
            raise AppNotFoundError(f"{reference!r}: {attribute!r} is not a flows.App")
        return app
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if len(apps) != 1:
        raise AppNotFoundError(
            f"{reference!r} holds {len(apps)} apps; name one as module:attribute"
        )
    return apps[0]
