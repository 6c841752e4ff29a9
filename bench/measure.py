"""A system under test as a child process: its CPU time, peak RSS and end (Linux ``/proc``).

CPU is read from ``/proc/<pid>/stat`` (user + system, the threads included) whenever the
harness asks, so a run's CPU covers the same window as its wall time (startup and the
idle tail left out). Peak RSS is ``VmHWM`` of ``/proc/<pid>/status``: the kernel's own
high-water mark, so no sample can miss a peak (``ru_maxrss`` would not do: it keeps the
forking parent's RSS across ``exec``). ``os.wait4`` gives the whole life's CPU at the end.
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

    def cpu(self) -> float:
        """User + system seconds so far (the last known value once the process is gone)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self._last_cpu = (int(fields[11]) + int(fields[12])) / _TICKS
        except (OSError, IndexError, ValueError):
            pass
        return self._last_cpu

    def peak_rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self._last_hwm = int(line.split()[1]) / 1024
                    break
        except (OSError, ValueError):
            pass
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
