"""``Idempotency-Key``: successful ingest answers remembered per route and key, per process.

See the package docstring for the contract clients see; :class:`IdempotencyCache` is the
mechanism behind it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from runtimes.http.responses import Response, error_response


@dataclass(eq=False)
class _Attempt:
    fingerprint: bytes
    created: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outcome: Response | None = None


class IdempotencyCache:
    """Remembers successful answers by (scope, key), bounded in size and age; thread-safe.

    :meth:`run` does the work once per key: a duplicate that arrives while the first runs
    waits for it; one that arrives after it succeeded gets its answer; after a failure the
    key is forgotten, so the next duplicate does the work again.
    """

    def __init__(
        self,
        capacity: int = 10_000,
        ttl: float = 3600.0,
        wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.wait = wait
        self.clock = clock
        self._lock = threading.Lock()
        self._attempts: OrderedDict[tuple[str, str], _Attempt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._attempts)

    def run(
        self,
        scope: str,
        key: str,
        body: bytes,
        work: Callable[[], Response],
        succeeded: Callable[[Response], bool],
    ) -> tuple[Response, bool]:
        """The answer for ``(scope, key)`` and whether it is a replay of an earlier one."""
        fingerprint = hashlib.sha256(body).digest()
        slot = (scope, key)
        while True:
            with self._lock:
                self._expire()
                attempt = self._attempts.get(slot)
                owner = attempt is None
                if attempt is None:
                    attempt = self._attempts[slot] = _Attempt(fingerprint, self.clock())
                    while len(self._attempts) > self.capacity:
                        self._attempts.popitem(last=False)
            if owner:
                return self._first(slot, attempt, work, succeeded), False
            if not hmac.compare_digest(attempt.fingerprint, fingerprint):
                return error_response(422, "this Idempotency-Key was used with another body"), False
            if not attempt.done.wait(self.wait):
                return error_response(
                    409, "a request with this Idempotency-Key is still in progress"
                ), False
            if attempt.outcome is not None:
                return attempt.outcome, True
            # the first attempt failed and was forgotten: try to be the next first

    def _first(
        self,
        slot: tuple[str, str],
        attempt: _Attempt,
        work: Callable[[], Response],
        succeeded: Callable[[Response], bool],
    ) -> Response:
        outcome: Response | None = None
        try:
            outcome = work()
            return outcome
        finally:
            with self._lock:
                if outcome is not None and succeeded(outcome):
                    attempt.outcome = outcome
                elif self._attempts.get(slot) is attempt:
                    del self._attempts[slot]
            attempt.done.set()

    def _expire(self) -> None:
        limit = self.clock() - self.ttl
        while self._attempts:
            slot, oldest = next(iter(self._attempts.items()))
            if oldest.created > limit:
                return
            del self._attempts[slot]
