"""``flows status <app>``: per flow, its group, lag, watermarks, dead letters and state rows.

The figures are gathered by :mod:`runtimes.commands.status_figures` (what each means is
written there) and rendered by :mod:`runtimes.commands.status_view`: a table per flow, one
JSON document with ``--json``, or a live view refreshed every few seconds with ``--watch``.
Both are imported when the command runs, so ``flows --help`` loads neither Kafka's client
nor SQLAlchemy nor ``rich``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from runtimes.commands import Connection, SettingsOf

#: the refresh interval of ``--watch`` when none is given, in seconds
WATCH_SECONDS = 2.0


def register(commands: Any, connection: Connection, settings: SettingsOf) -> None:
    """Adds ``flows status`` to ``commands``."""
    sub = commands.add_parser(
        "status",
        help="per flow: consumer group, lag per partition, committed offset against the "
        "database watermark, dead letters, state rows (reads Kafka and PostgreSQL directly)",
    )
    sub.add_argument("app")
    shown = sub.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print one JSON document")
    shown.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=WATCH_SECONDS,
        metavar="SECONDS",
        help=f"refresh live in the terminal every SECONDS (default {WATCH_SECONDS:g}); Ctrl-C ends",
    )
    connection(sub)

    def handler(args: argparse.Namespace, out: TextIO) -> int:
        from rich.console import Console

        from flows.app import load_app
        from runtimes.commands.status_reads import StatusReader
        from runtimes.commands.status_view import render, watch
        from runtimes.kafka import Admin

        app = load_app(args.app)
        config = settings(args)
        admin = Admin(config.admin_config(), timeout=config.startup_timeout)
        admin.check()
        reader = StatusReader(app, admin, config.database_url, config.admin_config())
        try:
            if args.json:
                print(json.dumps(reader.read().to_json(), indent=2), file=out)
            elif args.watch is not None:
                watch(reader.read, max(args.watch, 0.1), Console(file=out))
            else:
                Console(file=out).print(render(reader.read()))
        finally:
            reader.close()
        return 0

    sub.set_defaults(handler=handler)


__all__ = ["WATCH_SECONDS", "register"]
