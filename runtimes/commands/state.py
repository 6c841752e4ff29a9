"""``flows state ...``: commands on a flow's stored state.

``flows state rotate <app> <flow>`` rewrites every value of a flow with ``encrypt=True``
(and the previous and new states of its history, when it keeps one) under the first key of
``FLOWS_STATE_KEYS`` (:mod:`runtimes.postgres.rotation` says how it pages and why it never
overwrites a worker's write), so that an old key can then be dropped. ``--plaintext`` also
encrypts values stored before the flow encrypted. It may run while the app runs: workers
must already have the new key (first or not) to read what it writes.

``flows state history <app> <flow> <key>`` prints a key's changes
(:mod:`runtimes.commands.state_history`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TextIO

from flows.errors import ConfigError
from runtimes.commands import state_history

if TYPE_CHECKING:
    from runtimes.commands import Connection, SettingsOf


def register(commands: Any, connection: Connection, settings: SettingsOf) -> None:
    """Adds ``flows state`` and its subcommands to ``commands``."""
    state = commands.add_parser("state", help="commands on a flow's stored state")
    actions = state.add_subparsers(dest="state_command", required=True, metavar="COMMAND")
    rotate = actions.add_parser(
        "rotate",
        help="re-encrypt every value of an encrypted flow with the first of FLOWS_STATE_KEYS",
    )
    rotate.add_argument("app")
    rotate.add_argument("flow")
    rotate.add_argument(
        "--batch", type=int, default=1000, metavar="N", help="rows per page (default 1000)"
    )
    rotate.add_argument(
        "--plaintext",
        action="store_true",
        help="also encrypt values stored before the flow had encrypt=True",
    )
    connection(rotate)

    def handler(args: argparse.Namespace, out: TextIO) -> int:
        from flows.app import load_app
        from flows.steps import StatefulStep
        from flows.steps.timed_state import TimedStatefulStep
        from flows.steps.window import WindowStep
        from runtimes.postgres import PostgresStateStore
        from runtimes.postgres.rotation import rotate_history, rotate_values

        config = settings(args)
        if config.state_keyring is None:
            raise ConfigError("flows state rotate needs the state keys: set FLOWS_STATE_KEYS")
        app = load_app(args.app).bind(state_keys=config.state_keyring)
        step = next(
            (
                s
                for s in app.steps
                if s.flow == args.flow and isinstance(s, StatefulStep | WindowStep)
            ),
            None,
        )
        if step is None or not step.encrypt:
            raise ConfigError(
                f"app {app.name!r} has no flow {args.flow!r} with encrypt=True; its encrypted "
                f"flows: {list(app.encrypted_flows())}"
            )
        windowed = isinstance(step, WindowStep | TimedStatefulStep)
        store = PostgresStateStore(config.database_url)
        try:
            step.prepare(store)  # a JSONB table of plaintext states becomes BYTEA first
            done = rotate_values(
                store.engine,
                store.schema,
                step.table,
                windowed,
                lambda key, start, value: step.reseal(key, start, value, args.plaintext),
                args.batch,
            )
            history = getattr(step, "history_table", None)
            kept = None
            if history is not None:  # its previous and new states, rotated the same way
                kept = rotate_history(
                    store.engine,
                    store.schema,
                    history,
                    lambda key, start, value: step.reseal(key, start, value, args.plaintext),
                    args.batch,
                )
        finally:
            store.close()
        print(
            f"flow {step.flow!r} (table {step.table}): {done.scanned} values, "
            f"{done.rewritten} rewritten with key {config.state_keyring.primary.id!r}, "
            f"{done.current} already under it, {done.changed} changed by a worker meanwhile"
            + (" (run again to rotate them)" if done.changed else ""),
            file=out,
        )
        if kept is not None:
            print(
                f"flow {step.flow!r} (history table {history}): {kept.scanned} changes, "
                f"{kept.rewritten} values rewritten, {kept.current} already under the key",
                file=out,
            )
        return 0

    rotate.set_defaults(handler=handler)
    state_history.register(actions, connection, settings)


__all__ = ["register"]
