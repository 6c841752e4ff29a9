"""``flows run --processes N``: N worker processes of one app, and a supervisor over them.

A worker process runs its flows in threads that share one interpreter lock, so one process
uses about one core. ``--processes N`` starts N of them, each a complete ``flows run`` of
the same app and flows: the same consumer groups, so Kafka shares the partitions out among
them as among replicas on N hosts.

What sets child ``i`` (0 to N-1) apart, and why:

* its instance id is ``<instance_id>.<i>`` (``instance_id``: ``--instance-id``, default the
  host name), which names its client and transactional ids. Distinct, so no two children
  fence each other; stable, so after a restart of the supervisor child ``i`` takes over
  the transactional ids of the old child ``i`` and fences it (a zombie left by a killed
  supervisor cannot commit, and its open transactions are aborted at once instead of
  holding ``read_committed`` readers back until they time out);
* its HTTP server listens on ``http_port + i`` (none when ``http_port`` is 0): every child
  serves its own health, readiness and metrics (Prometheus scrapes N targets); state
  queries read PostgreSQL, so any child answers them.

The supervisor runs no flow and restarts nothing. SIGTERM and SIGINT are forwarded to
every child, which commits its in-flight batches and stops; the supervisor exits once all
have, 0 if every child exited 0. A child that ends on its own (a crash, a persistent
failure, a kill; or exit 0 without ``--until-idle``) stops the others and the supervisor
exits non-zero (the child's code when it is 1 or 2, else 1): an orchestrator that restarts
the supervisor restarts the whole, as it would a single process. With ``--until-idle``
each child exits 0 when it is idle, and the supervisor when all have. A child that does not
stop within ``shutdown_timeout`` (plus a margin) after the signal is killed. On Linux,
children get SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``), so none runs on
unsupervised.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from runtimes.config import Settings

log = logging.getLogger("flows.supervisor")

#: prctl's option for the signal a process gets when its parent dies (linux/prctl.h)
_PR_SET_PDEATHSIG = 1
#: seconds a child has past its own ``shutdown_timeout`` before it is killed
STOP_MARGIN_S = 15.0


def child_settings(settings: Settings, index: int) -> Settings:
    """Child ``index``'s instance id and HTTP port; raises ``ConfigError`` when they are
    not valid (an instance id too long for the suffix, a port past 65535)."""
    return dataclasses.replace(
        settings,
        instance_id=f"{settings.instance_id}.{index}",
        http_port=settings.http_port + index if settings.http_port else 0,
        processes=1,
    )


def child_commands(argv: Sequence[str], settings: Settings) -> list[list[str]]:
    """The command of each child: this ``flows`` command line with ``--processes 1``, the
    child's instance id and port, and its index (for its log lines) appended. Appended
    flags win over the same flags earlier in ``argv`` and over ``FLOWS_*`` variables."""
    commands = []
    for index in range(settings.processes):
        child = child_settings(settings, index)
        commands.append(
            [
                sys.executable,
                "-m",
                "runtimes.cli",
                *argv,
                "--processes",
                "1",
                "--instance-id",
                child.instance_id,
                "--http-port",
                str(child.http_port),
                "--process-index",
                str(index),
            ]
        )
    return commands


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the directory this ``runtimes`` was imported from first on
    ``PYTHONPATH``, so each child runs the supervisor's code, wherever it came from."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**environ, "PYTHONPATH": os.pathsep.join([root, *(p for p in paths if p != root)])}


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux; elsewhere a
    no-op), and at once if it died already."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Starts the children, forwards stop signals, stops all when one ends on its own.

    ``stop_after`` bounds how long children may take to stop once told; past it they are
    killed. ``until_idle``: a child that exits 0 is done, not failed.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        env: Mapping[str, str],
        stop_after: float,
        until_idle: bool = False,
        poll_interval: float = 0.1,
    ) -> None:
        self.commands = [list(c) for c in commands]
        self.env = dict(env)
        self.stop_after = stop_after
        self.until_idle = until_idle
        self.poll_interval = poll_interval
        self.children: list[subprocess.Popen[bytes]] = []
        self._requested: int | None = None

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Asks for every child to be stopped with ``signum`` (what the signal handlers
        call; safe from another thread)."""
        if self._requested is None:
            self._requested = signum

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop(signum)

    def run(self) -> int:
        """Runs the children to their end; returns the supervisor's exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            return self._run()
        finally:
            for child in self.children:  # never leave one behind, whatever happened here
                if child.poll() is None:
                    child.kill()
                    child.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        parent = os.getpid()
        failure: tuple[int, int] | None = None  # the first process that ended on its own
        for index, command in enumerate(self.commands):
            try:
                # preexec_fn is unsafe in a process with threads; the supervisor starts none
                # (its children do the work), and the tie must be made before exec: made
                # later by the child, a supervisor killed meanwhile would go unnoticed
                child = subprocess.Popen(
                    command,
                    env=self.env,
                    preexec_fn=lambda: _die_with_parent(parent),  # noqa: PLW1509
                )
            except OSError as error:
                log.error("cannot start process %d: %s", index, error)
                failure = (index, 1)
                self.stop()
                break
            self.children.append(child)
            log.info("process %d started (pid %d)", index, child.pid)
        ended: dict[int, int] = {}
        told: float | None = None  # when the children were told to stop
        while len(ended) < len(self.children):
            if self._requested is not None and told is None:
                told = self._tell(self._requested, ended)
            for index, child in enumerate(self.children):
                code = child.poll()
                if code is None or index in ended:
                    continue
                ended[index] = code
                expected = told is not None or (code == 0 and self.until_idle)
                log.log(
                    logging.INFO if expected else logging.ERROR,
                    "process %d (pid %d) exited with %s%s",
                    index,
                    child.pid,
                    code,
                    "" if expected else ": stopping the others",
                )
                if not expected and failure is None:
                    failure = (index, code)
                    self.stop()
            if told is not None and time.monotonic() - told > self.stop_after:
                for index, child in enumerate(self.children):
                    if index not in ended and child.poll() is None:
                        log.error("process %d did not stop in time: killing it", index)
                        child.kill()
            time.sleep(self.poll_interval)
        if failure is not None:
            return failure[1] if failure[1] in (1, 2) else 1
        return 0 if all(code == 0 for code in ended.values()) else 1

    def _tell(self, signum: int, ended: Mapping[int, int]) -> float:
        name = signal.Signals(signum).name
        log.info("stopping every process (%s)", name)
        for index, child in enumerate(self.children):
            if index not in ended and child.poll() is None:
                child.send_signal(signum)
        return time.monotonic()


def supervise(argv: Sequence[str], settings: Settings) -> int:
    """Runs ``settings.processes`` children of this command line to their end."""
    commands = child_commands(argv, settings)
    last = child_settings(settings, len(commands) - 1)
    log.info(
        "supervising %d processes (instance ids %s.0 to %s)",
        len(commands),
        settings.instance_id,
        last.instance_id,
    )
    supervisor = Supervisor(
        commands,
        child_environment(os.environ),
        stop_after=settings.shutdown_timeout + STOP_MARGIN_S,
        until_idle=settings.until_idle is not None,
    )
    return supervisor.run()


__all__ = ["Supervisor", "child_commands", "child_environment", "child_settings", "supervise"]
