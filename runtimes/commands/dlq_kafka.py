"""The Kafka half of ``flows dlq``: reading dead-letter topics to the ends seen at the start,
and the replay loop that sends dead letters back in transactions (see ``runtimes/commands/dlq.py``
for the guarantee and ``flows/dead_letter_replay.py`` for the pure rules of what is replayed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from flows.dead_letter_replay import DeadLetter, ReplayFilter, replayed
from flows.errors import BrokerUnavailableError
from flows.ports import TopicPartition
from flows.records import RawMessage, RawRecord
from runtimes.config import Settings
from runtimes.kafka import to_raw, translate
from runtimes.kafka.producer import KafkaProducer

#: records read before a replay commits a transaction: bounds memory and transaction time
REPLAY_BATCH = 5000


# --- replay --------------------------------------------------------------------------------


@dataclass
class Replayed:
    """What one replay group sent."""

    group: str
    error_type: str
    #: records sent, by source topic
    sent: dict[str, int] = field(default_factory=dict)
    #: records read and not sent (other flows, other error types, older than --since)
    skipped: int = 0
    transactions: int = 0


def replay(
    settings: Settings,
    group: str,
    partitions: Sequence[TopicPartition],
    wanted: ReplayFilter,
    timeout: float,
) -> Replayed:
    """Replays what ``wanted`` selects from ``group``'s committed offsets on ``partitions``
    to the high watermarks seen now; see the module docstring for the guarantee.

    Commit order, per batch: begin a transaction; produce the replayed records; send the
    offsets after every record read (sent or not) to the transaction for ``group``; commit.
    The producer's transactional id is ``group``: starting it fences an older replay of the
    same group still running and aborts a crashed one's open transaction, before the
    committed offsets are read (``read_committed`` asks for stable offsets)."""
    result = Replayed(group=group, error_type=wanted.error_type or "")
    producer = KafkaProducer(
        settings.producer_config(transactional_id=group),
        operation_timeout=settings.transaction_op_timeout,
        flush_timeout=settings.shutdown_timeout,
    )
    consumer = open_consumer(settings, group)
    try:
        producer.init_transactions()
        if not partitions:
            return result
        try:
            found = consumer.committed(
                [KafkaTopicPartition(t, p) for t, p in partitions], timeout=timeout
            )
        except KafkaException as error:
            raise translate(error, f"reading the committed offsets of {group}") from error
        starts = {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            for tp in found
        }
        ends = assign_to_ends(consumer, starts)
        metadata = consumer.consumer_group_metadata()
        batch: list[RawMessage] = []
        offsets: dict[TopicPartition, int] = {}

        def commit() -> None:
            producer.begin_transaction()
            try:
                producer.produce(batch)
                producer.send_offsets_to_transaction(offsets, metadata)
                producer.commit_transaction()
            except BaseException:
                producer.abort_transaction()
                raise
            for message in batch:
                result.sent[message.topic] = result.sent.get(message.topic, 0) + 1
            result.transactions += 1
            batch.clear()
            offsets.clear()

        for read, record in enumerate(read_to_ends(consumer, ends, timeout), 1):
            letter = DeadLetter.parse(record)
            if letter is not None and wanted.matches(letter):
                batch.append(replayed(letter))
            else:
                result.skipped += 1
            offsets[(record.topic, record.partition)] = record.offset + 1
            if read % REPLAY_BATCH == 0:
                commit()
        if offsets:
            commit()
        return result
    finally:
        try:
            consumer.close()
        finally:
            producer.close()


# --- reading -------------------------------------------------------------------------------


def open_consumer(settings: Settings, group: str) -> Consumer:
    """A consumer that only assigns (it never joins ``group``) and never commits itself."""
    config = settings.consumer_config(group)
    config.update({"enable.partition.eof": True, "auto.offset.reset": "earliest"})
    return Consumer(config)


def committed_offsets(
    settings: Settings, group: str, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """``group``'s committed offsets on ``partitions`` (those it has). Read uncommitted: a
    replay's open transaction does not hold up a listing."""
    config = settings.consumer_config(group)
    config["isolation.level"] = "read_uncommitted"
    consumer = Consumer(config)
    try:
        found = consumer.committed([KafkaTopicPartition(t, p) for t, p in partitions], timeout=30)
    except KafkaException as error:
        raise translate(error, f"reading the committed offsets of {group}") from error
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}


def assign_to_ends(
    consumer: Consumer, starts: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Assigns each partition of ``starts`` that holds something past its start; returns
    each assigned partition's high watermark, where reading it stops."""
    ends: dict[TopicPartition, int] = {}
    assign = []
    for (topic, partition), start in starts.items():
        try:
            low, high = consumer.get_watermark_offsets(
                KafkaTopicPartition(topic, partition), timeout=30
            )
        except KafkaException as error:
            raise translate(error, f"the watermarks of {topic}[{partition}]") from error
        if high > max(low, start):
            ends[(topic, partition)] = high
            assign.append(KafkaTopicPartition(topic, partition, start))
    if assign:
        try:
            consumer.assign(assign)
        except KafkaException as error:
            raise translate(error, "assigning the dead-letter topics") from error
    return ends


def read_to_ends(
    consumer: Consumer, ends: dict[TopicPartition, int], timeout: float
) -> Iterator[RawRecord]:
    """The committed records of the assigned partitions up to ``ends`` (exclusive).

    A partition is done at its end, or at the end of what ``read_committed`` may read (the
    partition EOF event, which comes at the last stable offset: a transaction still open
    when the read started is left for next time)."""
    remaining = dict(ends)
    deadline = time.monotonic() + timeout
    while remaining:
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"the dead-letter topics were not read to their end within {timeout} s: "
                f"{sorted(remaining)} remain"
            )
        for message in consumer.consume(1000, 0.5):
            tp = (message.topic() or "", message.partition() or 0)
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.pop(tp, None)
                    continue
                raise translate(KafkaException(error), f"reading {tp[0]}[{tp[1]}]")
            if tp not in remaining:
                continue  # past its end, fetched with the batch
            record = to_raw(message)
            if record.offset >= remaining[tp]:
                remaining.pop(tp, None)
                continue
            yield record
            if record.offset >= remaining[tp] - 1:
                remaining.pop(tp, None)


__all__ = [
    "REPLAY_BATCH",
    "Replayed",
    "assign_to_ends",
    "committed_offsets",
    "open_consumer",
    "read_to_ends",
    "replay",
]
