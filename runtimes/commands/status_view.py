"""How ``flows status`` shows an :class:`AppStatus` in a terminal (``rich``), once or live."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runtimes.commands.status_figures import AppStatus, FlowStatus


def watch(read: Callable[[], AppStatus], seconds: float, console: Console) -> None:
    """Renders what ``read`` returns in place, again every ``seconds``, until Ctrl-C."""
    try:
        with Live(render(read()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(seconds)
                live.update(render(read()), refresh=True)
    except KeyboardInterrupt:
        return


def render(status: AppStatus) -> RenderableType:
    """The whole status: a heading, then per flow its summary line and partition table."""
    at = datetime.fromtimestamp(status.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts: list[RenderableType] = [Text(f"app {status.app} at {at}", style="bold")]
    if status.database_error:
        parts.append(Text(f"database unreachable: {status.database_error}", style="red"))
    for flow in status.flows:
        parts.extend(_flow(flow))
    return Group(*parts)


def _flow(flow: FlowStatus) -> list[RenderableType]:
    lag = "-" if flow.lag is None else str(flow.lag)
    heading = Text.assemble(
        ("\n" + flow.step, "bold cyan"),
        f" ({flow.kind}) group {flow.group}: ",
        (flow.group_state, "green" if flow.group_state == "stable" else "yellow"),
        f", {len(flow.members)} member{'s' if len(flow.members) != 1 else ''}, lag {lag}",
    )
    lines: list[RenderableType] = [heading]
    for member in flow.members:
        owned = ", ".join(member.partitions) or "nothing"
        lines.append(Text(f"  member {member.client_id} on {member.host}: {owned}"))
    if flow.state_table is not None:
        rows = _figure(flow.state_rows) if not flow.state_note else flow.state_note
        lines.append(Text(f"  table {flow.state_table}: {rows} rows"))
    for topic, count in flow.dead_letters.items():
        lines.append(Text(f"  dead letters {topic}: {'missing' if count is None else count}"))
    table = Table(box=None, pad_edge=False, padding=(0, 2))
    table.add_column("partition")
    for name in ("committed", "high", "lag"):
        table.add_column(name, justify="right")
    timed = any(p.stream_time is not None for p in flow.partitions)
    if flow.keeps_watermarks:
        table.add_column("db watermark", justify="right")
        if timed:
            table.add_column("stream time")
        table.add_column("")
    for p in flow.partitions:
        name = f"{p.topic}[{p.partition}]" if p.partition >= 0 else f"{p.topic} (missing)"
        cells: list[RenderableType] = [name, _figure(p.committed), _figure(p.high), _figure(p.lag)]
        if flow.keeps_watermarks:
            cells.append(_figure(p.watermark))
            if timed:
                cells.append(_time(p.stream_time))
            cells.append(Text(p.flag, style="red") if p.flag else "")
        table.add_row(*cells)
    lines.append(table)
    return lines


def _figure(value: int | None) -> str:
    return "-" if value is None else str(value)


def _time(millis: int | None) -> str:
    if millis is None:
        return "-"
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


__all__ = ["render", "watch"]
