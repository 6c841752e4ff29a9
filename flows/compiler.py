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

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flows.encoding import UNCHANGED, sink_encoders
from flows.encryption import StateCipher, StateKeys
from flows.errors import WiringError
from flows.formats import Format
from flows.history import history_policy
from flows.records import Record
from flows.schema_registry import FormatBinder, Part, RegistryFormat
from flows.steps import IngestRoute, MaterialiseStep, RekeyStep, StatefulStep, StatelessStep, Step
from flows.steps.dedupe import DeduplicateStep
from flows.steps.timed_state import TimedStatefulStep
from flows.steps.window import WindowStep
from flows.tables import table_shape
from flows.time_compiler import deduplicate_step, is_timed, time_options, window_step
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
    StatefulExplode,
    StatefulMap,
    StatefulSplit,
    TimeOptions,
    Window,
)


def _sanitise(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name).lower()


class _Compiler:
    """Resolves topics, checks every flow, and builds the steps of one app."""

    def __init__(
        self,
        app: str,
        declared: Sequence[Topic],
        binder: FormatBinder | None = None,
        state_keys: StateKeys | None = None,
    ) -> None:
        self.app = app
        self.binder = binder
        self.state_keys = state_keys
        self._cipher: StateCipher | None = None
        #: whether a flow encrypts its state
        self.encrypted = False
        #: every topic by name, its registry formats bound (when there is a binder)
        self.topics: dict[str, Topic] = {}
        #: every topic by name as first declared, to compare later declarations with
        self.declared: dict[str, Topic] = {}
        self.internal: set[str] = set()
        self.routes: list[IngestRoute] = []
        self.registry_formats = False
        for topic in declared:
            self._register(topic, flow="<app>", fld="topics")

    def _format(self, fmt: Format[Any], where: str, part: Part) -> Format[Any]:
        """``fmt`` as used for the ``part`` of ``where`` (a topic, or a state table):
        bound when it is a registry format and there is a binder, else ``fmt`` itself."""
        if not isinstance(fmt, RegistryFormat):
            return fmt
        self.registry_formats = True
        return fmt if self.binder is None else self.binder.bind(fmt, where, part)

    def cipher(self, config: FlowConfig) -> StateCipher | None:
        """The cipher of a flow with ``encrypt=True`` (one for the app, None while no
        keys are given); None for a flow that does not encrypt."""
        encrypt = getattr(config, "encrypt", False)
        if not isinstance(encrypt, bool):
            raise WiringError(config.name, "encrypt", f"must be True or False, not {encrypt!r}")
        if not encrypt:
            return None
        self.encrypted = True
        if self._cipher is None and self.state_keys is not None:
            self._cipher = StateCipher(self.state_keys)
        return self._cipher

    def _add(self, topic: Topic) -> Topic:
        """Registers a topic not seen before; returns it with its formats bound."""
        key = self._format(topic.key_format, topic.name, "key")
        value = self._format(topic.value_format, topic.name, "value")
        bound = topic
        if key is not topic.key_format or value is not topic.value_format:
            bound = dataclasses.replace(topic, key_format=key, value_format=value)
        self.declared[topic.name] = topic
        self.topics[topic.name] = bound
        return bound

    def _register(self, topic: Topic, flow: str, fld: str) -> Topic:
        known = self.declared.get(topic.name)
        if known is None:
            return self._add(topic)
        same = (
            known.key_format is topic.key_format
            and known.value_format is topic.value_format
            and known.partitions == topic.partitions
        )
        if not same and known is not topic:
            raise WiringError(
                flow,
                fld,
                f"topic {topic.name!r} is declared twice with "
                "different formats or partition counts",
            )
        return self.topics[topic.name]

    def topic(self, ref: Any, flow: str, fld: str) -> Topic:
        if isinstance(ref, Topic):
            return self._register(ref, flow, fld)
        if isinstance(ref, str):
            if ref not in self.topics:
                raise WiringError(
                    flow,
                    fld,
                    f"unknown topic {ref!r}: declare it in the app's topics or pass a Topic",
                )
            return self.topics[ref]
        raise WiringError(flow, fld, f"expected a Topic or a topic name, got {ref!r}")

    def dead_letters(self, config: FlowConfig, sources: Sequence[Topic]) -> dict[str, Topic]:
        found: dict[str, Topic] = {}
        if config.on_error not in ("dead_letter", "skip", "stop"):
            raise WiringError(
                config.name,
                "on_error",
                f"must be 'dead_letter', 'skip' or 'stop', not {config.on_error!r}",
            )
        if config.on_error != "dead_letter":
            return found
        for source in sources:
            name = config.dead_letter_topic or f"{source.name}.dlq"
            dlq = self.topics.get(name) or self._add(Topic(name, partitions=source.partitions))
            self.internal.add(name)
            found[source.name] = dlq
        return found

    def compile(self, config: FlowConfig) -> list[Step]:
        check_flow(config)
        if isinstance(config, Join):
            return self._join(config)
        if isinstance(config, Stateful):
            return self._stateful(config)
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

    def _base(
        self,
        config: FlowConfig,
        sources: tuple[Topic, ...],
        sinks: tuple[Topic, ...],
        name: str | None = None,
    ) -> dict[str, Any]:
        dead = self.dead_letters(config, sources)
        if config.retry_attempts is not None and config.retry_attempts < 0:
            raise WiringError(config.name, "retry_attempts", "must be 0 or more")
        if config.retry_seconds is not None and config.retry_seconds < 0:
            raise WiringError(config.name, "retry_seconds", "must be 0 or more")
        return {
            "app": self.app,
            "name": name or config.name,
            "flow": config.name,
            "sources": sources,
            "sinks": (*sinks, *dict.fromkeys(dead.values())),
            "on_error": config.on_error,
            "dead_letters": dead,
            "retry_attempts": config.retry_attempts,
            "retry_seconds": config.retry_seconds,
        }

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
            **self._base(config, sources, sinks),
        )
        step.emitters = sink_encoders(sources, sinks)
        return step

    def _stateful_step(
        self,
        config: FlowConfig,
        sources: tuple[Topic, ...],
        sinks: tuple[Topic, ...],
        emits: Emits,
        fn: Any,
        state_format: Format[Any],
        table: str | None,
        envelope_sources: dict[str, Topic] | None,
    ) -> StatefulStep:
        flow = config.name
        check_function(fn, 2, flow, "fn")
        timed = isinstance(config, TimeOptions) and is_timed(config)
        suffix = "timed" if timed else "state"
        table = table or f"{_sanitise(self.app)}_{_sanitise(flow)}_{suffix}"
        cipher = self.cipher(config)  # checks ``encrypt`` first
        history = history_policy(config, table, timed)
        common: dict[str, Any] = {
            "kind": "stateful",
            "exactly_once": True,
            "call": fn,
            "emits": emits,
            "state_format": self._format(state_format, table, "value"),
            "envelope_sources": envelope_sources,
            "description": type(config).__name__,
            "table": table,
            "encrypt": getattr(config, "encrypt", False),
            "cipher": cipher,
            **self._base(config, sources, sinks),
        }
        step: StatefulStep
        if timed:
            assert isinstance(config, TimeOptions)
            step = TimedStatefulStep(**time_options(config), **common)
        else:
            step = StatefulStep(history=history, **common)
        origins = envelope_sources.values() if envelope_sources else sources
        step.emitters = sink_encoders(origins, sinks)
        if envelope_sources:
            extra = self.dead_letters(config, tuple(envelope_sources.values()))
            step.dead_letters.update(extra)
            step.sinks = tuple(dict.fromkeys((*step.sinks, *extra.values())))
        return step

    def _rekeyed(
        self,
        config: FlowConfig,
        key_fns: dict[Topic, Any],
        key_format: Format[Any],
        sinks: tuple[Topic, ...],
        emits: Emits,
        fn: Any,
        state_format: Format[Any],
        table: str | None,
    ) -> list[Step]:
        flow = config.name
        sources = tuple(key_fns)
        intermediate = self._add(
            Topic(
                f"{self.app}.{flow}.rekey",
                key_format=key_format,
                partitions=max(s.partitions for s in sources),
            )
        )
        self.internal.add(intermediate.name)
        rekey = RekeyStep(
            kind="stateless",
            exactly_once=True,
            key_format=intermediate.key_format,
            intermediate=intermediate,
            description="re-key",
            key_functions={s.name: f for s, f in key_fns.items()},
            **self._base(config, sources, (intermediate,), name=f"{flow}.rekey"),
        )
        stateful = self._stateful_step(
            config,
            (intermediate,),
            sinks,
            emits,
            fn,
            state_format,
            table,
            {s.name: s for s in sources},
        )
        return [rekey, stateful]

    def _stateful(self, config: Stateful) -> list[Step]:
        flow = config.name
        source = self.topic(config.source, flow, "source")
        emits: Emits
        if isinstance(config, StatefulSplit):
            if len(config.sinks) != 2:
                raise WiringError(flow, "sinks", "a stateful split needs exactly two sinks")
            sinks = tuple(self.topic(s, flow, "sinks") for s in config.sinks)
            emits = "two"
        elif isinstance(config, StatefulMap | StatefulExplode):
            sinks = (self.topic(config.sink, flow, "sink"),)
            emits = "many" if isinstance(config, StatefulExplode) else "one"
        else:
            raise WiringError(flow, "type", f"unsupported flow type {type(config).__name__}")
        if config.state_key is None:
            return [
                self._stateful_step(
                    config,
                    (source,),
                    sinks,
                    emits,
                    config.fn,
                    config.state_format,
                    config.table,
                    None,
                )
            ]
        check_function(config.state_key, 1, flow, "state_key")
        return self._rekeyed(
            config,
            {source: config.state_key},
            config.key_format,
            sinks,
            emits,
            config.fn,
            config.state_format,
            config.table,
        )

    def _join(self, config: Join) -> list[Step]:
        flow = config.name
        if not config.sources:
            raise WiringError(flow, "sources", "a join needs at least one source")
        key_fns: dict[Topic, Any] = {}
        for ref, key_fn in config.sources.items():
            topic = self.topic(ref, flow, "sources")
            check_function(key_fn, 1, flow, f"sources[{topic.name!r}]")
            key_fns[topic] = key_fn
        sinks = (self.topic(config.sink, flow, "sink"),)
        return self._rekeyed(
            config,
            key_fns,
            config.key_format,
            sinks,
            "many" if config.explode else "one",
            config.fn,
            config.state_format,
            config.table,
        )

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
            body_format=self._format(config.body_format, sink.name, "value"),
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
            **self._base(config, (source,), ()),
        )

    def _deduplicate(self, config: Deduplicate) -> DeduplicateStep:
        source = self.topic(config.source, config.name, "source")
        sink = self.topic(config.sink, config.name, "sink")
        table = config.table or f"{_sanitise(self.app)}_{_sanitise(config.name)}_seen"
        return deduplicate_step(config, source, sink, table, self._base(config, (source,), (sink,)))

    def _window(self, config: Window) -> WindowStep[Any]:
        source = self.topic(config.source, config.name, "source")
        sink = self.topic(config.sink, config.name, "sink")
        table = config.table or f"{_sanitise(self.app)}_{_sanitise(config.name)}_windows"
        cipher = self.cipher(config)
        return window_step(
            config,
            source,
            sink,
            table,
            {
                **self._base(config, (source,), (sink,)),
                "encrypt": config.encrypt,
                "cipher": cipher,
            },
            self._format(config.state_format, table, "value"),
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
