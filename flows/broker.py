"""The broker port: what the worker loop needs of Kafka, and nothing more.

Two implementations follow this contract: :class:`flows.testing.InMemoryBroker` (in memory,
for users' tests and ours) and ``runtimes.kafka.KafkaBroker`` (confluent-kafka). One
contract suite (``tests/contract/test_broker.py``) runs against both.

Offsets follow Kafka's conventions: a partition's *position* is the offset of the next
record a consumer will read; a *committed* offset is the next offset to read after a
restart; the *high watermark* is the offset after the last record written. Transaction
markers take an offset each and are never delivered, so offsets of delivered records are
not contiguous and a position may pass the last delivered record.

Consumers read ``read_committed``: records of an open transaction hold back every later
record of their partition, records of an aborted transaction are never delivered.

Every method raises only :class:`~flows.errors.FlowsError` subclasses:
:class:`~flows.errors.TransientError` for what passes by itself (an outage, a rebalance in
progress), :class:`~flows.errors.KafkaFencedError` when a newer producer took the
transactional id or the group moved to a generation this member is not part of, and
:class:`~flows.errors.BrokerError` for the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from flows.ports import TopicPartition
from flows.records import RawMessage, RawRecord


class RebalanceListener(Protocol):
    """Told of assignment changes, inside :meth:`Consumer.poll`, in the polling thread."""

    def assigned(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        """``partitions`` now belong to this member. Returns where to start reading each one;
        a partition left out starts at its committed offset, else by the reset policy.

        If this raises, the partitions are taken but paused (nothing is read from an
        unknown position) and the error comes out of :meth:`Consumer.poll`.
        """
        ...

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """``partitions`` no longer belong to this member (revoked, or lost when the
        member was evicted from the group); nothing of them may be committed any more."""
        ...


class Consumer(Protocol):
    """A member of one consumer group, reading ``read_committed``, committing by hand."""

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        """Joins the group for ``topics``; assignments arrive through ``listener``."""
        ...

    def poll(self, max_records: int, timeout: float) -> list[RawRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds for the first.

        Runs the listener's callbacks first when the assignment changed. Records of one
        partition come in offset order; several partitions may be interleaved in runs.
        """
        ...

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """The next poll reads ``partition`` from ``offset``; a partition no longer
        assigned is ignored (its new owner reads it)."""
        ...

    def position(self, partition: TopicPartition) -> int | None:
        """The offset of the next record to read, or None when nothing was read yet."""
        ...

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets; -1 for a partition without one."""
        ...

    def committed_metadata(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        """The metadata string committed with each partition's offset (see
        :meth:`Producer.send_offsets_to_transaction`); "" for a partition without one."""
        ...

    def watermarks(self, partition: TopicPartition, cached: bool) -> tuple[int, int] | None:
        """The low and high watermark; with ``cached``, as the last fetch saw them and
        without asking the broker (None when nothing was fetched yet)."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commits ``offsets`` for the group, synchronously (at-least-once steps)."""
        ...

    def commit_async(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commits ``offsets`` for the group without waiting for the broker (at-least-once
        steps, materialise hints), so a batch does not wait a round trip to the group
        coordinator. Commits go in order; a later call's offsets replace those still
        queued; what is queued is committed before its partition is revoked (dropped when
        the partition is lost) and when the consumer closes. A background commit refused
        for a reason that passes (a rebalance, a coordinator moving) is tried again; one
        that does not pass is raised by the next call. A lost commit only means records
        are consumed again."""
        ...

    def group_metadata(self) -> object:
        """This member's generation, for :meth:`Producer.send_offsets_to_transaction`."""
        ...

    def partition_count(self, topics: Sequence[str]) -> int:
        """How many partitions ``topics`` have together (topics that do not exist: 0)."""
        ...

    def close(self) -> None:
        """Leaves the group: its partitions are revoked here and go to other members."""
        ...


class Producer(Protocol):
    """A producer, transactional when created with a transactional id.

    A transaction is ``begin_transaction``, ``produce`` (any number of times),
    ``send_offsets_to_transaction``, then ``commit_transaction`` or ``abort_transaction``.
    Records of a committed transaction and its consumer offsets become visible together; an
    aborted or abandoned one is never visible. A second producer that initialises
    transactions with the same id fences the first (every later call of the first raises
    :class:`~flows.errors.KafkaFencedError`) and aborts its open transaction.
    """

    def init_transactions(self) -> None: ...

    def produce(self, messages: Sequence[RawMessage]) -> None:
        """Queues ``messages``; a message without a partition goes by its key (murmur2, as
        Kafka's Java clients), or anywhere without one. Waits when the queue is full."""
        ...

    def flush(self) -> None:
        """Waits until every queued message is acknowledged; raises if one failed."""
        ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int],
        group_metadata: object,
        metadata: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        """Adds the consumer offsets ``offsets`` to the transaction, each with its string
        from ``metadata`` (committed with the offset, visible with it; "" when left out).
        Raises :class:`~flows.errors.KafkaFencedError` if ``group_metadata``'s generation is
        not the group's current one (a member fenced by a rebalance cannot commit)."""
        ...

    def commit_transaction(self) -> None: ...

    def abort_transaction(self) -> None: ...

    def close(self) -> None:
        """Delivers what is queued (bounded in time) and releases the producer."""
        ...


class Broker(Protocol):
    """Makes the clients of one worker."""

    def consumer(self, group_id: str, client_id: str) -> Consumer: ...

    def producer(self, transactional_id: str | None, client_id: str) -> Producer: ...


__all__ = ["Broker", "Consumer", "Producer", "RebalanceListener", "TopicPartition"]
