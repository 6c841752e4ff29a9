"""A Kafka broker in memory: partitions, consumer groups, transactions, fencing.

It follows the broker port (:mod:`flows.broker`) as Kafka does, where the worker loop can
tell the difference:

* keys are placed by murmur2, as Kafka's Java clients place them;
* consumers read ``read_committed``: an open transaction holds back the later records of
  its partitions, an aborted one is never delivered, and each commit or abort writes a
  marker that takes an offset (so positions can pass the last delivered record);
* a group assigns partitions cooperatively: a partition moves to a new member only once
  its owner has revoked it at its next poll, or was evicted (:meth:`InMemoryBroker.evict`,
  the session timeout of a process that stopped answering). An evicted member learns it
  at its next poll, loses its partitions and rejoins; until then its commits are refused;
* a producer that initialises transactions with an id already in use fences the older
  producer of that id and aborts its open transaction, as a restarted Kafka worker does;
* a committed offset carries a metadata string: the one sent with it to a transaction,
  visible when the transaction commits (never when it aborts), or "" (a plain commit, or
  none sent), as Kafka overwrites a partition's metadata with every commit. A string
  holding a NUL, or longer than ``offset_metadata_max`` UTF-16 units, is refused: Kafka's
  ``offset.metadata.max.bytes`` is 4096 by default, and confluent-kafka sends the string
  with its C terminator (see ``runtimes.kafka.producer``), which takes one of them.

It never waits: a poll returns what is visible at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from flows.broker import TopicPartition
from flows.errors import BrokerError, KafkaFencedError
from flows.partitioning import partition_for
from flows.ports import Clock, SystemClock
from flows.records import RawMessage, RawRecord
from flows.testing.clients import InMemoryConsumer, InMemoryProducer


class Committed(NamedTuple):
    """A group's committed offset of one partition and the metadata committed with it."""

    offset: int
    metadata: str


@dataclass(eq=False)
class Transaction:
    producer: str
    state: Literal["open", "committed", "aborted"] = "open"
    #: per group, the offsets (with their metadata) that become committed with it
    offsets: dict[str, dict[TopicPartition, Committed]] = field(default_factory=dict)
    partitions: set[TopicPartition] = field(default_factory=set)


@dataclass(slots=True)
class _Entry:
    """One offset of a partition: a record, or a transaction marker (``record`` None)."""

    record: RawRecord | None
    transaction: Transaction | None
    sequence: int


_NONE = Committed(-1, "")


@dataclass(frozen=True)
class GroupMetadata:
    """What a transaction's offsets are checked against: this member, at this epoch."""

    group_id: str
    member_id: str
    epoch: int


@dataclass(eq=False)
class _Member:
    member_id: str
    topics: tuple[str, ...]
    epoch: int = 0
    owned: set[TopicPartition] = field(default_factory=set)
    target: set[TopicPartition] = field(default_factory=set)


@dataclass(eq=False)
class _Group:
    committed: dict[TopicPartition, Committed] = field(default_factory=dict)
    members: dict[str, _Member] = field(default_factory=dict)
    generation: int = 0

    def owner(self, tp: TopicPartition) -> _Member | None:
        return next((m for m in self.members.values() if tp in m.owned), None)


