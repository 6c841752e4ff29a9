"""librdkafka's own log lines reach Python logging (logger ``flows.kafka``), naming the
client, and so the flow, instead of going straight to stderr."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer

from runtimes.config import Settings


def test_librdkafka_logs_go_through_python_logging_naming_the_client(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_sources(
        environ={"FLOWS_BOOTSTRAP_SERVERS": "127.0.0.1:1", "FLOWS_INSTANCE_ID": "here"}
    )
    consumer = Consumer(settings.consumer_config("shop.count"))  # nothing listens on port 1
    consumer.subscribe(["anything"])
    deadline = time.monotonic() + 20
    with caplog.at_level(logging.INFO, logger="flows.kafka"):
        while not caplog.records and time.monotonic() < deadline:
            consumer.poll(0.2)  # logs are delivered in poll
    consumer.close()
    assert caplog.records, "librdkafka said nothing about a broker that refuses connections"
    first = caplog.records[0]
    assert first.name == "flows.kafka"
    assert "shop.count.here" in first.getMessage()  # the client id, so the flow's group
    assert "Connect to" in first.getMessage() or "refused" in first.getMessage()
    stderr = capfd.readouterr().err  # librdkafka's own format: "%3|<time>|FAIL|<client>| ..."
    assert "|FAIL|" not in stderr and "Connect to" not in stderr
