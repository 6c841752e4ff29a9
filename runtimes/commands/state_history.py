"""``flows state history <app> <flow> <key>``: the changes of one key, newest first.

Reads the flow's history table in PostgreSQL directly (no worker or HTTP server needed),
a page at a time (``--limit``, default 20; ``--before`` takes the cursor the previous page
printed), and prints one line per change: its id, commit time, input record and the state
before and after; ``--json`` prints what ``GET /state/<flow>/<key>/history`` answers. The
key is given as in a URL's ``/state/<flow>/<key>`` (decoded: ``the``, ``42`` for a JSON
number).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, TextIO

from flows.errors import ConfigError

if TYPE_CHECKING:
    from flows.steps import StatefulStep
    from runtimes.commands import Connection, SettingsOf
    from runtimes.config import Settings

#: changes printed when --limit is not given
DEFAULT_LIMIT = 20


def register(actions: Any, connection: Connection, settings: SettingsOf) -> None:
    """Adds ``history`` to ``actions``, the subcommands of ``flows state``."""
    history = actions.add_parser(
        "history",
        help="the changes of one key of a flow with history=True, newest first",
        description="Print the changes of KEY in FLOW's history (history=True), newest "
        "first: id, commit time, input record (topic[partition]@offset), state before -> "
        "after. Reads PostgreSQL directly.",
    )
    history.add_argument("app")
    history.add_argument("flow")
    history.add_argument("key", help="the key as in /state/<flow>/<key>, decoded")
    history.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"changes to print (default {DEFAULT_LIMIT})",
    )
    history.add_argument(
        "--before", metavar="CURSOR", help="the cursor a previous page printed: older changes"
    )
    history.add_argument("--json", action="store_true", help="print the HTTP API's JSON")
    connection(history)

    def handler(args: argparse.Namespace, out: TextIO) -> int:
        return print_history(args, settings(args), out)

    history.set_defaults(handler=handler)


def print_history(args: argparse.Namespace, config: Settings, out: TextIO) -> int:
    from flows.app import load_app
    from runtimes.http.history import history_page
    from runtimes.postgres import PostgresStateStore

    step = _flow(load_app(args.app), args.flow, config)
    if args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    query = f"limit={args.limit}" + (f"&before={args.before}" if args.before else "")
    store = PostgresStateStore(config.database_url)
    try:
        answer = history_page(step, store, args.key.encode("utf-8"), query)
    finally:
        store.close()
    page = json.loads(answer.body)
    if answer.status != 200:
        raise ConfigError(page["error"])
    if args.json:
        print(json.dumps(page, indent=2, ensure_ascii=False), file=out)
        return 0
    shown = json.dumps(page["key"], ensure_ascii=False)
    if not page["items"]:
        print(f"no changes of key {shown} in flow {args.flow!r}", file=out)
        return 0
    print(f"changes of key {shown} in flow {args.flow!r}, newest first:", file=out)
    for item in page["items"]:
        source = f"{item['topic']}[{item['partition']}]@{item['offset']}"
        before = _shown(item["previous"], "(none)")
        after = _shown(item["value"], "(deleted)")
        print(f"{item['id']:>10}  {item['committed_at']}  {source}  {before} -> {after}", file=out)
    if page["next"] is not None:
        print(
            f"older: flows state history {args.app} {args.flow} {args.key} --before {page['next']}",
            file=out,
        )
    return 0


def _flow(app: Any, flow: str, config: Settings) -> StatefulStep:
    """The stateful step of ``flow``, its registry formats and state keys bound (states
    decode, and decrypt)."""
    from flows.steps import StatefulStep

    binder = None
    if app.compiled.registry_formats:
        from runtimes.registry import RegistryBinder

        binder = RegistryBinder.from_settings(config)
    app = app.bind(binder, state_keys=config.state_keyring)
    for step in app.steps:
        if isinstance(step, StatefulStep) and step.flow == flow:
            return step
    raise ConfigError(f"app {app.name!r} has no stateful flow {flow!r}")


def _shown(value: Any, absent: str) -> str:
    return absent if value is None else json.dumps(value, ensure_ascii=False)


__all__ = ["DEFAULT_LIMIT", "print_history", "register"]
