"""The consumer and producer of :class:`~flows.testing.broker.InMemoryBroker`: the broker
port's in-memory clients, one per worker, as confluent-kafka's are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from flows.broker import RebalanceListener, TopicPartition
from flows.errors import BrokerError
from flows.records import RawMessage, RawRecord

if TYPE_CHECKING:
    from flows.testing.broker import InMemoryBroker, Transaction


class InMemoryConsumer:
    """A group member of an :class:`InMemoryBroker` (see :class:`flows.broker.Consumer`)."""

    def __init__(self, broker: InMemoryBroker, group_id: str, client_id: str) -> None:
        self.broker = broker
        self.group_id = group_id
        self.client_id = client_id
        self.member_id: str | None = None
        self._topics: tuple[str, ...] = ()
        self._listener: RebalanceListener | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._topics, self._listener = tuple(topics), listener
        self.member_id = self.broker.join(self.group_id, self._topics)

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def poll(self, max_records: int, timeout: float) -> list[RawRecord]:
        """Runs the rebalance callbacks, then reads; never waits (``timeout`` unused)."""
        self._rebalance()
        found: list[RawRecord] = []
        for tp in sorted(self._positions):
            if tp in self._paused or len(found) >= max_records:
                continue
            records, self._positions[tp] = self.broker.read(
                tp, self._positions[tp], max_records - len(found)
            )
            found.extend(records)
        return found

    def _rebalance(self) -> None:
        broker, listener, member = self.broker, self._listener, self.member_id
        if listener is None or member is None:
            return
        if not broker.is_member(self.group_id, member):  # evicted: lost, then rejoin
            lost = sorted(self._positions)
            self._forget(lost)
            if lost:
                listener.revoked(lost)
            member = self.member_id = broker.join(self.group_id, self._topics)
        gone = broker.release(self.group_id, member)
        if gone:
            self._forget(gone)
            listener.revoked(gone)
        taken = broker.take(self.group_id, member)
        if not taken:
            return
        for tp in taken:
            committed = broker.committed(self.group_id, tp)
            self._positions[tp] = committed if committed >= 0 else broker.start_offset(tp)
        try:
            starts = listener.assigned(taken)
        except BaseException:
            self._paused.update(taken)  # never read from an unknown position
            raise
        for tp, offset in starts.items():
            self._positions[tp] = offset

    def _forget(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._positions.pop(tp, None)
            self._paused.discard(tp)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition in self._positions:
            self._positions[partition] = offset

    def position(self, partition: TopicPartition) -> int | None:
        return self._positions.get(partition)

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.broker.committed(self.group_id, tp) for tp in partitions}

    def committed_metadata(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        return {tp: self.broker.committed_metadata(self.group_id, tp) for tp in partitions}

    def watermarks(self, partition: TopicPartition, cached: bool) -> tuple[int, int] | None:
        return 0, self.broker.high_watermark(partition)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.broker.commit_offsets(self.group_id, self.member_id or "", offsets)

    def commit_async(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commits at once: an in-memory broker has no round trip to save."""
        self.commit(offsets)

    def group_metadata(self) -> object:
        return self.broker.metadata(self.group_id, self.member_id or "")

    def partition_count(self, topics: Sequence[str]) -> int:
        return sum(self.broker.partitions(t) for t in topics if self.broker.has_topic(t))

    def close(self) -> None:
        if self.member_id is not None and self.broker.is_member(self.group_id, self.member_id):
            if self._listener is not None and self._positions:
                self._listener.revoked(sorted(self._positions))
            self.broker.leave(self.group_id, self.member_id)
        self._positions.clear()
        self.member_id = None


class InMemoryProducer:
    """A producer of an :class:`InMemoryBroker` (see :class:`flows.broker.Producer`)."""

    def __init__(
        self, broker: InMemoryBroker, transactional_id: str | None, client_id: str
    ) -> None:
        self.broker = broker
        self.transactional_id = transactional_id
        self.client_id = client_id
        self._epoch = 0
        self._transaction: Transaction | None = None

    def _check(self) -> str:
        tid = self.transactional_id
        if tid is None:
            raise BrokerError(f"producer {self.client_id!r} is not transactional")
        self.broker.check_epoch(tid, self._epoch)
        return tid

    def init_transactions(self) -> None:
        if self.transactional_id is None:
            raise BrokerError(f"producer {self.client_id!r} is not transactional")
        self._epoch = self.broker.init_transactions(self.transactional_id)

    def produce(self, messages: Sequence[RawMessage]) -> None:
        txn = self._transaction
        if self.transactional_id is not None:
            self._check()
            if txn is None:
                raise BrokerError(f"producer {self.transactional_id!r}: no open transaction")
        append = self.broker.append
        for message in messages:
            append(message, None, txn)

    def flush(self) -> None:
        """Deliveries are synchronous here: nothing to wait for."""

    def begin_transaction(self) -> None:
        self._transaction = self.broker.begin(self._check())

    def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int],
        group_metadata: object,
        metadata: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        self._check()
        if self._transaction is None:
            raise BrokerError(f"producer {self.transactional_id!r}: no open transaction")
        self.broker.add_offsets(self._transaction, offsets, group_metadata, metadata or {})

    def commit_transaction(self) -> None:
        self._end("committed")

    def abort_transaction(self) -> None:
        self._end("aborted")

    def _end(self, outcome: str) -> None:
        self._check()
        txn, self._transaction = self._transaction, None
        if txn is None:
            raise BrokerError(f"producer {self.transactional_id!r}: no open transaction")
        self.broker.end(txn, "committed" if outcome == "committed" else "aborted")

    def close(self) -> None:
        """An open transaction stays open, as a crashed producer's does, until a producer
        with the same transactional id initialises (and aborts it)."""
