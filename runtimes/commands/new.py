"""``flows new <name>``: a one-file app, its test, and its registration, ready to run.

It writes ``<name>/app.py`` (a keyed count: a topic in, a running count per key out, state
in PostgreSQL), ``<name>/test_app.py`` (the test driver runs it, no broker needed), and adds
``<name> = "<name>/app.py"`` to the ``[apps]`` table of ``flows.toml`` in the working
directory, the project-local registry :func:`flows.app.registered_apps` reads. So, at once,
``pytest <name>`` passes and ``flows run <name>`` runs it. Nothing is overwritten.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path
from typing import Any, TextIO

from flows.app import LOCAL_REGISTRY, local_apps
from flows.errors import ConfigError
from runtimes.commands import Connection, SettingsOf

__all__ = ["register", "scaffold"]

#: an app name that is also a directory and a Python identifier-ish module name
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

_APP = '''\
"""{name}: a running count per key, exactly-once, the counts in PostgreSQL.

Records in ``{name}-input`` (any key, JSON values); ``{name}-output`` gets, per record, its
key and ``{{"count": <how many records of this key so far>}}``. Change ``count`` and the
topics to make it yours; ``test_app.py`` beside this file shows how to test it.
"""

from __future__ import annotations

from typing import Any

from flows import JSON, STR, App, Record, StatefulMap, Topic

source = Topic("{name}-input", key_format=STR, value_format=JSON)
counts = Topic("{name}-output", key_format=STR, value_format=JSON)


def count(record: Record[str, Any], state: int | None) -> tuple[dict[str, int], int]:
    """(record, state) -> (output, new state): state is None for a key never seen."""
    total = (state or 0) + 1
    return {{"count": total}}, total


app = App("{name}", [StatefulMap(name="count", source=source, sink=counts, fn=count)])
'''

_TEST = '''\
"""Tests of the {name} app: the test driver runs its flows in memory, no broker needed."""

from __future__ import annotations

from pathlib import Path

from flows import load_app
from flows.testing import TestDriver

app = load_app(str(Path(__file__).with_name("app.py")))


def test_counts_per_key() -> None:
    driver = TestDriver(app)
    for key in ("ann", "bob", "ann"):
        driver.pipe("{name}-input", {{"page": "/"}}, key=key)
    assert [(r.key, r.value) for r in driver.read("{name}-output")] == [
        ("ann", {{"count": 1}}),
        ("bob", {{"count": 1}}),
        ("ann", {{"count": 2}}),
    ]
    assert driver.state("count", "ann") == 2


def test_a_record_that_does_not_decode_is_dead_lettered() -> None:
    driver = TestDriver(app)
    driver.pipe_raw("{name}-input", b"not json", key=b"ann")
    (dead,) = driver.read("{name}-input.dlq")
    assert dead.header("flows.error.type") == b"DecodeError"
    assert driver.state("count", "ann") is None
'''


def scaffold(name: str, where: Path) -> list[Path]:
    """Writes the app ``name`` under ``where`` and registers it in ``where/flows.toml``;
    returns the files written. Raises :class:`ConfigError` for a bad or taken name."""
    if not _NAME.match(name):
        raise ConfigError(
            f"app name {name!r}: use lower-case letters, digits and '_', starting with a "
            f"letter (it names a directory, topics and tables)"
        )
    folder = where / name
    registry = where / LOCAL_REGISTRY
    if folder.exists():
        raise ConfigError(f"{folder} exists already; choose another name or remove it")
    if name in local_apps(registry):
        raise ConfigError(f"{registry} registers {name!r} already")
    folder.mkdir(parents=True)
    app_file, test_file = folder / "app.py", folder / "test_app.py"
    app_file.write_text(_APP.format(name=name), encoding="utf-8")
    test_file.write_text(_TEST.format(name=name), encoding="utf-8")
    entry = f'{name} = "{name}/app.py"\n'
    if registry.is_file():
        text = registry.read_text(encoding="utf-8")
        if re.search(r"^\[apps\]\s*$", text, re.M):
            text = re.sub(r"^\[apps\]\s*$\n?", "[apps]\n" + entry, text, count=1, flags=re.M)
        else:
            text = text.rstrip("\n") + "\n\n[apps]\n" + entry
    else:
        text = "# Apps of this project: `flows run <name>` finds them here.\n[apps]\n" + entry
    registry.write_text(text, encoding="utf-8")
    return [app_file, test_file, registry]


def _run(args: argparse.Namespace, out: TextIO) -> int:
    written = scaffold(args.name, Path(args.dir))
    print(
        textwrap.dedent(
            f"""\
            created {", ".join(str(p) for p in written)}
            next:
              pytest {Path(args.dir) / args.name}     # the test driver, no broker needed
              flows run {args.name}             # against Kafka and PostgreSQL (make services)
            """
        ),
        file=out,
        end="",
    )
    return 0


def register(commands: Any, connection: Connection, settings: SettingsOf) -> None:
    new = commands.add_parser("new", help="scaffold a one-file app, its test and its registration")
    new.add_argument("name", help="the app's name: lower-case letters, digits, '_'")
    new.add_argument("--dir", default=".", help="where to create it (default: here)")
    new.set_defaults(handler=_run)
