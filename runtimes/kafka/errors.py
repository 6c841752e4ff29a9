"""confluent-kafka's errors translated at the edge.

Nothing outside ``runtimes/`` sees a ``KafkaException``: it becomes a
:class:`~flows.errors.FlowsError` subclass here, the original kept as ``__cause__``.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from flows.errors import BrokerError, BrokerUnavailableError, TransientError

#: a member's commit refused because the group moved on without it
GENERATION_CODES = (
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
)


def translate(error: BaseException, doing: str) -> BrokerError | TransientError:
    """A flows error for a confluent-kafka failure while ``doing`` something."""
    kafka_error = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else None
    if kafka_error is None:
        return BrokerError(f"Kafka failed while {doing}: {error}")
    text = f"Kafka failed while {doing}: {kafka_error.str()} ({kafka_error.name()})"
    if kafka_error.code() in (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
    ):
        return BrokerUnavailableError(text)
    if (
        kafka_error.retriable()
        or kafka_error.txn_requires_abort()
        or kafka_error.code()
        in (
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
            KafkaError.NOT_COORDINATOR,
            KafkaError.COORDINATOR_NOT_AVAILABLE,
            KafkaError.REBALANCE_IN_PROGRESS,
        )
    ):
        return TransientError(text)  # a broker restarting or a group moving: it passes
    return BrokerError(text)
