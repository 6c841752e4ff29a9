"""Compiles wiring configurations into steps: plain objects that every runtime executes.

A *step* is the unit a runtime runs with one consumer group: it reads ``sources``, may
write ``sinks`` (dead-letter topics included) and turns one batch of raw records into a
result. The Kafka runtime and the in-memory test driver call the very same methods, so a
flow tested with :mod:`flows.testing` is the flow that runs in production.

Most wiring configurations compile to one step. Two compile to two:

* a :class:`~flows.wiring.Join`, and a stateful flow with a ``state_key`` function, become a
  *re-key* step (stateless, always exactly-once) writing an intermediate topic keyed by the
  state key, and a stateful step over that topic. So each state key lives in exactly one
  partition, as Kafka Streams repartitions before ``groupByKey``.

Failures of decoding or of a user function never escape a batch: the record is
dead-lettered, skipped or (policy ``stop``) turned into :class:`~flows.errors.FlowFailedError`.
Every record, filtered or failed, is accounted for, so its offset advances.
"""

from __future__ import annotations

import dataclasses
import graphlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from flows._proto import flows_envelope_pb2 as pb
from flows.errors import DecodeError, EncodeError, FlowFailedError, UserFunctionError, WiringError
from flows.formats import BYTES, STR, Format
from flows.records import KEEP, Headers, Message, RawMessage, RawRecord, Record
from flows.tables import TableShape, row_as_dict, table_shape
from flows.topics import Topic
from flows.wiring import (
    Emits,
    Explode,
    Filter,
    FlowConfig,
    Ingest,
    Join,
    Map,
    Materialise,
    Merge,
    Mirror,
    Split,
    Stateful,
    StatefulExplode,
    StatefulMap,
    StatefulSplit,
    TopicRef,
)

log = logging.getLogger("flows")

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,100}$")

StepKind = Literal["stateless", "stateful", "materialise"]


# --- results -----------------------------------------------------------------------------


@dataclass(slots=True)
class BatchResult:
    """What a batch produced. ``outputs`` keep input order (per partition order holds)."""

    outputs: list[RawMessage] = field(default_factory=list)
    filtered: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    #: stateful steps: the states the batch changed, encoded; ``None`` deletes the row.
    states: dict[bytes, bytes | None] = field(default_factory=dict)
    #: materialise steps: rows by primary key, the last of each key only.
    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)


# --- the steps ---------------------------------------------------------------------------


@dataclass(eq=False)
class Step:
    """A compiled flow unit, run by one consumer group named :attr:`group_id`."""

    app: str
    name: str
    flow: str
    kind: StepKind
    sources: tuple[Topic, ...]
    sinks: tuple[Topic, ...]
    exactly_once: bool
    on_error: str
    dead_letters: dict[str, Topic]
    description: str = ""
    retry_attempts: int | None = None
    retry_seconds: float | None = None

    @property
    def group_id(self) -> str:
        """The consumer group (and transactional id prefix) of this step."""
        return f"{self.app}.{self.name}"

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(topic.name for topic in self.sources)

    def _fail(self, raw: RawRecord, error: BaseException, result: BatchResult) -> None:
        """Applies the error policy to a record that failed; never loses its offset."""
        if self.on_error == "stop":
            raise FlowFailedError(
                f"flow {self.flow!r} stopped (on_error='stop') on "
                f"{raw.topic}[{raw.partition}]@{raw.offset}: {error}"
            ) from error
        if self.on_error == "skip":
            result.skipped += 1
            log.warning(
                "flow %s skipped %s[%s]@%s: %s",
                self.flow,
                raw.topic,
                raw.partition,
                raw.offset,
                error,
            )
            return
        result.dead_lettered += 1
        result.outputs.append(dead_letter(self, raw, error))


def dead_letter(step: Step, raw: RawRecord, error: BaseException, attempts: int = 1) -> RawMessage:
    """The dead-letter record of ``raw``: its bytes unchanged, the failure in headers."""
    cause = error.__cause__ if isinstance(error, UserFunctionError) and error.__cause__ else error
    headers: Headers = (
        *raw.headers,
        ("flows.flow", step.flow.encode()),
        ("flows.error.type", type(cause).__name__.encode()),
        ("flows.error.message", _cut_utf8(str(error), MAX_ERROR_MESSAGE)),
        ("flows.source.topic", raw.topic.encode()),
        ("flows.source.partition", str(raw.partition).encode()),
        ("flows.source.offset", str(raw.offset).encode()),
        ("flows.attempts", str(attempts).encode()),
    )
    return RawMessage(
        topic=step.dead_letters[raw.topic].name,
        key=raw.key,
        value=raw.value,
        headers=headers,
        timestamp=raw.timestamp or None,
    )


