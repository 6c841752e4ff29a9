"""``flows run --processes N``'s supervisor (runtimes/supervisor.py) over small Python
children that stand in for worker processes: each writes ``<dir>/<i>.started`` when it
runs and ``<dir>/<i>.stopped`` when a SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from flows.errors import ConfigError
from runtimes.config import Settings
from runtimes.supervisor import Supervisor, child_commands, child_environment
from tests.helpers import wait_until

#: a stand-in worker: ``python -c CHILD <dir> <index> <children> <exit code or "wait"> [ignore]
#: [after]``
#: (``ignore``: SIGTERM does not stop it; ``after``: it ends once every other child started)
CHILD = """
import pathlib, signal, sys, time
where, index, count, end = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
def stopped(signum, frame):
    (where / f"{index}.stopped").write_text(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if "ignore" in sys.argv else stopped)
signal.signal(signal.SIGINT, stopped)
(where / f"{index}.started").touch()
while "after" in sys.argv and len(list(where.glob("*.started"))) < count:
    time.sleep(0.01)
if end == "wait":
    time.sleep(120)
    sys.exit(5)
sys.exit(int(end))
"""


def _supervisor(
    where: Path, ends: Sequence[str], until_idle: bool = False, stop_after: float = 30.0
) -> Supervisor:
    commands = [
        [sys.executable, "-c", CHILD, str(where), str(i), str(len(ends)), *end.split()]
        for i, end in enumerate(ends)
    ]
    return Supervisor(commands, os.environ, stop_after=stop_after, until_idle=until_idle)


def _when_started(where: Path, count: int) -> None:
    wait_until(lambda: len(list(where.glob("*.started"))) == count, 30, "the children to start")


def _stop_once_started(supervisor: Supervisor, where: Path, count: int, signum: int) -> None:
    def stop() -> None:
        _when_started(where, count)
        supervisor.stop(signum)

    threading.Thread(target=stop, daemon=True).start()


def test_a_stop_is_forwarded_to_every_child_and_a_clean_stop_exits_0(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, ["wait", "wait"])
    _stop_once_started(supervisor, tmp_path, 2, signal.SIGTERM)
    assert supervisor.run() == 0
    assert {p.name: p.read_text() for p in tmp_path.glob("*.stopped")} == {
        "0.stopped": "SIGTERM",
        "1.stopped": "SIGTERM",
    }


def test_sigint_is_forwarded_as_sigint(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, ["wait", "wait"])
    _stop_once_started(supervisor, tmp_path, 2, signal.SIGINT)
    assert supervisor.run() == 0
    assert {p.read_text() for p in tmp_path.glob("*.stopped")} == {"SIGINT"}


def test_a_failing_child_stops_the_others_and_its_code_is_the_exit_code(
    tmp_path: Path,
) -> None:
    supervisor = _supervisor(tmp_path, ["wait", "2 after"])
    assert supervisor.run() == 2
    assert (tmp_path / "0.stopped").read_text() == "SIGTERM", "stopped, not killed"


def test_a_child_killed_by_a_signal_makes_the_supervisor_exit_1(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, ["wait", "wait"])

    def kill_one() -> None:
        _when_started(tmp_path, 2)
        os.kill(supervisor.children[1].pid, signal.SIGKILL)

    threading.Thread(target=kill_one, daemon=True).start()
    assert supervisor.run() == 1
    assert (tmp_path / "0.stopped").exists()


def test_a_child_ending_0_is_a_failure_unless_until_idle(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    assert _supervisor(tmp_path / "a", ["wait", "0 after"], until_idle=False).run() == 1
    assert (tmp_path / "a" / "0.stopped").exists()
    assert _supervisor(tmp_path / "b", ["0", "0"], until_idle=True).run() == 0


def test_a_child_that_ignores_the_stop_is_killed_after_the_grace(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, ["wait ignore", "wait"], stop_after=0.5)
    _stop_once_started(supervisor, tmp_path, 2, signal.SIGTERM)
    assert supervisor.run() == 1
    assert [p.name for p in tmp_path.glob("*.stopped")] == ["1.stopped"]
    assert supervisor.children[0].returncode == -signal.SIGKILL


def test_children_have_distinct_stable_instance_ids_and_ports() -> None:
    settings = Settings(instance_id="host-7", http_port=8080, processes=3)
    argv = ["run", "wordcount", "--instance-id", "ignored", "--http-port", "9"]
    commands = child_commands(argv, settings)
    assert commands == child_commands(argv, settings), "the same on every start"
    for index, command in enumerate(commands):
        assert command[command.index("runtimes.cli") + 1 :][: len(argv)] == argv
        tail = command[-8:]  # appended: they win over the same flags earlier
        assert tail == [
            "--processes",
            "1",
            "--instance-id",
            f"host-7.{index}",
            "--http-port",
            str(8080 + index),
            "--process-index",
            str(index),
        ]


def test_no_http_server_stays_none_for_every_child() -> None:
    commands = child_commands(["run", "x"], Settings(http_port=0, processes=2))
    assert [c[c.index("--http-port") + 1] for c in commands] == ["0", "0"]


def test_child_settings_past_their_limits_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="http_port"):
        child_commands(["run", "x"], Settings(http_port=65535, processes=2))
    with pytest.raises(ConfigError, match="instance_id"):
        child_commands(["run", "x"], Settings(instance_id="h" * 100, processes=2))
    with pytest.raises(ConfigError, match="processes"):
        Settings(processes=0)


def test_children_import_the_supervisors_code_first() -> None:
    root = str(Path(__file__).resolve().parent.parent.parent)
    env = child_environment({"PYTHONPATH": os.pathsep.join(["/elsewhere", root])})
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere"]
