"""confluent-kafka errors become specific flows errors at the edge, never a bare FlowsError."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from flows.errors import (
    BrokerError,
    BrokerUnavailableError,
    FencedError,
    FlowsError,
    KafkaFencedError,
    StateError,
    TransientError,
    WatermarkMovedError,
)
from runtimes.kafka import translate


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (KafkaError._ALL_BROKERS_DOWN, BrokerUnavailableError),
        (KafkaError.REBALANCE_IN_PROGRESS, TransientError),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, BrokerError),
        (KafkaError.INVALID_REQUEST, BrokerError),
    ],
)
def test_translate_gives_a_specific_error(code: int, expected: type[FlowsError]) -> None:
    error = translate(KafkaException(KafkaError(code)), "doing a thing")
    assert type(error) is expected
    assert "doing a thing" in str(error)


def test_an_error_without_a_kafka_code_is_a_broker_error() -> None:
    assert type(translate(RuntimeError("odd"), "polling")) is BrokerError


def test_fencing_on_either_side_is_one_catchable_class() -> None:
    assert issubclass(WatermarkMovedError, FencedError)
    assert issubclass(WatermarkMovedError, StateError)
    assert issubclass(KafkaFencedError, FencedError)
    assert not issubclass(KafkaFencedError, StateError)  # Kafka fencing is no state error
