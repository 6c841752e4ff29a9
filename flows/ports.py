"""The small interfaces between the pure core and the runtimes that do I/O.

Each port has an in-memory implementation in :mod:`flows.testing` and a real one in
``runtimes/``; one contract test suite runs against both (``tests/contract``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from flows.history import HistoryCommit
from flows.records import RawMessage
from flows.tables import TableShape

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class StateColumns:
    """How a state table keeps its keys and values, chosen once per flow from its formats.

    The port always carries bytes; the columns only say what a store may assume of them so
    that it can keep them in a form its own tools read (PostgreSQL: plain SQL):

    - ``key="text"``: every key is UTF-8 text without a NUL character (``str`` and ``json``
      key formats; :class:`~flows.steps.StatefulStep` dead-letters a record whose key is
      not); ``"bytes"``: anything.
    - ``value="json"``: every value is one JSON value that PostgreSQL's ``jsonb`` stores (no
      ``NaN``/``Infinity``, no U+0000; the ``json`` state format, checked when a state is
      encoded); ``"bytes"``: anything (protobuf, bytes, a user's format, encrypted values).

    A store may give values back in another spelling of the same JSON (``jsonb`` orders an
    object's keys and drops insignificant whitespace); keys always come back byte for byte.
    """

    key: Literal["bytes", "text"] = "bytes"
    value: Literal["bytes", "json"] = "bytes"


#: the columns of a table that assumes nothing of its keys and values
BYTES_COLUMNS = StateColumns()


@dataclass(frozen=True, slots=True)
class StoredState:
    """One state as queries read it: its key and value (bytes, as the port carries them)
    and ``version``, an opaque token that changes whenever the state does (an HTTP ETag).

    A version names the input record that last changed the state (its partition and
    offset: a key lives in one partition, whose offsets only grow), or, for a state stored
    before versions were kept, when it was last written.
    """

    key: bytes
    value: bytes
    version: str


def state_version(partition: int, offset: int) -> str:
    """The version of a state that the record at ``offset`` of ``partition`` last changed."""
    return f"{partition}-{offset}"


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """Outputs of the input range ``[first_offset, next_offset)`` of one partition."""

    topic: str
    partition: int
    first_offset: int
    next_offset: int
    outputs: tuple[RawMessage, ...]
    #: the partition's commit sequence this batch left (see :class:`PartitionTime`); 0 for
    #: steps that do not count commits. A tick stores ``first_offset == next_offset`` and
    #: is told apart from the batch that follows it at the same offset by ``seq``.
    seq: int = 0


@dataclass(frozen=True, slots=True)
class PartitionTime:
    """What a windowed step keeps of a partition beside its watermark, in the same row.

    ``seq`` counts the partition's commits (batches and ticks); each Kafka transaction of the
    step carries it as the committed offset's metadata, so recovery can tell whether a
    *tick* (a commit that moves no offset) reached Kafka. ``stream_time`` is the largest
    event timestamp accepted so far (ms), or None before the first; it never decreases.
    """

    seq: int = 0
    stream_time: int | None = None


@dataclass(frozen=True, slots=True)
class WindowRow:
    """One window of one key of one input partition, as the store keeps it.

    ``(partition, key, start)`` identifies it. ``end``, ``first``, ``last`` and ``pending``
    are those of :class:`flows.windows.WindowState`; ``due`` is the time at which the
    engine must look at the row again (its close time while ``pending``, the end of its
    retention after), indexed per partition and clock; ``value`` is the aggregate in the
    flow's state format.

    ``pending`` also says how a row falls due. A pending row (a window to close, a timer
    to fire) is loaded when due (:meth:`StateStore.load_windows`) so that the engine can
    emit what it owes. A row that is not pending (a state's TTL, a deduplication key, a
    closed sliding window kept as a copy source) falls due silently: nothing is emitted, the
    engine treats it as absent from then on, and the store deletes such rows in bounded
    batches (:attr:`StateCommit.expire`); it is never loaded for being due.

    ``wall`` names the clock of ``due``: False (windows), stream time, the largest event
    timestamp of the partition (ms); True, wall-clock time (ms since the epoch), for rows
    that fall due whether or not records arrive (timers and TTL of stateful flows). The two
    clocks are never compared: :meth:`StateStore.load_windows` and
    :meth:`StateStore.next_due` take a threshold per clock.
    """

    partition: int
    key: bytes
    start: int
    end: int
    first: int
    last: int
    pending: bool
    due: int
    value: bytes
    wall: bool = False


@dataclass(slots=True)
class StateCommit:
    """Everything one batch changes in the database, applied in one transaction.

    ``watermarks`` maps each input partition to ``(read, new)``: the commit succeeds only
    if every stored watermark still equals ``read`` (else :class:`~flows.errors.FencedError`),
    and leaves ``new``. ``kafka_committed`` lets the store forget pending outputs that Kafka
    already committed. ``versions`` gives, per key of ``states`` with a value, the input
    ``(partition, offset)`` that last changed it (a key without one is stored without a
    version).
    """

    group: str
    watermarks: dict[TopicPartition, tuple[int, int]]
    table: str | None = None
    states: Mapping[bytes, bytes | None] = field(default_factory=dict)
    versions: Mapping[bytes, tuple[int, int]] = field(default_factory=dict)
    pending: Sequence[PendingBatch] = ()
    kafka_committed: Mapping[TopicPartition, int] = field(default_factory=dict)
    shape: TableShape | None = None
    rows: Sequence[dict[str, Any]] = ()
    #: windowed steps: per partition of ``watermarks``, the commit sequence read and the
    #: new :class:`PartitionTime`; the watermark update then also requires ``seq == read``
    times: Mapping[TopicPartition, tuple[int, PartitionTime]] = field(default_factory=dict)
    #: windowed steps: the window table, rows to upsert and ``(partition, key, start)`` of
    #: rows to delete
    window_table: str | None = None
    windows: Sequence[WindowRow] = ()
    windows_removed: Sequence[tuple[int, bytes, int]] = ()
    #: timed steps: per partition, ``(due_by, wall_due_by)``: delete at most
    #: ``expire_limit`` rows of the partition that are not pending and fell due (stream-time
    #: rows with ``due <= due_by``, wall-clock rows with ``due <= wall_due_by``; None matches
    #: none), smallest ``due`` first, after the rows above are written
    expire: Mapping[int, tuple[int | None, int | None]] = field(default_factory=dict)
    expire_limit: int = 1000
    #: stateful steps with history: the changes to append, and the retention to enforce
    history: HistoryCommit | None = None

    def check(self) -> None:
        """Raises ``ValueError`` for a commit the port does not allow, before a store reads
        or sends anything: ``times`` of a partition not in ``watermarks``, window changes or
        expiry without a ``window_table``, or a negative ``expire_limit``."""
        strays = sorted(set(self.times) - set(self.watermarks))
        if strays:
            raise ValueError(f"commit times of {strays} have no watermark in the same commit")
        if self.window_table is None and (self.windows or self.windows_removed):
            raise ValueError("window rows to change, but no window_table")
        if self.window_table is None and self.expire:
            raise ValueError("window rows to expire, but no window_table")
        if self.expire and self.expire_limit < 0:
            raise ValueError(f"expire_limit must not be negative, got {self.expire_limit}")


class StateStore(Protocol):
    """Per-key state, offset watermarks and pending outputs (see ``GUARANTEES`` in README)."""

    def ensure_table(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        """Creates the state table ``table`` when missing, keeping keys and values as
        ``columns`` says; brings one of an older shape to this one where its rows allow."""

    def ensure_rows_table(self, shape: TableShape) -> None:
        """Creates the materialised table of ``shape`` when missing."""

    def ensure_history_table(self, table: str, columns: StateColumns = BYTES_COLUMNS) -> None:
        """Creates the history table ``table`` (:mod:`flows.history`) when missing, keeping
        keys and values as ``columns`` says (those of its state table)."""

    def watermark(self, group: str, topic: str, partition: int, start: int) -> int:
        """The stored watermark; inserts ``start`` when there is none and returns it."""

    def load(self, table: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored states of ``keys``; absent keys are left out."""

    def commit(self, commit: StateCommit) -> None:
        """Applies ``commit`` atomically; raises ``FencedError`` if a watermark moved."""

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int, after_seq: int = -1
    ) -> list[PendingBatch]:
        """Pending batches with ``first_offset >= from_offset`` and ``seq > after_seq``, in
        order of ``(first_offset, seq)``."""

    def get(self, table: str, key: bytes) -> bytes | None:
        """One state, for queries."""

    # --- windowed steps ---------------------------------------------------------------

    def ensure_window_table(self, table: str) -> None:
        """Creates the window table ``table`` (key ``(partition, key, start)``, an index on
        ``(partition, wall, due)``) when missing, and brings one of an older shape to this
        one (rows stored before ``wall`` existed read back with ``wall`` False)."""

    def partition_time(self, group: str, topic: str, partition: int) -> PartitionTime:
        """The commit sequence and stream time stored with the partition's watermark
        (``PartitionTime()`` when none were ever stored). Call :meth:`watermark` first."""

    def load_windows(
        self,
        table: str,
        partition: int,
        keys: Sequence[bytes],
        due_by: int | None,
        wall_due_by: int | None = None,
    ) -> list[WindowRow]:
        """The rows of ``partition`` whose key is in ``keys``, or pending rows that fell due:
        stream-time rows (``not wall``) with ``due <= due_by``, wall-clock rows with
        ``due <= wall_due_by``. A ``None`` threshold matches no row of its clock (both
        ``None``: keys only). Rows that are not pending come only by key. Each row once,
        ordered by ``(key, start)``. One query."""

    def next_due(self, table: str, partition: int, wall: bool = False) -> int | None:
        """The smallest ``due`` among the pending rows of ``partition`` of one clock
        (``wall`` False: stream time, True: wall clock); None when it has none."""

    def windows(self, table: str, key: bytes) -> list[WindowRow]:
        """Every row of ``key``, in any partition, ordered by ``(partition, start)``."""


class Clock(Protocol):
    """Time, injected so tests control it."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


MetricName = Literal[
    # counters, labels flow/topic
    "records_consumed",
    "records_produced",
    "records_filtered",
    "records_dead_lettered",
    "records_skipped",
    "records_late",
    "retries",
    "rebalances",
    "state_cache_hits",
    "state_cache_misses",
    # histograms, label flow
    "batch_size",
    "batch_seconds",
    "db_commit_seconds",
    "kafka_commit_seconds",
    # gauges, labels flow/topic/partition
    "consumer_lag",
    "committed_offset",
]


class Metrics(Protocol):
    """Where runtimes report what they do; the Prometheus adapter is in ``runtimes``."""

    def increment(self, name: MetricName, value: float = 1, /, **labels: str) -> None: ...

    def observe(self, name: MetricName, value: float, /, **labels: str) -> None: ...

    def gauge(self, name: MetricName, value: float, /, **labels: str) -> None: ...


class NullMetrics:
    """Discards everything."""

    def increment(self, name: MetricName, value: float = 1, /, **labels: str) -> None:
        pass

    def observe(self, name: MetricName, value: float, /, **labels: str) -> None:
        pass

    def gauge(self, name: MetricName, value: float, /, **labels: str) -> None:
        pass