#: The most bytes of the error message a dead-letter record carries in its header.
MAX_ERROR_MESSAGE = 4000


def _cut_utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes on a character boundary.

    The result always decodes as strict UTF-8: a cut never splits a multi-byte character
    (that character is dropped whole). Lone surrogates become ``?``.
    """
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    cut = limit
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # a continuation byte: inside a character
        cut -= 1
    return data[:cut]


def decode(topic: Topic, raw: RawRecord) -> Record[Any, Any]:
    """``raw`` decoded with ``topic``'s formats; :class:`DecodeError` names what failed."""
    key, value = raw.key, raw.value
    key_format, value_format = topic.key_format, topic.value_format
    try:  # inlined for the common case: this runs for every record
        if key is not None and key_format is not BYTES:
            key = key_format.decode(key)
        if value is not None and value_format is not BYTES:
            value = value_format.decode(value)
    except Exception:
        # again, part by part, for an error that names the part that failed
        key = _decode_part(key_format, raw, raw.key, "key")
        value = _decode_part(value_format, raw, raw.value, "value")
    return Record(raw.topic, raw.partition, raw.offset, key, value, raw.headers, raw.timestamp)


def _decode_part(fmt: Format[Any], raw: RawRecord, data: bytes | None, part: str) -> Any:
    if data is None or fmt is BYTES:
        return data
    try:
        return fmt.decode(data)
    except Exception as error:
        raise DecodeError(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            part=part,
            format_name=fmt.name,
            reason=f"{type(error).__name__}: {error}",
        ) from error


def _encode(fmt: Format[Any], value: Any, sink: Topic, part: str) -> bytes | None:
    if value is None:
        return None
    try:
        return fmt.encode(value)
    except Exception as error:
        raise EncodeError(
            f"the {part} {value!r:.200} does not fit topic {sink.name!r} ({fmt.name}): {error}"
        ) from error


#: Returned by a filter's compiled function: the input record goes out unchanged.
UNCHANGED: Any = object()


def _encoder(fmt: Format[Any]) -> Callable[[Any], bytes]:
    """The fastest callable that encodes like ``fmt`` for values that fit it.

    For text that is ``str.encode`` itself, without a Python frame per output. A value that
    does not fit fails in it too, and the caller then encodes again with ``fmt`` (see
    :func:`_encode`), whose error tells the user what to fix.
    """
    if fmt is STR:
        return str.encode
    return fmt.encode


class _Sink:
    """Turns what a user function returned into encoded messages for one sink topic."""

    __slots__ = ("encode_key", "encode_value", "keep_bytes", "keep_key_bytes", "topic")

    def __init__(self, source: Topic, topic: Topic) -> None:
        self.topic = topic
        self.encode_key = _encoder(topic.key_format)
        self.encode_value = _encoder(topic.value_format)
        # The input's bytes can be reused when both topics encode them alike.
        self.keep_key_bytes = source.key_format is topic.key_format
        self.keep_bytes = self.keep_key_bytes and source.value_format is topic.value_format

    def message(self, out: Any, record: Record[Any, Any], raw: RawRecord) -> RawMessage:
        topic = self.topic
        if out is UNCHANGED:
            if self.keep_bytes:
                return RawMessage(
                    topic.name, raw.key, raw.value, raw.headers, raw.timestamp or None
                )
            out = Message(record.value)
        if isinstance(out, Message):
            if out.key is KEEP:
                key = (
                    raw.key
                    if self.keep_key_bytes
                    else _encode(topic.key_format, record.key, topic, "key")
                )
            elif out.key is None:
                key = None
            else:
                try:  # _encode inlined: re-keying outputs is the common case of explode
                    key = self.encode_key(out.key)
                except Exception:
                    key = _encode(topic.key_format, out.key, topic, "key")  # names the failure
            headers = record.headers if out.headers is KEEP else tuple(out.headers)
            timestamp = record.timestamp if out.timestamp is KEEP else out.timestamp
            value = out.value
        else:
            key = (
                raw.key
                if self.keep_key_bytes
                else _encode(topic.key_format, record.key, topic, "key")
            )
            headers, timestamp, value = record.headers, record.timestamp, out
        if value is not None:
            try:  # _encode inlined: this runs for every output
                value = self.encode_value(value)
            except Exception:
                value = _encode(topic.value_format, value, topic, "value")  # names the failure
        return RawMessage(topic.name, key, value, headers, timestamp or None)


def _emitters(origins: Iterable[Topic], sinks: Sequence[Topic]) -> dict[str, tuple[_Sink, ...]]:
    """The sinks of a step, per topic its records come from (key bytes may be reused)."""
    return {origin.name: tuple(_Sink(origin, sink) for sink in sinks) for origin in origins}


