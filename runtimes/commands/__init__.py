"""CLI commands beyond running an app, one module each (``flows status``, ``flows dlq``, ...).

Each module exposes ``register(commands, connection, settings)``: it adds its subparser to
``commands`` (an ``argparse`` subparsers object), calls ``connection(sub, database=...)`` to
give it the shared connection options, and sets ``handler=fn(args, out) -> exit code``;
``settings(args)`` turns those options into :class:`runtimes.config.Settings`.
:func:`runtimes.cli.parser` registers every module listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Protocol

from runtimes.config import Settings

Connection = Callable[..., None]
SettingsOf = Callable[[argparse.Namespace], Settings]


class Register(Protocol):
    def __call__(self, commands: Any, connection: Connection, settings: SettingsOf) -> None: ...


def _commands() -> tuple[Register, ...]:
    # imported here: each module imports the names above
    from runtimes.commands import dlq, new, state, status

    return (status.register, dlq.register, state.register, new.register)


#: the registration functions of the command modules, in the order of ``flows --help``
COMMANDS: tuple[Register, ...] = _commands()

__all__ = ["COMMANDS", "Connection", "Register", "SettingsOf"]
