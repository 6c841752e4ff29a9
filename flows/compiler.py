"""Compiles wiring configurations into steps (:mod:`flows.steps`), validating them together.

Validation happens while compiling, in pure code, at load time: a bad wiring fails with a
:class:`~flows.errors.WiringError` that names the flow and the field. Resolving topics and
dead-letter topics happens here; the checks that need none resolved (flow names, user
functions, shared tables, cycles) are in :mod:`flows.validation`.

Most wiring configurations compile to one step. Two compile to two:

* a :class:`~flows.wiring.Join`, and a stateful flow with a ``state_key`` function, become a
  :class:`~flows.steps.RekeyStep` writing an intermediate topic keyed by the state key, and
  a :class:`~flows.steps.StatefulStep` over that topic.

An :class:`~flows.wiring.Ingest` compiles to an :class:`~flows.steps.IngestRoute` instead
of a step: it reads no topic.

Schema Registry formats (:mod:`flows.schema_registry`) are bound here, per place of use,
when a binder is given: a topic's key and value, a state table's states (the table's name
standing for the topic), an ingest body (its sink's value). The compiled app then holds the
bound formats only. Without a binder they stay declared, and
:attr:`CompiledApp.registry_formats` says a runtime must compile again with one
(:meth:`flows.App.bind`); every other format is left as it is.

State keys (:class:`~flows.encryption.StateKeys`) are bound the same way: given to the
compiler, they make one :class:`~flows.encryption.StateCipher` that every flow with
``encrypt=True`` gets; without them such flows compile, and
:attr:`CompiledApp.encrypted` says a runtime must bind keys before it runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flows.compile_context import sanitise
from flows.compile_stateful import StatefulCompiler
from flows.encoding import UNCHANGED, sink_encoders
from flows.encryption import StateKeys
from flows.errors import WiringError
from flows.records import Record
from flows.schema_registry import FormatBinder
from flows.steps import IngestRoute, MaterialiseStep, StatelessStep, Step
from flows.steps.dedupe import DeduplicateStep
from flows.steps.window import WindowStep
from flows.tables import table_shape
from flows.time_compiler import deduplicate_step, window_step
from flows.topics import Topic
from flows.validation import check_flow, check_function, claim_table, topological_order
from flows.wiring import (
    Deduplicate,
    Emits,
    Explode,
    Filter,
    FlowConfig,
    Ingest,
    Join,
    Map,
    Materialise,
    Merge,
    Mirror,
    Split,
    Stateful,
    Window,
)


class _Compiler(StatefulCompiler):
    """Checks every flow and builds the steps of one app."""

    def compile(self, config: FlowConfig) -> list[Step]:
        check_flow(config)
        if isinstance(config, Join):
            return self.join(config)
        if isinstance(config, Stateful):
            return self.stateful(config)
        if isinstance(config, Window):
            return [self._window(config)]
        if isinstance(config, Deduplicate):
            return [self._deduplicate(config)]
        if isinstance(config, Materialise):
            return [self._materialise(config)]
        if isinstance(config, Ingest):
            self.routes.append(self._ingest(config))
            return []
        return [self._stateless(config)]

    def _stateless(self, config: FlowConfig) -> StatelessStep:
        flow = config.name
        exactly_once = bool(getattr(config, "exactly_once", False))
        call: Callable[[Record[Any, Any]], Any] | None
        emits: Emits = "one"
        passthrough = None
        if isinstance(config, Merge):
            if not config.sources:
                raise WiringError(flow, "sources", "a merge needs at least one source")
            sources = tuple(self.topic(s, flow, "sources") for s in config.sources)
            sinks: tuple[Topic, ...] = (self.topic(config.sink, flow, "sink"),)
            if config.fn is not None:
                check_function(config.fn, 1, flow, "fn")
            call = config.fn
            if call is None:
                call = _identity
                same = all(
                    s.key_format is sinks[0].key_format and s.value_format is sinks[0].value_format
                    for s in sources
                )
                passthrough = sinks[0].name if same else None
        elif isinstance(config, Mirror):
            sources = (self.topic(config.source, flow, "source"),)
            sinks = (self.topic(config.sink, flow, "sink"),)
            call, passthrough = _identity, sinks[0].name
        elif isinstance(config, Map | Explode | Filter | Split):
            sources = (self.topic(config.source, flow, "source"),)
            if isinstance(config, Split):
                if len(config.sinks) != 2:
                    raise WiringError(flow, "sinks", "a split needs exactly two sink topics")
                sinks = tuple(self.topic(s, flow, "sinks") for s in config.sinks)
                emits = "two"
            else:
                sinks = (self.topic(config.sink, flow, "sink"),)
            if isinstance(config, Filter):
                check_function(config.predicate, 1, flow, "predicate")
                predicate = config.predicate
                call = lambda record: UNCHANGED if predicate(record) else None  # noqa: E731
            else:
                check_function(config.fn, 1, flow, "fn")
                call = config.fn
            if isinstance(config, Explode):
                emits = "many"
        else:
            raise WiringError(flow, "type", f"unsupported flow type {type(config).__name__}")
        step = StatelessStep(
            kind="stateless",
            exactly_once=exactly_once,
            call=call,
            emits=emits,
            passthrough=passthrough,
            description=type(config).__name__,
            **self.base(config, sources, sinks),
        )
        step.emitters = sink_encoders(sources, sinks)
        return step

    def _ingest(self, config: Ingest) -> IngestRoute:
        flow = config.name
        if not config.path.startswith("/") or config.path.startswith(
            ("/state", "/metrics", "/healthz", "/readyz")
        ):
            raise WiringError(
                flow,
                "path",
                f"{config.path!r} must start with '/' and not "
                "with /state, /metrics, /healthz or /readyz",
            )
        if any(route.path == config.path for route in self.routes):
            raise WiringError(flow, "path", f"another ingest already serves {config.path!r}")
        if config.max_body < 1:
            raise WiringError(flow, "max_body", "must be at least 1 byte")
        sink = self.topic(config.sink, flow, "sink")
        if config.fn is not None:
            check_function(config.fn, 1, flow, "fn")
        return IngestRoute(
            app=self.app,
            flow=flow,
            path=config.path,
            sink=sink,
            call=config.fn or _identity,
            body_format=self.bind_format(config.body_format, sink.name, "value"),
            headers=tuple(h.lower() for h in config.headers),
            max_body=config.max_body,
            emits="many" if config.explode else "one",
        )

    def _materialise(self, config: Materialise) -> MaterialiseStep:
        flow = config.name
        source = self.topic(config.source, flow, "source")
        check_function(config.fn, 1, flow, "fn")
        try:
            shape = table_shape(config.table)
        except ValueError as error:
            raise WiringError(flow, "table", str(error)) from error
        return MaterialiseStep(
            kind="materialise",
            exactly_once=True,
            call=config.fn,
            shape=shape,
            description="Materialise",
            **self.base(config, (source,), ()),
        )

    def _deduplicate(self, config: Deduplicate) -> DeduplicateStep:
        source = self.topic(config.source, config.name, "source")
        sink = self.topic(config.sink, config.name, "sink")
        table = config.table or f"{sanitise(self.app)}_{sanitise(config.name)}_seen"
        return deduplicate_step(config, source, sink, table, self.base(config, (source,), (sink,)))

    def _window(self, config: Window) -> WindowStep[Any]:
        source = self.topic(config.source, config.name, "source")
        sink = self.topic(config.sink, config.name, "sink")
        table = config.table or f"{sanitise(self.app)}_{sanitise(config.name)}_windows"
        cipher = self.cipher(config)
        return window_step(
            config,
            source,
            sink,
            table,
            {
                **self.base(config, (source,), (sink,)),
                "encrypt": config.encrypt,
                "cipher": cipher,
            },
            self.bind_format(config.state_format, table, "value"),
        )


def _identity(record: Record[Any, Any]) -> Any:
    return record.value


@dataclass(frozen=True)
class CompiledApp:
    """Every step of an app, in topological order, and every topic it touches."""

    steps: tuple[Step, ...]
    topics: dict[str, Topic]
    internal: frozenset[str]
    routes: tuple[IngestRoute, ...] = ()
    #: whether the app uses Schema Registry formats (bound when compiled with a binder)
    registry_formats: bool = False
    #: whether a flow encrypts its state (its cipher made when compiled with state keys)
    encrypted: bool = False


def compile_app(
    app: str,
    flows: Sequence[FlowConfig],
    topics: Sequence[Topic],
    binder: FormatBinder | None = None,
    state_keys: StateKeys | None = None,
) -> CompiledApp:
    """Validates the flows together and compiles them; raises :class:`WiringError`.

    With a ``binder``, every Schema Registry format is bound where it is used; with
    ``state_keys``, every flow with ``encrypt=True`` gets the cipher they make."""
    compiler = _Compiler(app, topics, binder, state_keys)
    steps: list[Step] = []
    names: set[str] = set()
    tables: dict[str, str] = {}
    for config in flows:
        name = getattr(config, "name", None)
        if name in names:
            raise WiringError(str(name), "name", "two flows have this name; names must differ")
        names.add(str(name))
        for step in compiler.compile(config):
            steps.append(step)
            claim_table(step, tables)
    return CompiledApp(
        steps=topological_order(steps),
        topics=dict(compiler.topics),
        internal=frozenset(compiler.internal),
        routes=tuple(compiler.routes),
        registry_formats=compiler.registry_formats,
        encrypted=compiler.encrypted,
    )


__all__ = ["CompiledApp", "compile_app"]