def _messages(
    emits: Emits, sinks: Sequence[_Sink], returned: Any, record: Record[Any, Any], raw: RawRecord
) -> list[RawMessage]:
    """The encoded messages of what a function returned for ``record``.

    Reading the outputs runs generator bodies: it is the function's work too, so callers
    count any failure in here as the function's, except an :class:`EncodeError`. One and
    many outputs skip the generic shaping: they are the common cases, and this runs for
    every record.
    """
    if returned is None:
        return []
    if emits == "one":
        return [sinks[0].message(returned, record, raw)]
    if emits == "many":
        first = sinks[0]
        return [first.message(out, record, raw) for out in returned if out is not None]
    return [sinks[i].message(out, record, raw) for i, out in _shape_outputs(emits, returned)]


def _shape_outputs(emits: Emits, returned: Any) -> Iterable[tuple[int, Any]]:
    """(sink index, output) pairs of what a function returned, ``None`` dropped."""
    if emits == "one":
        return () if returned is None else ((0, returned),)
    if emits == "two":
        if returned is None:
            return ()
        first, second = returned
        return tuple((i, out) for i, out in ((0, first), (1, second)) if out is not None)
    if returned is None:
        return ()
    return ((0, out) for out in returned if out is not None)


@dataclass(eq=False)
class StatelessStep(Step):
    """Decode, call the function, encode: one record at a time, outputs in input order."""

    call: Callable[[Record[Any, Any]], Any] | None = None
    emits: Emits = "one"
    #: sinks by index, per source topic name (the reusable key bytes depend on the source)
    emitters: dict[str, tuple[_Sink, ...]] = field(default_factory=dict)
    #: when set, records are copied byte for byte to this topic (mirror, merge without fn)
    passthrough: str | None = None

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        result = BatchResult()
        outputs = result.outputs
        if self.passthrough is not None:
            sink = self.passthrough
            outputs.extend(
                RawMessage(sink, r.key, r.value, r.headers, r.timestamp or None) for r in records
            )
            return result
        call, emits, emitters = self.call, self.emits, self.emitters
        assert call is not None
        topics = {topic.name: topic for topic in self.sources}
        for raw in records:
            try:
                record = decode(topics[raw.topic], raw)
                sinks = emitters[raw.topic]
                try:
                    produced = _messages(emits, sinks, call(record), record, raw)
                except EncodeError:
                    raise
                except Exception as error:
                    raise UserFunctionError(
                        self.flow, raw.topic, raw.partition, raw.offset, error
                    ) from error
            except (DecodeError, EncodeError, UserFunctionError) as error:
                self._fail(raw, error, result)
                continue
            if produced:
                outputs.extend(produced)
            else:
                result.filtered += 1
        return result


