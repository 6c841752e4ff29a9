"""Descriptions of an app's topology: text for people, a Mermaid flowchart for documents.

``flows describe`` prints them; they read the compiled app and never connect to anything.
"""

from __future__ import annotations

from flows.app import App
from flows.steps import MaterialiseStep, RekeyStep, StatefulStep
from flows.steps.dedupe import DeduplicateStep
from flows.steps.timed_state import TimedStatefulStep
from flows.steps.window import WindowStep


def describe(app: App, fmt: str = "text") -> str:
    """The topology of ``app`` as text or as a Mermaid flowchart."""
    if fmt == "mermaid":
        lines = ["flowchart LR"]
        for name, topic in app.topics.items():
            lines.append(f'  t_{_node(name)}[["{name} ({topic.partitions})"]]')
        for step in app.steps:
            shape = '[("' if step.keeps_state else '("'
            close = '")]' if shape == '[("' else '")'
            lines.append(f"  s_{_node(step.name)}{shape}{step.name}: {step.description}{close}")
            for source in step.sources:
                lines.append(f"  t_{_node(source.name)} --> s_{_node(step.name)}")
            for sink in step.sinks:
                arrow = "-.->" if sink.name.endswith(".dlq") else "-->"
                lines.append(f"  s_{_node(step.name)} {arrow} t_{_node(sink.name)}")
            if isinstance(step, StatefulStep | WindowStep | DeduplicateStep):
                lines.append(f'  s_{_node(step.name)} --- db_{_node(step.table)}[("{step.table}")]')
            if isinstance(step, MaterialiseStep) and step.shape is not None:
                lines.append(
                    f'  s_{_node(step.name)} --> db_{_node(step.shape.name)}[("{step.shape.name}")]'
                )
        return "\n".join(lines)
    lines = [f"app {app.name}" + (f": {app.description}" if app.description else ""), "", "topics:"]
    for name, topic in app.topics.items():
        internal = " (internal)" if name in app.compiled.internal else ""
        lines.append(
            f"  {name}  partitions={topic.partitions} key={topic.key_format.name} "
            f"value={topic.value_format.name}{internal}"
        )
    lines += ["", "flows:"]
    for step in app.steps:
        guarantee = "exactly-once" if step.exactly_once else "at-least-once"
        lines.append(f"  {step.name}  [{step.description}, {guarantee}] group={step.group_id}")
        lines.append(f"    reads  {', '.join(t.name for t in step.sources)}")
        if step.sinks:
            lines.append(f"    writes {', '.join(t.name for t in step.sinks)}")
        if isinstance(step, WindowStep | DeduplicateStep | TimedStatefulStep):
            what = {WindowStep: "windows", DeduplicateStep: "seen keys"}.get(
                type(step), "states and timers"
            )
            lines.append(
                f"    {what} table {step.table} ((partition, key, start) PRIMARY KEY, end, "
                f"first_ts, last_ts, pending, due, wall, value, updated_at)"
            )
        elif isinstance(step, StatefulStep):
            key = "TEXT" if step.columns.key == "text" else "BYTEA"
            value = "JSONB" if step.columns.value == "json" else "BYTEA"
            sealed = ", AES-256-GCM encrypted" if step.encrypt else ""
            lines.append(
                f"    state  table {step.table} (key {key} PRIMARY KEY, value {value} "
                f"{step.state_format.name}{sealed}, updated_at, source_partition, source_offset)"
            )
            if step.history is not None and step.history_table is not None:
                kept = [
                    f"{step.history.keep} per key" if step.history.keep is not None else "",
                    f"{step.history.max_age_ms / 86_400_000:g} days"
                    if step.history.max_age_ms is not None
                    else "",
                ]
                lines.append(
                    f"    history table {step.history_table} (every change; kept: "
                    f"{', '.join(k for k in kept if k) or 'all'})"
                )
        if isinstance(step, TimedStatefulStep) and step.encrypt:
            lines.append("    states and timers AES-256-GCM encrypted")
        if isinstance(step, MaterialiseStep) and step.shape is not None:
            lines.append(
                f"    table  {step.shape.name} ({', '.join(step.shape.columns)}; "
                f"primary key {', '.join(step.shape.primary_key)})"
            )
        if isinstance(step, RekeyStep) and step.intermediate is not None:
            lines.append(f"    re-keys by {step.key_format.name} into {step.intermediate.name}")
    return "\n".join(lines)


def _node(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


__all__ = ["describe"]
