"""Compiling the configurations with time: :class:`Window`, :class:`Deduplicate`, and the
time options of stateful flows (:class:`TimeOptions`).

:mod:`flows.compiler` resolves topics and default table names and calls these; they check
the time-specific fields (a bad value is a :class:`~flows.errors.WiringError` naming the
flow and the field) and build the steps that :class:`~flows.engine.timed.TimedBatch` runs.
"""

from __future__ import annotations

from typing import Any

from flows.encoding import SinkEncoder, decode
from flows.errors import WiringError
from flows.formats import Format
from flows.steps.dedupe import DeduplicateStep
from flows.steps.fixed_window import FixedWindowStep
from flows.steps.window import WindowStep, windowing_for
from flows.steps.window_codec import AccCodec
from flows.steps.window_machine import MachineWindowStep
from flows.topics import Topic
from flows.validation import check_function
from flows.windows import Hopping, Tumbling, WindowConfigError, to_millis
from flows.wiring import Deduplicate, TimeOptions, Window

__all__ = ["deduplicate_step", "is_timed", "time_options", "window_step"]


def deduplicate_step(
    config: Deduplicate, source: Topic, sink: Topic, table: str, base: dict[str, Any]
) -> DeduplicateStep:
    """The step of a :class:`Deduplicate` whose topics the compiler resolved."""
    flow = config.name
    for fld, fn in (("key", config.key), ("timestamp", config.timestamp)):
        if fn is not None:
            check_function(fn, 1, flow, fld)
    try:
        ttl = to_millis(config.ttl, "ttl")
    except WindowConfigError as error:
        raise WiringError(flow, "ttl", str(error)) from error
    return DeduplicateStep(
        kind="stateful",
        exactly_once=True,
        key=config.key,
        timestamp=config.timestamp,
        ttl=ttl,
        table=table,
        encoder=SinkEncoder(source, sink),
        description="Deduplicate",
        **base,
    )


def window_step(
    config: Window,
    source: Topic,
    sink: Topic,
    table: str,
    base: dict[str, Any],
    state_format: Format[Any],
) -> WindowStep[Any]:
    """The step of a :class:`Window` whose topics (and state format) the compiler
    resolved."""
    flow = config.name
    check_function(config.fn, 2, flow, "fn")
    check_function(config.initial, 0, flow, "initial")
    for fld, fn, count in (
        ("merge", config.merge, 2),
        ("timestamp", config.timestamp, 1),
        ("result", config.result, 4),
    ):
        if fn is not None:
            check_function(fn, count, flow, fld)
    if config.emit not in ("final", "update"):
        raise WiringError(flow, "emit", f"must be 'final' or 'update', not {config.emit!r}")
    try:
        windowing, keeps_records = windowing_for(
            config.window,
            config.initial,
            config.fn,
            config.merge,
            config.grace,
            lambda raw: decode(source, raw),
        )
        idle = (
            None
            if config.close_after_idle is None
            else to_millis(config.close_after_idle, "close_after_idle")
        )
    except WindowConfigError as error:
        raise WiringError(flow, "window", str(error)) from error
    fixed = isinstance(config.window, Tumbling | Hopping)
    step_type: type[WindowStep[Any]] = FixedWindowStep if fixed else MachineWindowStep
    return step_type(
        kind="stateful",
        exactly_once=True,
        windowing=windowing,
        timestamp=config.timestamp,
        emit=config.emit,
        result=config.result,
        state_format=state_format,
        table=table,
        close_after_idle=idle,
        codec=AccCodec(state_format, keeps_records),
        initial=config.initial,
        fn=config.fn,
        description=f"Window {type(config.window).__name__}",
        **base,
    )


def is_timed(config: TimeOptions) -> bool:
    """Whether a stateful flow uses time (then it runs as a :class:`TimedStatefulStep`)."""
    return config.timestamp is not None or config.ttl is not None or config.on_timer is not None


def time_options(config: TimeOptions) -> dict[str, Any]:
    """The time options of a stateful flow, checked, as :class:`TimedStatefulStep` fields."""
    flow = getattr(config, "name", "?")
    if config.timestamp is not None:
        check_function(config.timestamp, 1, flow, "timestamp")
    if config.on_timer is not None:
        check_function(config.on_timer, 3, flow, "on_timer")
    if config.ttl_clock not in ("event", "wall"):
        raise WiringError(flow, "ttl_clock", f"must be 'event' or 'wall', not {config.ttl_clock!r}")
    try:
        ttl = None if config.ttl is None else to_millis(config.ttl, "ttl")
    except WindowConfigError as error:
        raise WiringError(flow, "ttl", str(error)) from error
    return {
        "timestamp": config.timestamp,
        "on_timer": config.on_timer,
        "ttl": ttl,
        "ttl_wall": config.ttl_clock == "wall",
    }