@dataclass(eq=False)
class StatefulStep(Step):
    """Folds a batch over per-key states; the runtime loads and stores the states.

    Contract with the runtime: call :meth:`state_keys` to learn which states the batch
    needs, load them (encoded, absent keys omitted), call :meth:`fold`, then persist
    ``result.states`` and ``result.outputs`` atomically with the input offsets. ``fold`` never
    mutates the mapping it is given.
    """

    call: Callable[[Record[Any, Any], Any], tuple[Any, Any]] | None = None
    emits: Emits = "one"
    state_format: Format[Any] = BYTES
    table: str = ""
    emitters: dict[str, tuple[_Sink, ...]] = field(default_factory=dict)
    #: source topics of the re-key step when the input is an envelope topic
    envelope_sources: dict[str, Topic] | None = None

    def state_keys(self, records: Sequence[RawRecord]) -> set[bytes]:
        return {raw.key for raw in records if raw.key is not None}

    def fold(self, records: Sequence[RawRecord], states: dict[bytes, bytes]) -> BatchResult:
        """Applies every record, in offset order per key, to its key's state."""
        result = BatchResult()
        call, emits, state_format = self.call, self.emits, self.state_format
        assert call is not None
        working: dict[bytes, Any] = {}
        topics = {topic.name: topic for topic in self.sources}
        emitters = self.emitters
        plain = self.envelope_sources is None  # records as they are, not re-keyed envelopes
        one = emits == "one"  # one output or none: the common case, without a list per record
        outputs = result.outputs
        for raw in records:
            key = raw.key
            origin = raw
            try:
                if key is None:
                    cause = ValueError("a stateful flow needs keyed records; this one has none")
                    raise UserFunctionError(
                        self.flow, raw.topic, raw.partition, raw.offset, cause
                    ) from cause
                if plain:
                    record = decode(topics[raw.topic], raw)
                else:
                    record, origin = self._unwrap(raw)
                state = working[key] if key in working else self._stored(key, states)
                sinks = emitters[record.topic]
                try:
                    returned, new_state = call(record, state)
                    if one:
                        output = (
                            None if returned is None else sinks[0].message(returned, record, origin)
                        )
                    else:
                        produced = _messages(emits, sinks, returned, record, origin)
                except EncodeError:
                    raise
                except Exception as error:
                    raise UserFunctionError(
                        self.flow, record.topic, record.partition, record.offset, error
                    ) from error
            except (DecodeError, EncodeError, UserFunctionError) as error:
                # a re-keyed record fails as the source record it wraps, to its source's DLQ
                self._fail(origin, error, result)
                continue
            working[key] = new_state
            if one:
                if output is None:
                    result.filtered += 1
                else:
                    outputs.append(output)
            elif produced:
                outputs.extend(produced)
            else:
                result.filtered += 1
        for key, state in working.items():
            try:
                result.states[key] = None if state is None else state_format.encode(state)
            except Exception as error:
                raise FlowFailedError(
                    f"flow {self.flow!r}: the state of key {key!r} does not fit its format "
                    f"{state_format.name}: {error}"
                ) from error
        return result

    def _stored(self, key: bytes, states: dict[bytes, bytes]) -> Any:
        encoded = states.get(key)
        if encoded is None:
            return None
        try:
            return self.state_format.decode(encoded)
        except Exception as error:
            raise FlowFailedError(
                f"flow {self.flow!r}: the stored state of key {key!r} in table {self.table!r} "
                f"does not decode as {self.state_format.name} ({error}); was the state format "
                f"changed? Migrate the table or reset the app"
            ) from error

    def _unwrap(self, raw: RawRecord) -> tuple[Record[Any, Any], RawRecord]:
        """The source record an envelope of the re-key step wraps: decoded, as the user
        function sees it, and raw, as its outputs and its dead letter derive from it."""
        assert self.envelope_sources is not None
        try:
            envelope = pb.Envelope()
            envelope.ParseFromString(raw.value or b"")
        except Exception as error:
            raise _envelope_error(raw, str(error)) from error
        source = self.envelope_sources.get(envelope.source_topic)
        if source is None:
            raise _envelope_error(raw, f"unknown source topic {envelope.source_topic!r}")
        origin = RawRecord(
            topic=envelope.source_topic,
            partition=envelope.source_partition,
            offset=envelope.source_offset,
            key=envelope.key if envelope.HasField("key") else None,
            value=envelope.value if envelope.HasField("value") else None,
            headers=tuple((h.key, h.value) for h in envelope.headers),
            timestamp=envelope.timestamp,
        )
        return decode(source, origin), origin


def _envelope_error(raw: RawRecord, reason: str) -> DecodeError:
    return DecodeError(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        part="value",
        format_name="flows envelope",
        reason=reason,
    )


@dataclass(eq=False)
class RekeyStep(Step):
    """Writes each record, wrapped in an envelope, to the intermediate topic by its new key."""

    key_functions: dict[str, Callable[[Record[Any, Any]], Any]] = field(default_factory=dict)
    key_format: Format[Any] = BYTES
    intermediate: Topic | None = None

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        result = BatchResult()
        assert self.intermediate is not None
        target = self.intermediate
        topics = {topic.name: topic for topic in self.sources}
        for raw in records:
            try:
                record = decode(topics[raw.topic], raw)
                try:
                    new_key = self.key_functions[raw.topic](record)
                except Exception as error:
                    raise UserFunctionError(
                        self.flow, raw.topic, raw.partition, raw.offset, error
                    ) from error
                if new_key is None:
                    result.filtered += 1
                    continue
                key = _encode(self.key_format, new_key, target, "key")
            except (DecodeError, EncodeError, UserFunctionError) as error:
                self._fail(raw, error, result)
                continue
            envelope = pb.Envelope(
                source_topic=raw.topic,
                source_partition=raw.partition,
                source_offset=raw.offset,
                headers=[pb.Header(key=k, value=v) for k, v in raw.headers],
                timestamp=raw.timestamp,
            )
            if raw.key is not None:
                envelope.key = raw.key
            if raw.value is not None:
                envelope.value = raw.value
            result.outputs.append(
                RawMessage(
                    target.name, key, envelope.SerializeToString(), (), raw.timestamp or None
                )
            )
        return result


