"""A system under test as a child process: its CPU time, peak RSS and end (Linux ``/proc``).

CPU is read from ``/proc/<pid>/stat`` (user + system, the threads included) whenever the
harness asks, so a run's CPU covers the same window as its wall time (startup and the
idle tail left out). Peak RSS is ``VmHWM`` of ``/proc/<pid>/status``: the kernel's own
high-water mark, so no sample can miss a peak (``ru_maxrss`` would not do: it keeps the
forking parent's RSS across ``exec``). ``os.wait4`` gives the whole life's CPU at the end.

A system of several processes (``flows run --processes 2``: a supervisor and its workers)
counts as their sum: CPU of the process and of its descendants (live ones from their own
``stat``, ended ones from their parent's children-times), peak RSS the sum of each
process's high-water mark (an upper bound of the tree's peak, as they need not peak
together). A single process reads the same as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Exit:
    code: int | None
    cpu_total_s: float
    max_rss_mb: float


class Child:
    """A started process whose CPU and memory can be read while it runs."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        with log.open("ab") as handle:
            self.process = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid = self.process.pid
        self.started = time.monotonic()
        self.exit: Exit | None = None
        self._last_cpu = 0.0
        self._last_hwm = 0.0
        #: each process of the tree's high-water mark as last read (MB), by pid
        self._hwm: dict[int, float] = {}

    def _tree(self) -> list[int]:
        """The process and its live descendants (children of each one's threads)."""
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(c) for c in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
        return found

    def cpu(self) -> float:
        """User + system seconds so far of the process and its descendants (the last known
        value once the process is gone)."""
        total, fields_read = 0.0, False
        for pid in self._tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                # utime, stime, and cutime, cstime: its children that ended and were reaped
                total += sum(int(f) for f in fields[11:15]) / _TICKS
                fields_read = fields_read or pid == self.pid
            except (OSError, IndexError, ValueError):
                continue
        if fields_read:
            self._last_cpu = total
        return self._last_cpu

    def peak_rss_mb(self) -> float:
        for pid in self._tree():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        mb = int(line.split()[1]) / 1024
                        self._hwm[pid] = max(mb, self._hwm.get(pid, 0.0))
                        break
            except (OSError, ValueError):
                continue
        if self._hwm:
            self._last_hwm = sum(self._hwm.values())
        return self._last_hwm

    def poll(self) -> int | None:
        """The exit code once the process ended (reaped with its rusage), else ``None``."""
        if self.exit is not None:
            return self.exit.code
        # Read the last figures before reaping: /proc/<pid> goes with the zombie.
        self.cpu()
        self.peak_rss_mb()
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.exit = Exit(self.process.returncode, self._last_cpu, self._last_hwm)
            return self.exit.code
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        self.process.returncode = code
        self.exit = Exit(code, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
        return code

    def stop(self, grace: float = 30.0) -> Exit:
        """SIGTERM (a clean shutdown), SIGKILL after ``grace`` seconds; returns the exit."""
        if self.poll() is None:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.poll() is None:
                self._signal(signal.SIGKILL)
                while self.poll() is None:
                    time.sleep(0.05)
        assert self.exit is not None
        return self.exit

    def kill(self) -> Exit:
        """SIGKILL, no shutdown of any kind (a crash); returns the exit once reaped."""
        if self.poll() is None:
            self._signal(signal.SIGKILL)
            while self.poll() is None:
                time.sleep(0.01)
        assert self.exit is not None
        return self.exit

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
