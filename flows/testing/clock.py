"""A clock that moves only when told: tests control time without sleeping."""

from __future__ import annotations

from datetime import timedelta


class ManualClock:
    """Follows :class:`flows.ports.Clock`. ``sleep`` advances it at once, so a retry's
    backoff or a batch's linger costs no real time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._start = start
        self._elapsed = 0.0

    def time(self) -> float:
        return self._start + self._elapsed

    def monotonic(self) -> float:
        return self._elapsed

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, by: float | timedelta) -> None:
        """Moves the clock forward by ``by`` (seconds, or a timedelta); never back."""
        seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
        if seconds < 0:
            raise ValueError(f"a clock moves forward only; cannot advance by {seconds} s")
        self._elapsed += seconds