@dataclass(eq=False)
class MaterialiseStep(Step):
    """Maps records to rows; rows with one primary key collapse to the last in the batch."""

    call: Callable[[Record[Any, Any]], Any] | None = None
    shape: TableShape | None = None

    def collect(self, records: Sequence[RawRecord]) -> BatchResult:
        result = BatchResult()
        call, shape = self.call, self.shape
        assert call is not None and shape is not None
        topics = {topic.name: topic for topic in self.sources}
        rows = result.rows
        columns = frozenset(shape.columns)
        primary_key = shape.primary_key
        #: per returned type: the field count of a dataclass whose fields are all columns
        #: (its rows need no per-row checks but the key's), else 0
        plain: dict[type, int] = {}
        for raw in records:
            try:
                record = decode(topics[raw.topic], raw)
                try:
                    returned = call(record)
                    if returned is None:
                        result.filtered += 1
                        continue
                    kind = type(returned)
                    size = plain.get(kind)
                    if size is None:
                        size = plain[kind] = _plain_row_size(kind, columns)
                    values = getattr(returned, "__dict__", None) if size else None
                    if values is not None and len(values) == size:
                        row = values.copy()
                        key = tuple([row[c] for c in primary_key])
                        if None in key:
                            raise ValueError(
                                f"the row {row!r:.200} lacks primary key "
                                f"{[c for c in primary_key if row[c] is None]}"
                            )
                        rows[key] = row
                        continue
                    single = isinstance(returned, Mapping) or (
                        dataclasses.is_dataclass(returned) and not isinstance(returned, type)
                    )
                    many = (returned,) if single else returned
                    batch = []
                    for item in many:
                        row = row_as_dict(item)
                        missing = [c for c in primary_key if row.get(c) is None]
                        if missing:
                            raise ValueError(f"the row {row!r:.200} lacks primary key {missing}")
                        if not row.keys() <= columns:
                            unknown = sorted(set(row) - columns)
                            raise ValueError(f"table {shape.name!r} has no column {unknown}")
                        batch.append(row)
                except Exception as error:
                    raise UserFunctionError(
                        self.flow, raw.topic, raw.partition, raw.offset, error
                    ) from error
            except (DecodeError, UserFunctionError) as error:
                self._fail(raw, error, result)
                continue
            for row in batch:
                rows[tuple(row[c] for c in primary_key)] = row
        return result


def _plain_row_size(kind: type, columns: frozenset[str]) -> int:
    """The number of fields of dataclass ``kind`` when every field is a column, else 0.

    Such rows are copied from the instance's ``__dict__`` (when it holds exactly the fields)
    without the per-row checks of :func:`row_as_dict`: the column check holds for the type.
    """
    if not dataclasses.is_dataclass(kind):
        return 0
    names = [f.name for f in dataclasses.fields(kind)]
    return len(names) if set(names) <= columns else 0


@dataclass(eq=False)
class IngestRoute:
    """A compiled :class:`~flows.wiring.Ingest`: request bytes in, encoded messages out."""

    app: str
    flow: str
    path: str
    sink: Topic
    call: Callable[[Record[Any, Any]], Any]
    body_format: Format[Any]
    headers: tuple[str, ...]
    max_body: int
    emits: Emits = "one"

    def messages(self, body: bytes, headers: Mapping[str, str], timestamp: int) -> list[RawMessage]:
        """The records a request produces; :class:`DecodeError` for a body that does not
        decode, :class:`UserFunctionError` when the function fails."""
        wanted = tuple((name, headers[name].encode()) for name in self.headers if name in headers)
        raw = RawRecord(
            topic=f"http:{self.path}",
            partition=-1,
            offset=-1,
            key=None,
            value=body,
            headers=wanted,
            timestamp=timestamp,
        )
        record = Record(
            topic=raw.topic,
            partition=-1,
            offset=-1,
            key=None,
            value=_decode_part(self.body_format, raw, body, "body"),
            headers=wanted,
            timestamp=timestamp,
        )
        try:
            shaped = tuple(_shape_outputs(self.emits, self.call(record)))
        except Exception as error:
            raise UserFunctionError(self.flow, raw.topic, -1, -1, error) from error
        sink = _Sink(
            Topic(self.sink.name, key_format=self.sink.key_format, value_format=self.body_format),
            self.sink,
        )
        return [sink.message(out, record, raw) for _, out in shaped]


# --- compiling an app --------------------------------------------------------------------


def _arity_ok(fn: Any, count: int) -> bool:
    try:
        inspect.signature(fn).bind(*([None] * count))
    except TypeError:
        return False
    except ValueError:  # builtins without a signature: trust them
        return True
    return True


def _sanitise(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name).lower()


