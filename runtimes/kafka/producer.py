"""The broker port's producer over confluent-kafka (:class:`flows.broker.Producer`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from flows.errors import BrokerError, BrokerUnavailableError, FlowsError, KafkaFencedError
from flows.ports import TopicPartition
from flows.records import RawMessage
from runtimes.kafka.errors import GENERATION_CODES, translate

_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


class KafkaProducer:
    """Idempotent, and transactional when its configuration has a ``transactional.id``.

    ``operation_timeout`` bounds each transactional call, ``flush_timeout`` a flush and the
    flush on close. Failed deliveries are collected by one callback (librdkafka reports
    failures only: ``delivery.report.only.error``) and raised by :meth:`flush`.
    """

    def __init__(
        self, config: dict[str, Any], operation_timeout: float, flush_timeout: float
    ) -> None:
        self.name = str(config.get("transactional.id") or config.get("client.id", "producer"))
        self.operation_timeout = operation_timeout
        self.flush_timeout = flush_timeout
        self._errors: list[KafkaError] = []
        self._producer = Producer({**config, "on_delivery": self._on_delivery})

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        # messages of an aborted transaction are purged: what the abort asked for, not a
        # failed delivery
        if error is not None and error.code() not in _PURGED:
            self._errors.append(error)

    def _failed(self, error: KafkaException, doing: str) -> FlowsError:
        """A transactional call's failure: fencing (a fatal producer error, or a group
        generation that moved on) or what :func:`translate` makes of it."""
        self._errors.clear()
        kafka_error = error.args[0] if error.args else None
        if isinstance(kafka_error, KafkaError) and (
            kafka_error.fatal() or kafka_error.code() in GENERATION_CODES
        ):
            return KafkaFencedError(f"{doing} of {self.name!r} was fenced: {kafka_error.str()}")
        return translate(error, f"{doing} of {self.name!r}")

    def init_transactions(self) -> None:
        try:
            self._producer.init_transactions(self.operation_timeout)
        except KafkaException as error:
            raise self._failed(error, "initialising transactions") from error

    def produce(self, messages: Sequence[RawMessage]) -> None:
        producer = self._producer
        produce = producer.produce
        done, total = 0, len(messages)
        # Positional arguments: (topic, value, key, partition, on_delivery, callback,
        # timestamp, headers); -1 lets the configured partitioner choose, None keeps the
        # producer's delivery callback. Keywords cost twice as much per call (measured).
        while done < total:
            try:
                for out in messages[done:] if done else messages:
                    headers: list[tuple[str, str | bytes | None]] | None = (
                        list(out.headers) if out.headers else None
                    )
                    produce(
                        out.topic, out.value, out.key, -1, None, None, out.timestamp or 0, headers
                    )
                    done += 1
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
            except KafkaException as error:
                raise self._failed(error, "producing") from error
        producer.poll(0)

    def flush(self) -> None:
        """Waits for every delivery report; raises if one failed."""
        remaining = self._producer.flush(self.flush_timeout)
        errors, self._errors = self._errors, []
        if remaining:
            raise BrokerUnavailableError(
                f"{remaining} outputs of {self.name!r} were not acknowledged within "
                f"{self.flush_timeout} s"
            )
        if errors:
            raise translate(KafkaException(errors[0]), f"producing outputs of {self.name!r}")

    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as error:
            raise self._failed(error, "beginning a transaction") from error

    def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int],
        group_metadata: object,
        metadata: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        """The metadata goes in the TxnOffsetCommit request with each offset.

        confluent-kafka sends a string with its C terminator (``metadata_size = strlen + 1``
        in ``py_to_c_parts``): "abc" is stored as "abc\\0" (its own reads stop at the NUL;
        Java clients see it). So "" is sent as no metadata, which Kafka stores as ""; a
        string holding a NUL is refused (it would be cut there without a word); and the
        broker's ``offset.metadata.max.bytes`` (4096 by default, counted in UTF-16 units
        by the broker) leaves 4095 for the string. Longer, the broker refuses it with
        ``OFFSET_METADATA_TOO_LARGE``: a :class:`BrokerError` (a retry cannot help), and
        the transaction can only be aborted.
        """
        strings = metadata or {}
        cut = sorted(tp for tp in offsets if "\0" in strings.get(tp, ""))
        if cut:
            raise BrokerError(
                f"offset metadata of {cut} holds a NUL: confluent-kafka would cut it there"
            )
        try:
            self._producer.send_offsets_to_transaction(
                [
                    KafkaTopicPartition(t, p, o, text)
                    if (text := strings.get((t, p)))
                    else KafkaTopicPartition(t, p, o)  # None: not stored as a lone NUL
                    for (t, p), o in offsets.items()
                ],
                group_metadata,
                self.operation_timeout,
            )
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            if (
                isinstance(kafka_error, KafkaError)
                and kafka_error.code() == KafkaError.OFFSET_METADATA_TOO_LARGE
            ):
                self._errors.clear()
                raise BrokerError(
                    f"the offset metadata sent to the transaction of {self.name!r} is longer "
                    f"than the broker accepts (offset.metadata.max.bytes): {kafka_error.str()}"
                ) from error
            raise self._failed(error, "sending offsets to the transaction") from error

    def commit_transaction(self) -> None:
        try:
            self._producer.commit_transaction(self.operation_timeout)
        except KafkaException as error:
            raise self._failed(error, "committing the transaction") from error

    def abort_transaction(self) -> None:
        try:
            self._producer.abort_transaction(self.operation_timeout)
        except KafkaException as error:
            raise self._failed(error, "aborting the transaction") from error

    def close(self) -> None:
        try:
            self._producer.flush(self.flush_timeout)
        except KafkaException as error:  # a fenced or fatal producer has nothing to flush
            raise BrokerError(f"closing the producer {self.name!r}: {error}") from error
