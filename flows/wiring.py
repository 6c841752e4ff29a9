"""Declarative wiring: what a user writes to say which function reads and writes which topic.

Each configuration is a frozen dataclass that only *describes* a flow; :class:`flows.App`
validates them all together when it loads (a bad wiring fails there, with a
:class:`~flows.errors.WiringError` naming the flow and the field) and
:mod:`flows.compiler` turns them into the steps that every runtime executes.

A topic may be given as a :class:`~flows.topics.Topic` or by name; a name must be declared
in the app's ``topics``.

What functions return:

* one-to-one (:class:`Map`, :class:`StatefulMap`): a value, a :class:`~flows.records.Message`
  or ``None`` (the record is filtered out; its offset still advances);
* one-to-two (:class:`Split`, :class:`StatefulSplit`): a pair, one item per sink, each as
  above;
* one-to-many (:class:`Explode`, :class:`StatefulExplode`, :class:`Join` with
  ``explode=True``): an iterable of values or messages.

Stateful functions take ``(record, state)`` and return ``(outputs, new_state)``; ``state``
is ``None`` for a key never seen, and a ``new_state`` of ``None`` deletes the key's row.

Time on stateful flows (:class:`TimeOptions`): ``timestamp=fn(record)`` gives event time (int
ms or an aware datetime; default the Kafka timestamp), ``ttl`` forgets a key idle that long
(by stream time, or the wall clock with ``ttl_clock="wall"``), ``on_timer`` fires the timers
that ``fn`` schedules (:mod:`flows.timers`).

History of stateful flows without time (:class:`HistoryOptions`): ``history=True`` keeps
every change of every key, with ``history_keep`` and ``history_max_age`` as retention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from flows.formats import JSON, STR, Format
from flows.timers import Clock, Timer
from flows.topics import Topic
from flows.windows.kinds import WindowKind

TopicRef = Topic | str
ErrorPolicy = Literal["dead_letter", "skip", "stop"]
Emits = Literal["one", "two", "many"]


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Options every flow shares.

    ``on_error`` decides what happens to a record whose decoding or user function fails
    (after retries): ``dead_letter`` writes it to ``dead_letter_topic`` (default
    ``<source>.dlq``) with headers naming the failure and moves on; ``skip`` logs and
    counts it; ``stop`` fails the process. ``retry_attempts`` and ``retry_seconds`` bound
    the retries of a batch after a transient failure (broker or database unreachable).
    """

    name: str
    on_error: ErrorPolicy = "dead_letter"
    dead_letter_topic: str | None = None
    #: transient failures retry the batch this many times / this long (default: settings)
    retry_attempts: int | None = None
    retry_seconds: float | None = None


# --- stateless ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Stateless(FlowConfig):
    """Base of stateless flows; at-least-once unless ``exactly_once``."""

    exactly_once: bool = False


@dataclass(frozen=True, kw_only=True)
class Map(Stateless):
    """One-to-one: ``fn(record) -> output | None``."""

    source: TopicRef
    sink: TopicRef
    fn: Callable[[Any], Any]


@dataclass(frozen=True, kw_only=True)
class Filter(Stateless):
    """Keeps the records for which ``predicate(record)`` is true, unchanged."""

    source: TopicRef
    sink: TopicRef
    predicate: Callable[[Any], bool]


@dataclass(frozen=True, kw_only=True)
class Split(Stateless):
    """One-to-two: ``fn(record) -> (first | None, second | None)`` to ``sinks[0]``, ``sinks[1]``."""

    source: TopicRef
    sinks: tuple[TopicRef, TopicRef]
    fn: Callable[[Any], tuple[Any, Any]]


@dataclass(frozen=True, kw_only=True)
class Explode(Stateless):
    """One-to-many: ``fn(record) -> iterable of outputs``."""

    source: TopicRef
    sink: TopicRef
    fn: Callable[[Any], Iterable[Any]]