class _Compiler:
    """Resolves topics, checks every flow, and builds the steps of one app."""

    def __init__(self, app: str, declared: Sequence[Topic]) -> None:
        self.app = app
        self.topics: dict[str, Topic] = {}
        self.internal: set[str] = set()
        self.routes: list[IngestRoute] = []
        for topic in declared:
            self._register(topic, flow="<app>", fld="topics")

    def _register(self, topic: Topic, flow: str, fld: str) -> Topic:
        known = self.topics.get(topic.name)
        if known is None:
            self.topics[topic.name] = topic
            return topic
        same = (
            known.key_format is topic.key_format
            and known.value_format is topic.value_format
            and known.partitions == topic.partitions
        )
        if not same and known is not topic:
            raise WiringError(
                flow,
                fld,
                f"topic {topic.name!r} is declared twice with "
                "different formats or partition counts",
            )
        return known

    def topic(self, ref: Any, flow: str, fld: str) -> Topic:
        if isinstance(ref, Topic):
            return self._register(ref, flow, fld)
        if isinstance(ref, str):
            if ref not in self.topics:
                raise WiringError(
                    flow,
                    fld,
                    f"unknown topic {ref!r}: declare it in the app's topics or pass a Topic",
                )
            return self.topics[ref]
        raise WiringError(flow, fld, f"expected a Topic or a topic name, got {ref!r}")

    def function(self, fn: Any, count: int, flow: str, fld: str) -> None:
        if not callable(fn):
            raise WiringError(flow, fld, f"expected a function, got {fn!r}")
        if not _arity_ok(fn, count):
            wanted = "(record)" if count == 1 else "(record, state)"
            raise WiringError(
                flow,
                fld,
                f"{getattr(fn, '__name__', fn)!r} must accept "
                f"{wanted}: {count} positional argument(s)",
            )

    def dead_letters(self, config: FlowConfig, sources: Sequence[Topic]) -> dict[str, Topic]:
        found: dict[str, Topic] = {}
        if config.on_error not in ("dead_letter", "skip", "stop"):
            raise WiringError(
                config.name,
                "on_error",
                f"must be 'dead_letter', 'skip' or 'stop', not {config.on_error!r}",
            )
        if config.on_error != "dead_letter":
            return found
        for source in sources:
            name = config.dead_letter_topic or f"{source.name}.dlq"
            dlq = self.topics.get(name) or Topic(name, partitions=source.partitions)
            self.topics.setdefault(name, dlq)
            self.internal.add(name)
            found[source.name] = dlq
        return found

    def compile(self, config: FlowConfig) -> list[Step]:
        if not isinstance(config, FlowConfig):
            raise WiringError(str(config), "flows", f"{config!r} is not a flow configuration")
        if not _NAME.match(config.name or ""):
            raise WiringError(
                str(config.name),
                "name",
                "a flow name needs letters, digits, '-' or '_', starting with a letter or digit",
            )
        if isinstance(config, Join):
            return self._join(config)
        if isinstance(config, Stateful):
            return self._stateful(config)
        if isinstance(config, Materialise):
            return [self._materialise(config)]
        if isinstance(config, Ingest):
            self.routes.append(self._ingest(config))
            return []
        return [self._stateless(config)]

    def _base(
        self,
        config: FlowConfig,
        sources: tuple[Topic, ...],
        sinks: tuple[Topic, ...],
        name: str | None = None,
    ) -> dict[str, Any]:
        dead = self.dead_letters(config, sources)
        if config.retry_attempts is not None and config.retry_attempts < 0:
            raise WiringError(config.name, "retry_attempts", "must be 0 or more")
        if config.retry_seconds is not None and config.retry_seconds < 0:
            raise WiringError(config.name, "retry_seconds", "must be 0 or more")
        return {
            "app": self.app,
            "name": name or config.name,
            "flow": config.name,
            "sources": sources,
            "sinks": (*sinks, *dict.fromkeys(dead.values())),
            "on_error": config.on_error,
            "dead_letters": dead,
            "retry_attempts": config.retry_attempts,
            "retry_seconds": config.retry_seconds,
        }

    def _stateless(self, config: FlowConfig) -> StatelessStep:
        flow = config.name
        exactly_once = bool(getattr(config, "exactly_once", False))
        call: Callable[[Record[Any, Any]], Any] | None
        emits: Emits = "one"
        passthrough = None
        if isinstance(config, Merge):
            if not config.sources:
                raise WiringError(flow, "sources", "a merge needs at least one source")
            sources = tuple(self.topic(s, flow, "sources") for s in config.sources)
            sinks: tuple[Topic, ...] = (self.topic(config.sink, flow, "sink"),)
            if config.fn is not None:
                self.function(config.fn, 1, flow, "fn")
            call = config.fn
            if call is None:
                call = _identity
                same = all(
                    s.key_format is sinks[0].key_format and s.value_format is sinks[0].value_format
                    for s in sources
                )
                passthrough = sinks[0].name if same else None
        elif isinstance(config, Mirror):
            sources = (self.topic(config.source, flow, "source"),)
            sinks = (self.topic(config.sink, flow, "sink"),)
            call, passthrough = _identity, sinks[0].name
        elif isinstance(config, Map | Explode | Filter | Split):
            sources = (self.topic(config.source, flow, "source"),)
            if isinstance(config, Split):
                if len(config.sinks) != 2:
                    raise WiringError(flow, "sinks", "a split needs exactly two sink topics")
                sinks = tuple(self.topic(s, flow, "sinks") for s in config.sinks)
                emits = "two"
            else:
                sinks = (self.topic(config.sink, flow, "sink"),)
            if isinstance(config, Filter):
                self.function(config.predicate, 1, flow, "predicate")
                predicate = config.predicate
                call = lambda record: UNCHANGED if predicate(record) else None  # noqa: E731
            else:
                self.function(config.fn, 1, flow, "fn")
                call = config.fn
            if isinstance(config, Explode):
                emits = "many"
        else:
            raise WiringError(flow, "type", f"unsupported flow type {type(config).__name__}")
        step = StatelessStep(
            kind="stateless",
            exactly_once=exactly_once,
            call=call,
            emits=emits,
            passthrough=passthrough,
            description=type(config).__name__,
            **self._base(config, sources, sinks),
        )
        step.emitters = _emitters(sources, sinks)
        return step

    def _stateful_step(
        self,
        config: FlowConfig,
        sources: tuple[Topic, ...],
        sinks: tuple[Topic, ...],
        emits: Emits,
        fn: Any,
        state_format: Format[Any],
        table: str | None,
        envelope_sources: dict[str, Topic] | None,
    ) -> StatefulStep:
        flow = config.name
        self.function(fn, 2, flow, "fn")
        step = StatefulStep(
            kind="stateful",
            exactly_once=True,
            call=fn,
            emits=emits,
            state_format=state_format,
            table=table or f"{_sanitise(self.app)}_{_sanitise(flow)}_state",
            envelope_sources=envelope_sources,
            description=type(config).__name__,
            **self._base(config, sources, sinks),
        )
        origins = envelope_sources.values() if envelope_sources else sources
        step.emitters = _emitters(origins, sinks)
        if envelope_sources:
            extra = self.dead_letters(config, tuple(envelope_sources.values()))
            step.dead_letters.update(extra)
            step.sinks = tuple(dict.fromkeys((*step.sinks, *extra.values())))
        return step

    def _rekeyed(
        self,
        config: FlowConfig,
        key_fns: dict[Topic, Any],
        key_format: Format[Any],
        sinks: tuple[Topic, ...],
        emits: Emits,
        fn: Any,
        state_format: Format[Any],
        table: str | None,
    ) -> list[Step]:
        flow = config.name
        sources = tuple(key_fns)
        intermediate = Topic(
            f"{self.app}.{flow}.rekey",
            key_format=key_format,
            partitions=max(s.partitions for s in sources),
        )
        self.topics[intermediate.name] = intermediate
        self.internal.add(intermediate.name)
        rekey = RekeyStep(
            kind="stateless",
            exactly_once=True,
            key_format=key_format,
            intermediate=intermediate,
            description="re-key",
            key_functions={s.name: f for s, f in key_fns.items()},
            **self._base(config, sources, (intermediate,), name=f"{flow}.rekey"),
        )
        stateful = self._stateful_step(
            config,
            (intermediate,),
            sinks,
            emits,
            fn,
            state_format,
            table,
            {s.name: s for s in sources},
        )
        return [rekey, stateful]

    def _stateful(self, config: Stateful) -> list[Step]:
        flow = config.name
        source = self.topic(config.source, flow, "source")
        emits: Emits
        if isinstance(config, StatefulSplit):
            if len(config.sinks) != 2:
                raise WiringError(flow, "sinks", "a stateful split needs exactly two sinks")
            sinks = tuple(self.topic(s, flow, "sinks") for s in config.sinks)
            emits = "two"
        elif isinstance(config, StatefulMap | StatefulExplode):
            sinks = (self.topic(config.sink, flow, "sink"),)
            emits = "many" if isinstance(config, StatefulExplode) else "one"
        else:
            raise WiringError(flow, "type", f"unsupported flow type {type(config).__name__}")
        if config.state_key is None:
            return [
                self._stateful_step(
                    config,
                    (source,),
                    sinks,
                    emits,
                    config.fn,
                    config.state_format,
                    config.table,
                    None,
                )
            ]
        self.function(config.state_key, 1, flow, "state_key")
        return self._rekeyed(
            config,
            {source: config.state_key},
            config.key_format,
            sinks,
            emits,
            config.fn,
            config.state_format,
            config.table,
        )

    def _join(self, config: Join) -> list[Step]:
        flow = config.name
        if not config.sources:
            raise WiringError(flow, "sources", "a join needs at least one source")
        key_fns: dict[Topic, Any] = {}
        for ref, key_fn in config.sources.items():
            topic = self.topic(ref, flow, "sources")
            self.function(key_fn, 1, flow, f"sources[{topic.name!r}]")
            key_fns[topic] = key_fn
        sinks = (self.topic(config.sink, flow, "sink"),)
        return self._rekeyed(
            config,
            key_fns,
            config.key_format,
            sinks,
            "many" if config.explode else "one",
            config.fn,
            config.state_format,
            config.table,
        )

    def _ingest(self, config: Ingest) -> IngestRoute:
        flow = config.name
        if not config.path.startswith("/") or config.path.startswith(
            ("/state", "/metrics", "/healthz", "/readyz")
        ):
            raise WiringError(
                flow,
                "path",
                f"{config.path!r} must start with '/' and not "
                "with /state, /metrics, /healthz or /readyz",
            )
        if any(route.path == config.path for route in self.routes):
            raise WiringError(flow, "path", f"another ingest already serves {config.path!r}")
        if config.max_body < 1:
            raise WiringError(flow, "max_body", "must be at least 1 byte")
        sink = self.topic(config.sink, flow, "sink")
        if config.fn is not None:
            self.function(config.fn, 1, flow, "fn")
        return IngestRoute(
            app=self.app,
            flow=flow,
            path=config.path,
            sink=sink,
            call=config.fn or _identity,
            body_format=config.body_format,
            headers=tuple(h.lower() for h in config.headers),
            max_body=config.max_body,
            emits="many" if config.explode else "one",
        )

    def _materialise(self, config: Materialise) -> MaterialiseStep:
        flow = config.name
        source = self.topic(config.source, flow, "source")
        self.function(config.fn, 1, flow, "fn")
        try:
            shape = table_shape(config.table)
        except ValueError as error:
            raise WiringError(flow, "table", str(error)) from error
        return MaterialiseStep(
            kind="materialise",
            exactly_once=True,
            call=config.fn,
            shape=shape,
            description="Materialise",
            **self._base(config, (source,), ()),
        )