class InMemoryBroker:
    """Topics, groups and transactions in memory; see the module docstring for the model."""

    def __init__(
        self,
        clock: Clock | None = None,
        auto_offset_reset: str = "earliest",
        offset_metadata_max: int = 4095,
    ) -> None:
        self.clock = clock or SystemClock()
        self.auto_offset_reset = auto_offset_reset
        self.offset_metadata_max = offset_metadata_max
        self._logs: dict[str, list[list[_Entry]]] = {}
        self._round_robin: dict[str, itertools.cycle[int]] = {}
        self._groups: dict[str, _Group] = {}
        self._epochs: dict[str, int] = {}
        self._open: dict[str, Transaction] = {}
        self._sequence = itertools.count()
        self._members = itertools.count(1)
        #: every rebalance of every group: (group, member, what happened, partitions)
        self.rebalances: list[tuple[str, str, str, tuple[TopicPartition, ...]]] = []

    # --- topics --------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int) -> None:
        if name not in self._logs:
            self._logs[name] = [[] for _ in range(partitions)]
            self._round_robin[name] = itertools.cycle(range(partitions))

    def has_topic(self, topic: str) -> bool:
        return topic in self._logs

    def partitions(self, topic: str) -> int:
        return len(self._log(topic))

    def _log(self, topic: str) -> list[list[_Entry]]:
        try:
            return self._logs[topic]
        except KeyError:
            raise BrokerError(f"topic {topic!r} does not exist (auto-creation is off)") from None

    def append(
        self,
        message: RawMessage,
        partition: int | None = None,
        transaction: Transaction | None = None,
    ) -> RawRecord:
        """Writes one record (``partition`` None: by key, else round robin)."""
        partitions = self._log(message.topic)
        if partition is None:
            partition = (
                partition_for(message.key, len(partitions))
                if message.key is not None
                else next(self._round_robin[message.topic])
            )
        log = partitions[partition]
        record = RawRecord(
            message.topic,
            partition,
            len(log),
            message.key,
            message.value,
            message.headers,
            message.timestamp or int(self.clock.time() * 1000),
        )
        log.append(_Entry(record, transaction, next(self._sequence)))
        if transaction is not None:
            transaction.partitions.add((message.topic, partition))
        return record

    def high_watermark(self, tp: TopicPartition) -> int:
        return len(self._log(tp[0])[tp[1]])

    def read(self, tp: TopicPartition, offset: int, limit: int) -> tuple[list[RawRecord], int]:
        """Up to ``limit`` visible records from ``offset`` on, ``read_committed``, and the
        position after them (past markers and aborted records, never past an open
        transaction's first record)."""
        log = self._log(tp[0])[tp[1]]
        found: list[RawRecord] = []
        position = offset
        while position < len(log) and len(found) < limit:
            entry = log[position]
            txn = entry.transaction
            if txn is not None and txn.state == "open":
                break
            if entry.record is not None and (txn is None or txn.state == "committed"):
                found.append(entry.record)
            position += 1
        return found, position

    def committed_records(self, topic: str) -> list[RawRecord]:
        """Every visible record of ``topic`` in the order it was written (all partitions)."""
        entries = [
            e
            for log in self._log(topic)
            for e in log
            if e.record is not None
            and (e.transaction is None or e.transaction.state == "committed")
        ]
        return [e.record for e in sorted(entries, key=lambda e: e.sequence) if e.record]

    # --- groups --------------------------------------------------------------------------

    def _group(self, group_id: str) -> _Group:
        return self._groups.setdefault(group_id, _Group())

    def join(self, group_id: str, topics: Sequence[str]) -> str:
        member = _Member(f"{group_id}-member-{next(self._members)}", tuple(topics))
        group = self._group(group_id)
        group.members[member.member_id] = member
        self._rebalance(group)
        return member.member_id

    def leave(self, group_id: str, member_id: str) -> None:
        group = self._group(group_id)
        if group.members.pop(member_id, None) is not None:
            self._rebalance(group)

    def evict(self, group_id: str, member_id: str) -> None:
        """Removes a member as its session timeout would: it is not told until it polls."""
        self.leave(group_id, member_id)

    def members(self, group_id: str) -> list[str]:
        return list(self._group(group_id).members)

    def settled(self) -> bool:
        """Whether every member of every group holds exactly its share (no rebalance is
        waiting for a member's next poll)."""
        return all(
            m.owned == m.target for group in self._groups.values() for m in group.members.values()
        )

    def assignment(self, group_id: str, member_id: str) -> set[TopicPartition]:
        member = self._group(group_id).members.get(member_id)
        return set(member.owned) if member is not None else set()

    def _rebalance(self, group: _Group) -> None:
        group.generation += 1
        members = sorted(group.members.values(), key=lambda m: m.member_id)
        topics = sorted({t for m in members for t in m.topics if t in self._logs})
        every = [(t, p) for t in topics for p in range(len(self._logs[t]))]
        for member in members:
            member.target = set()
        for i, tp in enumerate(every):
            members[i % len(members)].target.add(tp)

    def release(self, group_id: str, member_id: str) -> list[TopicPartition]:
        """The partitions a member must give up in the current rebalance, now released."""
        member = self._group(group_id).members[member_id]
        gone = sorted(member.owned - member.target)
        if gone:
            member.owned.difference_update(gone)
            self.rebalances.append((group_id, member_id, "revoked", tuple(gone)))
        return gone

    def take(self, group_id: str, member_id: str) -> list[TopicPartition]:
        """The partitions of a member's target that no other member holds, now its own; the
        member's epoch moves to the group's generation when it takes any."""
        group = self._group(group_id)
        member = group.members[member_id]
        free = sorted(tp for tp in member.target - member.owned if group.owner(tp) is None)
        if free:
            member.epoch = group.generation
            member.owned.update(free)
            self.rebalances.append((group_id, member_id, "assigned", tuple(free)))
        return free

    def is_member(self, group_id: str, member_id: str) -> bool:
        return member_id in self._group(group_id).members

    def metadata(self, group_id: str, member_id: str) -> GroupMetadata:
        member = self._group(group_id).members.get(member_id)
        return GroupMetadata(group_id, member_id, member.epoch if member else -1)

    def committed(self, group_id: str, tp: TopicPartition) -> int:
        """The group's committed offset of ``tp``; -1 without one."""
        return self._group(group_id).committed.get(tp, _NONE).offset

    def committed_metadata(self, group_id: str, tp: TopicPartition) -> str:
        """The metadata committed with the group's offset of ``tp``; "" without one."""
        return self._group(group_id).committed.get(tp, _NONE).metadata

    def commit_offsets(
        self, group_id: str, member_id: str, offsets: Mapping[TopicPartition, int]
    ) -> None:
        if not self.is_member(group_id, member_id):
            raise KafkaFencedError(
                f"group {group_id!r}: member {member_id} was evicted from the group; "
                f"its offsets are not committed"
            )
        self._group(group_id).committed.update(
            (tp, Committed(offset, "")) for tp, offset in offsets.items()
        )

    def start_offset(self, tp: TopicPartition) -> int:
        """Where a partition without a committed offset starts, by the reset policy."""
        return 0 if self.auto_offset_reset == "earliest" else self.high_watermark(tp)

    # --- transactions --------------------------------------------------------------------

    def init_transactions(self, transactional_id: str) -> int:
        """A new epoch for ``transactional_id``: the older producer is fenced and its open
        transaction aborted."""
        epoch = self._epochs.get(transactional_id, 0) + 1
        self._epochs[transactional_id] = epoch
        previous = self._open.pop(transactional_id, None)
        if previous is not None:
            self._end(previous, "aborted")
        return epoch

    def check_epoch(self, transactional_id: str, epoch: int) -> None:
        if self._epochs.get(transactional_id) != epoch:
            raise KafkaFencedError(
                f"producer {transactional_id!r} was fenced: a newer producer with the same "
                f"transactional id started (another instance with this instance id?)"
            )

    def begin(self, transactional_id: str) -> Transaction:
        if transactional_id in self._open:
            raise BrokerError(f"producer {transactional_id!r} already has an open transaction")
        txn = self._open[transactional_id] = Transaction(transactional_id)
        return txn

    def add_offsets(
        self,
        txn: Transaction,
        offsets: Mapping[TopicPartition, int],
        group_metadata: object,
        metadata: Mapping[TopicPartition, str],
    ) -> None:
        """Adds ``offsets``, each with its string of ``metadata`` ("" when left out), to
        ``txn``: they become the group's committed offsets if ``txn`` commits."""
        if not isinstance(group_metadata, GroupMetadata):
            raise BrokerError(f"not group metadata of this broker: {group_metadata!r}")
        group = self._group(group_metadata.group_id)
        member = group.members.get(group_metadata.member_id)
        if member is None or member.epoch != group_metadata.epoch:
            raise KafkaFencedError(
                f"group {group_metadata.group_id!r}: member {group_metadata.member_id} is not "
                f"in the group's current generation; its transaction cannot commit offsets"
            )
        refused = sorted(tp for tp in offsets if not self._fits(metadata.get(tp, "")))
        if refused:
            raise BrokerError(
                f"the offset metadata of {refused} holds a NUL or is longer than the broker "
                f"accepts ({self.offset_metadata_max} UTF-16 units)"
            )
        txn.offsets.setdefault(group_metadata.group_id, {}).update(
            (tp, Committed(offset, metadata.get(tp, ""))) for tp, offset in offsets.items()
        )

    def _fits(self, metadata: str) -> bool:
        units = len(metadata.encode("utf-16-le")) // 2  # as the broker's Java String counts
        return "\0" not in metadata and units <= self.offset_metadata_max

    def end(self, txn: Transaction, outcome: Literal["committed", "aborted"]) -> None:
        if self._open.get(txn.producer) is txn:
            del self._open[txn.producer]
        self._end(txn, outcome)

    def _end(self, txn: Transaction, outcome: Literal["committed", "aborted"]) -> None:
        if txn.state != "open":
            return
        txn.state = outcome
        for topic, partition in sorted(txn.partitions):
            self._log(topic)[partition].append(_Entry(None, txn, next(self._sequence)))
        if outcome == "committed":
            for group_id, offsets in txn.offsets.items():
                self._group(group_id).committed.update(offsets)

    # --- clients (the broker port) -------------------------------------------------------

    def consumer(self, group_id: str, client_id: str) -> InMemoryConsumer:
        return InMemoryConsumer(self, group_id, client_id)

    def producer(self, transactional_id: str | None, client_id: str) -> InMemoryProducer:
        return InMemoryProducer(self, transactional_id, client_id)


__all__ = ["GroupMetadata", "InMemoryBroker"]