@dataclass(frozen=True, kw_only=True)
class Merge(Stateless):
    """Several sources into one sink, through ``fn`` (identity when ``None``)."""

    sources: tuple[TopicRef, ...]
    sink: TopicRef
    fn: Callable[[Any], Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Mirror(Stateless):
    """Copies a topic to another, keys, values and headers unchanged."""

    source: TopicRef
    sink: TopicRef


# --- stateful ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TimeOptions:
    """Event time, state expiry and timers of a stateful flow (any of them makes the flow
    keep its states per partition in a table that also holds timers, ``<app>_<flow>_timed``).

    * ``timestamp(record)``: event time, int ms or an aware datetime (default: the Kafka
      timestamp); a partition's stream time is the largest so far, committed with offsets.
    * ``ttl``: a key whose state was not written for this long behaves as absent and its
      row is deleted; measured in stream time, or on the wall clock with ``ttl_clock="wall"``.
    * ``on_timer(key, state, timer) -> (outputs, new_state)``: runs the timers that ``fn``
      (or ``on_timer``) scheduled with :func:`flows.schedule_timer`; outputs as ``fn``'s.
    """

    timestamp: Callable[[Any], Any] | None = None
    ttl: timedelta | None = None
    ttl_clock: Clock = "event"
    on_timer: Callable[[Any, Any, Timer], tuple[Any, Any]] | None = None


@dataclass(frozen=True, kw_only=True)
class HistoryOptions:
    """The history of a stateful flow's states (:mod:`flows.history`).

    * ``history=True`` keeps every change of every key in ``<table>_history``: the state
      before and after (a deletion after), the input record and the commit time, written in
      the transaction of the states (exactly-once as they are). ``GET
      /state/<flow>/<key>/history`` pages through it, ``GET /state/<flow>/changes`` follows
      it live, ``flows state history`` prints it.
    * ``history_keep``: keep the newest this many changes of each key;
      ``history_max_age``: keep changes committed within this long. Without either, every
      change is kept.

    Not for flows with timers, a TTL or ``timestamp=`` (a :class:`WiringError`).
    """

    history: bool = False
    history_keep: int | None = None
    history_max_age: timedelta | None = None


@dataclass(frozen=True, kw_only=True)
class Stateful(HistoryOptions, TimeOptions, FlowConfig):
    """Base of stateful flows: per-key state in a table, exactly-once effect.

    The state key is the record key unless ``state_key`` is given; then records are first
    re-keyed into an intermediate topic (exactly-once) so that each key lives in exactly one
    partition, and ``key_format`` encodes the new key. ``table`` defaults to
    ``<app>_<flow>_state``.

    ``encrypt=True`` stores each state (and timer) encrypted with AES-256-GCM under the
    app's state keys (``FLOWS_STATE_KEYS``; :mod:`flows.encryption`): the table's values are
    ciphertext (``BYTEA``), keys stay readable, and ``/state`` serves the decrypted states
    to authenticated callers only.
    """

    source: TopicRef
    fn: Callable[[Any, Any], tuple[Any, Any]]
    state_format: Format[Any] = JSON
    state_key: Callable[[Any], Any] | None = None
    key_format: Format[Any] = STR
    table: str | None = None
    encrypt: bool = False


@dataclass(frozen=True, kw_only=True)
class StatefulMap(Stateful):
    """``fn(record, state) -> (output | None, new_state)``."""

    sink: TopicRef


@dataclass(frozen=True, kw_only=True)
class StatefulSplit(Stateful):
    """``fn(record, state) -> ((first | None, second | None), new_state)``."""

    sinks: tuple[TopicRef, TopicRef]


@dataclass(frozen=True, kw_only=True)
class StatefulExplode(Stateful):
    """``fn(record, state) -> (iterable of outputs, new_state)``."""

    sink: TopicRef


@dataclass(frozen=True, kw_only=True)
class Join(HistoryOptions, TimeOptions, FlowConfig):
    """Several sources re-keyed into one intermediate topic, then one stateful function.

    ``sources`` maps each source topic to the function giving a record's join key.
    ``fn(record, state)`` sees the original record (``record.topic`` names its source, so it
    can dispatch) and the state shared by every source for that key. Returns as
    :class:`StatefulMap` (or :class:`StatefulExplode` when ``explode``); ``encrypt`` as
    :class:`Stateful`'s.
    """

    sources: Mapping[TopicRef, Callable[[Any], Any]]
    sink: TopicRef
    fn: Callable[[Any, Any], tuple[Any, Any]]
    explode: bool = False
    state_format: Format[Any] = JSON
    key_format: Format[Any] = STR
    table: str | None = None
    encrypt: bool = False


# --- windows -----------------------------------------------------------------------------

Emit = Literal["final", "update"]


@dataclass(frozen=True, kw_only=True)
class Window(FlowConfig):
    """Aggregates each key's records per event-time window, exactly-once.

    ``window`` is :class:`~flows.windows.Tumbling`, :class:`~flows.windows.Hopping`,
    :class:`~flows.windows.Sliding` or :class:`~flows.windows.Session` (times in integer
    milliseconds since the epoch; the README's "Time" table gives each kind's bounds and close
    time). The window key is the record key, per input partition.

    * ``timestamp(record)`` gives a record's event time (int ms, or an aware ``datetime``);
      default: the Kafka record timestamp. A partition's *stream time* is the largest
      timestamp accepted on it; it never decreases and is committed with the offsets.
    * ``initial()`` makes a window's first aggregate and ``fn(record, acc)`` folds a record
      into it; ``merge(acc, acc)`` combines two sessions that a record joins (optional: without
      it the records of open sessions are kept and folded again in offset order on a merge).
    * A record whose windows have all closed (stream time before it had reached their close
      time, ``end + grace``) is *late*: it goes to the dead-letter topic with
      ``flows.error.type = LateRecord`` and changes nothing.
    * ``emit="final"`` outputs each window once, when stream time reaches its close time;
      ``"update"`` outputs a record's windows' current aggregates after every record.
    * Output: key = the window's key, value ``{"start", "end", "value"}`` in the sink's
      format, or ``result(key, start, end, acc)``; headers ``flows.window.start`` and
      ``flows.window.end``.
    * ``close_after_idle``: when a partition is caught up and has had no record for this
      long on the wall clock, its stream time follows the wall clock, so a quiet stream's
      last windows still come out.
    * ``encrypt=True`` stores each window's aggregate encrypted, as :class:`Stateful`'s
      states are.
    """

    source: TopicRef
    sink: TopicRef
    window: WindowKind
    fn: Callable[[Any, Any], Any]
    initial: Callable[[], Any] = lambda: None
    merge: Callable[[Any, Any], Any] | None = None
    timestamp: Callable[[Any], Any] | None = None
    grace: timedelta = timedelta(0)
    emit: Emit = "final"
    close_after_idle: timedelta | None = None
    result: Callable[[Any, int, int, Any], Any] | None = None
    state_format: Format[Any] = JSON
    table: str | None = None
    encrypt: bool = False


@dataclass(frozen=True, kw_only=True)
class Deduplicate(FlowConfig):
    """Passes the first record of each key within ``ttl``; later ones are dropped.

    ``key(record)`` gives the deduplication key (default: the record key); ``timestamp``
    gives event time as in :class:`Window` (default: the Kafka timestamp). A record passes
    when its key was not seen, or was first seen at least ``ttl`` of event time before it;
    keys are forgotten as stream time passes ``first + ttl``. Duplicates are recognised
    within an input partition. Records pass unchanged (bytes reused when the formats agree).
    """

    source: TopicRef
    sink: TopicRef
    ttl: timedelta
    key: Callable[[Any], Any] | None = None
    timestamp: Callable[[Any], Any] | None = None
    table: str | None = None


# --- materialise -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Materialise(FlowConfig):
    """Upserts ``fn(record)`` rows into a table, in batches, exactly-once.

    ``table`` is a SQLAlchemy Core ``Table`` or a dataclass whose primary-key fields carry
    ``metadata={"primary_key": True}`` (table name: its ``__tablename__``). ``fn`` returns a
    row (mapping or dataclass instance), an iterable of rows, or ``None``. Rows with one
    primary key in a batch collapse to the last.
    """

    source: TopicRef
    table: Any
    fn: Callable[[Any], Any]


# --- HTTP ingest -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Ingest(FlowConfig):
    """``POST <path>``: the body, decoded with ``body_format``, becomes records of ``sink``.

    ``fn(record)`` receives a :class:`~flows.records.Record` whose ``value`` is the decoded
    body and whose ``headers`` are the request headers named in ``headers`` (lower-cased);
    it returns what a :class:`Map` function returns (``None``: nothing is produced). Without
    ``fn`` the body itself is produced. The HTTP server answers 202 once the broker
    acknowledged, 400 for a body that does not decode, 413 past ``max_body`` bytes.
    """

    path: str
    sink: TopicRef
    fn: Callable[[Any], Any] | None = None
    body_format: Format[Any] = JSON
    headers: tuple[str, ...] = ()
    max_body: int = 1_048_576
    explode: bool = False


FLOW_TYPES: tuple[type[FlowConfig], ...] = (
    Map,
    Filter,
    Split,
    Explode,
    Merge,
    Mirror,
    StatefulMap,
    StatefulSplit,
    StatefulExplode,
    Join,
    Window,
    Deduplicate,
    Materialise,
    Ingest,
)

__all__ = [
    "FLOW_TYPES",
    "Deduplicate",
    "Emit",
    "Emits",
    "ErrorPolicy",
    "Explode",
    "Filter",
    "FlowConfig",
    "HistoryOptions",
    "Ingest",
    "Join",
    "Map",
    "Materialise",
    "Merge",
    "Mirror",
    "Split",
    "Stateful",
    "StatefulExplode",
    "StatefulMap",
    "StatefulSplit",
    "Stateless",
    "TimeOptions",
    "TopicRef",
    "Window",
]
