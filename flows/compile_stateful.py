"""Compiling stateful flows: a :class:`~flows.steps.StatefulStep` (or a timed one) per
flow, and for a :class:`~flows.wiring.Join` or a flow with a ``state_key`` a
:class:`~flows.steps.RekeyStep` writing an intermediate topic keyed by the state key first.
"""

from __future__ import annotations

from typing import Any

from flows.compile_context import CompileContext, sanitise
from flows.encoding import sink_encoders
from flows.errors import WiringError
from flows.formats import Format
from flows.history import history_policy
from flows.steps import RekeyStep, StatefulStep, Step
from flows.steps.timed_state import TimedStatefulStep
from flows.time_compiler import is_timed, time_options
from flows.topics import Topic
from flows.validation import check_function
from flows.wiring import (
    Emits,
    FlowConfig,
    Join,
    Stateful,
    StatefulExplode,
    StatefulMap,
    StatefulSplit,
    TimeOptions,
)


class StatefulCompiler(CompileContext):
    """Builds the steps of stateful flows and joins."""

    def stateful_step(
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
        table = table or f"{sanitise(self.app)}_{sanitise(flow)}_{suffix}"
        cipher = self.cipher(config)  # checks ``encrypt`` first
        history = history_policy(config, table, timed)
        common: dict[str, Any] = {
            "kind": "stateful",
            "exactly_once": True,
            "call": fn,
            "emits": emits,
            "state_format": self.bind_format(state_format, table, "value"),
            "envelope_sources": envelope_sources,
            "description": type(config).__name__,
            "table": table,
            "encrypt": getattr(config, "encrypt", False),
            "cipher": cipher,
            **self.base(config, sources, sinks),
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

    def rekeyed(
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
        intermediate = self.add(
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
            **self.base(config, sources, (intermediate,), name=f"{flow}.rekey"),
        )
        stateful = self.stateful_step(
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

    def stateful(self, config: Stateful) -> list[Step]:
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
                self.stateful_step(
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
        return self.rekeyed(
            config,
            {source: config.state_key},
            config.key_format,
            sinks,
            emits,
            config.fn,
            config.state_format,
            config.table,
        )

    def join(self, config: Join) -> list[Step]:
        flow = config.name
        if not config.sources:
            raise WiringError(flow, "sources", "a join needs at least one source")
        key_fns: dict[Topic, Any] = {}
        for ref, key_fn in config.sources.items():
            topic = self.topic(ref, flow, "sources")
            check_function(key_fn, 1, flow, f"sources[{topic.name!r}]")
            key_fns[topic] = key_fn
        sinks = (self.topic(config.sink, flow, "sink"),)
        return self.rekeyed(
            config,
            key_fns,
            config.key_format,
            sinks,
            "many" if config.explode else "one",
            config.fn,
            config.state_format,
            config.table,
        )


__all__ = ["StatefulCompiler"]
