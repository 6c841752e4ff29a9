"""Checks of the wiring that need no topic resolved: flow names, user functions, the graph.

Each check raises :class:`~flows.errors.WiringError` naming the flow and the field, at load
time, so a bad wiring never reaches a runtime. :mod:`flows.compiler` calls them while it
builds the steps; they never change what they are given (but :func:`claim_table`, which
records the claim).
"""

from __future__ import annotations

import graphlib
import inspect
import re
from collections.abc import Sequence
from typing import Any

from flows.errors import WiringError
from flows.steps import MaterialiseStep, StatefulStep, Step
from flows.steps.dedupe import DeduplicateStep
from flows.steps.window import WindowStep
from flows.wiring import FlowConfig

#: A flow name: it names consumer groups, topics and tables, so it stays plain ASCII.
FLOW_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,100}$")


def check_flow(config: Any) -> None:
    """``config`` is a flow configuration whose name matches :data:`FLOW_NAME`."""
    if not isinstance(config, FlowConfig):
        raise WiringError(str(config), "flows", f"{config!r} is not a flow configuration")
    if not FLOW_NAME.match(config.name or ""):
        raise WiringError(
            str(config.name),
            "name",
            "a flow name needs letters, digits, '-' or '_', starting with a letter or digit",
        )


def check_function(fn: Any, count: int, flow: str, fld: str) -> None:
    """``fn`` is callable with ``count`` positional arguments (builtins are trusted)."""
    if not callable(fn):
        raise WiringError(flow, fld, f"expected a function, got {fn!r}")
    if not _arity_ok(fn, count):
        wanted = {0: "()", 1: "(record)", 2: "(record, state)", 3: "(key, state, timer)"}.get(
            count, f"{count} arguments"
        )
        raise WiringError(
            flow,
            fld,
            f"{getattr(fn, '__name__', fn)!r} must accept {wanted}: {count} positional argument(s)",
        )


def _arity_ok(fn: Any, count: int) -> bool:
    try:
        inspect.signature(fn).bind(*([None] * count))
    except TypeError:
        return False
    except ValueError:  # builtins without a signature: trust them
        return True
    return True


def claim_table(step: Step, tables: dict[str, str]) -> None:
    """Records in ``tables`` (table name to flow) the tables ``step`` writes, if any (a
    history table too); two flows never share a table."""
    table = (
        step.table
        if isinstance(step, StatefulStep | WindowStep | DeduplicateStep)
        else (step.shape.name if isinstance(step, MaterialiseStep) and step.shape else None)
    )
    history = step.history_table if isinstance(step, StatefulStep) else None
    for name in (table, history):
        if name is None:
            continue
        if name in tables:
            raise WiringError(
                step.flow,
                "table",
                f"table {name!r} is already used by flow {tables[name]!r}",
            )
        tables[name] = step.flow


def topological_order(steps: Sequence[Step]) -> tuple[Step, ...]:
    """``steps`` ordered so that a step comes after every step that writes what it reads.

    A cycle (a flow that, through others, reads what it writes) would loop forever, so it
    fails, naming the flows around it.
    """
    writers: dict[str, list[Step]] = {}
    for step in steps:
        for sink in step.sinks:
            writers.setdefault(sink.name, []).append(step)
    graph: dict[Step, set[Step]] = {step: set() for step in steps}
    for step in steps:
        for source in step.sources:
            graph[step].update(writers.get(source.name, ()))
    try:
        return tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        cycle = [s.flow for s in error.args[1]]
        raise WiringError(
            cycle[0], "sink", "the flows form a cycle: " + " -> ".join(cycle)
        ) from error


__all__ = ["FLOW_NAME", "check_flow", "check_function", "claim_table", "topological_order"]
