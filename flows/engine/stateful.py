"""The exactly-once batch of a stateful step, in named phases."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flows.engine.batches import fresh
from flows.engine.config import EngineConfig
from flows.engine.session import Session
from flows.engine.untimed import Untimed
from flows.history import HistoryCommit, StateChange
from flows.ports import PendingBatch, StateCommit, StateStore, TopicPartition
from flows.records import RawMessage, RawRecord
from flows.steps import BatchResult, StatefulStep


@dataclass
class _Loaded:
    """The states a batch needs, and which of them the cache lacked."""

    states: dict[bytes, bytes]
    keys: dict[TopicPartition, set[bytes]]
    missing: dict[TopicPartition, list[bytes]]
    loaded: dict[bytes, bytes]


@dataclass
class _Folded:
    """What a batch changes: states, outputs per partition, the watermarks it moves."""

    changed: dict[bytes, bytes | None] = field(default_factory=dict)
    #: per changed key, the (partition, offset) of the record that last changed it
    versions: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    pending: list[PendingBatch] = field(default_factory=list)
    #: with history: every record's change, in the order applied
    changes: list[StateChange] = field(default_factory=list)
    watermarks: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    total: BatchResult = field(default_factory=BatchResult)


class StatefulBatch(Untimed):
    """One batch of a stateful step, exactly-once. The order is the point:

    1. **filter**: keep only records of owned partitions at or past their watermark ``W``
       (anything below is applied already);
    2. **load** the states the batch needs: from the owned partitions' cache, else one
       ``SELECT ... WHERE key = ANY(...)``;
    3. **fold** every record into its key's state, per partition in offset order, so the
       outputs of each input partition are known;
    4. **commit** in PostgreSQL, one transaction: the watermark moves from ``W`` to the
       batch's next offset only if it still is ``W`` (else
       :class:`~flows.errors.WatermarkMovedError`: a zombie aborts); the changed states are
       upserted (deleted when ``None``), each with the partition and offset of the record
       that last changed it (its version); the outputs are stored as pending; pending rows that
       Kafka already committed are deleted; a flow with history appends every record's
       change to its history table (:mod:`flows.history`), so a refused or rolled-back
       batch leaves no history either. Then, PostgreSQL holding the truth, the owned
       watermarks and the cache follow it at once, so a failure below leaves nothing stale;
    5. **publish** in one Kafka transaction: produce the outputs,
       ``send_offsets_to_transaction`` with the new offsets and the member's group
       metadata (a member fenced by a rebalance cannot commit), commit; only then is
       Kafka's committed offset known to have moved.

    So Kafka's committed offset ``C`` never passes ``W``, and batch boundaries agree. If
    step 5 fails after step 4, the outputs are re-emitted from PostgreSQL
    (:func:`flows.engine.recovery.reemit`) before any new batch, here or by the partition's
    next owner.
    """

    keeps_watermarks = True
    reemits = True
    transactional = True

    def __init__(self, step: StatefulStep, config: EngineConfig, store: StateStore) -> None:
        self.step = step
        self.store = store
        self.batch_size = config.stateful_batch_size
        self.cache = config.state_cache
        self.cache_keys = config.state_cache_keys

    def process(self, session: Session, records: list[RawRecord]) -> None:
        by_partition = fresh(records, session.owned)
        if not by_partition:
            return
        loaded = self._load(session, by_partition)
        folded = self._fold(session, by_partition, loaded.states)
        self._commit(session, by_partition, folded, loaded)
        self._publish(session, by_partition, folded)

    def _load(
        self, session: Session, by_partition: dict[TopicPartition, list[RawRecord]]
    ) -> _Loaded:
        owned, step = session.owned, self.step
        missing_by_tp: dict[TopicPartition, list[bytes]] = {}
        keys_by_tp: dict[TopicPartition, set[bytes]] = {}
        missing: list[bytes] = []
        hits = 0
        for tp, raws in by_partition.items():
            cache = owned[tp].cache
            keys = keys_by_tp[tp] = step.state_keys(raws)
            absent = missing_by_tp[tp] = [k for k in keys if k not in cache]
            missing.extend(absent)
            hits += len(keys) - len(absent)
        if hits:
            session.metrics.increment("state_cache_hits", hits, **session.labels)
        loaded = self.store.load(step.table, missing) if missing else {}
        if missing:
            session.metrics.increment("state_cache_misses", len(missing), **session.labels)
        states: dict[bytes, bytes] = {}
        for tp, keys in keys_by_tp.items():  # the batch's keys only, not the whole cache
            cached = owned[tp].cache
            for key in keys:
                value = cached.get(key)
                if value is not None:
                    states[key] = value
        states.update(loaded)
        return _Loaded(states, keys_by_tp, missing_by_tp, loaded)

    def _fold(
        self,
        session: Session,
        by_partition: dict[TopicPartition, list[RawRecord]],
        states: dict[bytes, bytes],
    ) -> _Folded:
        folded = _Folded()
        changed, versions, total = folded.changed, folded.versions, folded.total
        outputs: list[RawMessage] = []
        for tp, raws in by_partition.items():
            result = self.step.fold(raws, states)
            for key, value in result.states.items():
                changed[key] = value
                if value is None:
                    states.pop(key, None)
                else:
                    states[key] = value
            partition = tp[1]
            for key, offset in result.versions.items():
                versions[key] = (partition, offset)
            outputs.extend(result.outputs)
            folded.changes.extend(result.changes)
            first, new = raws[0].offset, raws[-1].offset + 1
            folded.watermarks[tp] = (session.owned[tp].watermark, new)
            if result.outputs:
                folded.pending.append(PendingBatch(tp[0], tp[1], first, new, tuple(result.outputs)))
            total.filtered += result.filtered
            total.dead_lettered += result.dead_lettered
            total.skipped += result.skipped
        total.outputs = outputs
        return folded

    def _commit(
        self,
        session: Session,
        by_partition: dict[TopicPartition, list[RawRecord]],
        folded: _Folded,
        loaded: _Loaded,
    ) -> None:
        owned = session.owned
        step = self.step
        history = None
        if step.history is not None:
            table = step.history_table
            assert table is not None
            history = HistoryCommit(table, folded.changes, step.history)
        started = time.perf_counter()
        self.store.commit(
            StateCommit(
                group=self.step.group_id,
                watermarks=folded.watermarks,
                table=self.step.table,
                states=folded.changed,
                versions=folded.versions,
                pending=folded.pending,
                kafka_committed={
                    tp: owned[tp].committed for tp in by_partition if owned[tp].committed >= 0
                },
                history=history,
            )
        )
        session.metrics.observe(
            "db_commit_seconds", time.perf_counter() - started, **session.labels
        )
        changed = folded.changed
        for tp, (_, new) in folded.watermarks.items():
            part = owned[tp]
            part.watermark = new
            if self.cache:
                cache = part.cache
                for key in loaded.missing[tp]:
                    cache[key] = loaded.loaded.get(key)
                cache.update({key: changed[key] for key in loaded.keys[tp] if key in changed})
                if len(cache) > self.cache_keys:
                    cache.clear()

    def _publish(
        self,
        session: Session,
        by_partition: dict[TopicPartition, list[RawRecord]],
        folded: _Folded,
    ) -> None:
        owned = session.owned
        session.transaction(
            folded.total.outputs, {tp: new for tp, (_, new) in folded.watermarks.items()}
        )
        for tp in by_partition:
            owned[tp].committed = owned[tp].watermark
        session.count(sum(len(run) for run in by_partition.values()), folded.total)