def _identity(record: Record[Any, Any]) -> Any:
    return record.value


@dataclass(frozen=True)
class CompiledApp:
    """Every step of an app, in topological order, and every topic it touches."""

    steps: tuple[Step, ...]
    topics: dict[str, Topic]
    internal: frozenset[str]
    routes: tuple[IngestRoute, ...] = ()


def compile_app(app: str, flows: Sequence[FlowConfig], topics: Sequence[Topic]) -> CompiledApp:
    """Validates the flows together and compiles them; raises :class:`WiringError`."""
    compiler = _Compiler(app, topics)
    steps: list[Step] = []
    names: set[str] = set()
    tables: dict[str, str] = {}
    for config in flows:
        name = getattr(config, "name", None)
        if name in names:
            raise WiringError(str(name), "name", "two flows have this name; names must differ")
        names.add(str(name))
        for step in compiler.compile(config):
            steps.append(step)
            table = (
                step.table
                if isinstance(step, StatefulStep)
                else (step.shape.name if isinstance(step, MaterialiseStep) and step.shape else None)
            )
            if table is not None:
                if table in tables:
                    raise WiringError(
                        step.flow,
                        "table",
                        f"table {table!r} is already used by flow {tables[table]!r}",
                    )
                tables[table] = step.flow
    # A cycle (a flow that, through others, reads what it writes) would loop forever.
    writers: dict[str, list[Step]] = {}
    for step in steps:
        for sink in step.sinks:
            writers.setdefault(sink.name, []).append(step)
    graph: dict[Step, set[Step]] = {step: set() for step in steps}
    for step in steps:
        for source in step.sources:
            graph[step].update(writers.get(source.name, ()))
    try:
        order = tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        cycle = [s.flow for s in error.args[1]]
        raise WiringError(
            cycle[0], "sink", "the flows form a cycle: " + " -> ".join(cycle)
        ) from error
    return CompiledApp(
        steps=order,
        topics=dict(compiler.topics),
        internal=frozenset(compiler.internal),
        routes=tuple(compiler.routes),
    )


__all__ = [
    "BatchResult",
    "CompiledApp",
    "IngestRoute",
    "MaterialiseStep",
    "RekeyStep",
    "StatefulStep",
    "StatelessStep",
    "Step",
    "TopicRef",
    "compile_app",
    "dead_letter",
    "decode",
]
