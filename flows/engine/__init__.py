"""The engine: the worker loop, its batch strategies and the exactly-once protocol, over
the ports (:mod:`flows.broker`, :mod:`flows.ports`). Kafka runs it in ``runtimes``; the
test driver runs it in memory."""

from flows.engine.config import EngineConfig, RetryPolicy
from flows.engine.worker import Worker

__all__ = ["EngineConfig", "RetryPolicy", "Worker"]
