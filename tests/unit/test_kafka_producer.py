"""The Kafka adapter's produce loop: a full local queue is drained, nothing is sent twice."""

from __future__ import annotations

from typing import Any

from flows.records import RawMessage
from runtimes.kafka.producer import KafkaProducer


class FullQueue:
    """Refuses every third message once with BufferError, as librdkafka does when full."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, Any, int]] = []
        self.polls = 0
        self._refused: set[int] = set()

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        on_delivery: Any,
        callback: Any,
        timestamp: int,
        headers: Any = None,
    ) -> None:
        """confluent-kafka's positional order; -1 and None keep the configured defaults."""
        assert (partition, on_delivery, callback) == (-1, None, None)
        n = len(self.sent)
        if n % 3 == 2 and n not in self._refused:
            self._refused.add(n)
            raise BufferError("Local: Queue full")
        self.sent.append((topic, value, key, headers, timestamp))

    def poll(self, _timeout: float) -> int:
        self.polls += 1
        return 0


def test_a_full_queue_is_drained_and_every_output_goes_once_in_order() -> None:
    producer = KafkaProducer({"bootstrap.servers": "localhost:1"}, 1.0, 1.0)
    producer._producer = queue = FullQueue()  # type: ignore[assignment]
    outputs = [
        RawMessage("out", f"k{i}".encode(), f"v{i}".encode(), (("h", b"x"),) if i % 4 else (), i)
        for i in range(10)
    ]
    producer.produce(outputs)
    assert [(t, v, k) for t, v, k, _, _ in queue.sent] == [("out", m.value, m.key) for m in outputs]
    assert [h for *_, h, _ in queue.sent] == [[("h", b"x")] if i % 4 else None for i in range(10)]
    assert [ts for *_, ts in queue.sent] == list(range(10))
    assert queue.polls >= 4  # one per refusal, one at the end
