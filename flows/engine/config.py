"""What the worker loop is tuned by; ``runtimes.config.Settings`` is translated into it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineConfig:
    """The worker loop's settings (see ``runtimes.config.Settings`` for what each costs)."""

    #: names this process in transactional ids; replicas of one flow need distinct ones
    instance_id: str = "local"
    #: records per batch of stateless and materialise steps
    batch_size: int = 5000
    #: records per batch of stateful steps (each costs a PostgreSQL and a Kafka transaction)
    stateful_batch_size: int = 10_000
    #: how long a batch may wait for more while the broker holds more for it, and an empty
    #: poll for a first record (seconds); see ``Worker._poll``
    batch_linger: float = 0.1
    #: where a partition without a committed offset or watermark starts
    auto_offset_reset: str = "earliest"
    #: keep the states of owned partitions in memory between batches
    state_cache: bool = True
    #: per owned partition; the cache is dropped past this many keys
    state_cache_keys: int = 100_000
    #: timed steps: silent rows (expired states, forgotten keys) deleted per partition and
    #: commit at most, so that a mass expiry never makes one huge transaction
    expire_limit: int = 1000
    retry_attempts: int = 30
    retry_seconds: float = 300.0


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and in total time."""

    attempts: int = 30
    initial: float = 0.2
    maximum: float = 5.0
    total: float = 300.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.maximum, self.initial * 2 ** (attempt - 1)))
