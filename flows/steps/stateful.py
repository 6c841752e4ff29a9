"""The stateful step: folds a batch over per-key states that the runtime loads and stores.

Its input is either a topic keyed by the state key, or the intermediate topic of a
:class:`~flows.steps.rekey.RekeyStep`, whose records are envelopes around source records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from flows._proto import flows_envelope_pb2 as pb
from flows.encoding import NOT_THE_RECORDS, SinkEncoder, decode, encode_outputs
from flows.encryption import StateCipher, key_id_of, state_context
from flows.errors import DecodeError, EncodeError, FlowFailedError, UserFunctionError
from flows.formats import BYTES, Format, JsonFormat, StrFormat, jsonb_problem
from flows.history import HistoryPolicy, StateChange, history_table
from flows.ports import StateColumns, StateStore
from flows.records import RawRecord, Record
from flows.steps.base import BatchResult, Step
from flows.steps.sealing import Sealing
from flows.topics import Topic
from flows.wiring import Emits


@dataclass(eq=False)
class StatefulStep(Sealing, Step):
    """Folds a batch over per-key states; the runtime loads and stores the states.

    Contract with the runtime: call :meth:`state_keys` to learn which states the batch
    needs, load them (encoded, absent keys omitted), call :meth:`fold`, then persist
    ``result.states`` and ``result.outputs`` atomically with the input offsets. ``fold`` never
    mutates the mapping it is given.

    Its table keeps keys as text when the key format is ``str`` or ``json``, and values as
    JSON when the state format is ``json`` (:attr:`columns`); then a record whose key holds a
    NUL character fails like a key that does not decode, and a state that is not standard
    JSON stops the flow like a state that does not encode (:meth:`encode_state`).

    With ``encrypt``, :meth:`encode_state` and :meth:`decode_state` are where states are
    encrypted and decrypted (:class:`~flows.steps.sealing.Sealing`), with ``cipher``, which
    the app's state keys make (:meth:`flows.App.bind`): every stored copy of a state (its
    row, its history) is ciphertext, and the table keeps values as bytes whatever the
    state format.

    With :attr:`history`, :meth:`fold` also gives every record's change of its key's state
    (``result.changes``, :mod:`flows.history`), each state encoded as the record left it;
    the runtime writes them to :attr:`history_table` with the states.
    """

    call: Callable[[Record[Any, Any], Any], tuple[Any, Any]] | None = None
    emits: Emits = "one"
    state_format: Format[Any] = BYTES
    table: str = ""
    emitters: dict[str, tuple[SinkEncoder, ...]] = field(default_factory=dict)
    #: source topics of the re-key step when the input is an envelope topic
    envelope_sources: dict[str, Topic] | None = None
    #: whether states are stored encrypted, and the cipher (None until keys are bound)
    encrypt: bool = False
    cipher: StateCipher | None = None
    #: the flow keeps the history of its states (None: it does not)
    history: HistoryPolicy | None = None

    @property
    def history_table(self) -> str | None:
        """The table of the flow's history, when it keeps one."""
        return None if self.history is None else history_table(self.table)

    @cached_property
    def columns(self) -> StateColumns:
        """How the table keeps keys and values (see :class:`~flows.ports.StateColumns`);
        encrypted values are bytes, whatever the state format."""
        text = isinstance(self.sources[0].key_format, StrFormat | JsonFormat)
        json = isinstance(self.state_format, JsonFormat) and not self.encrypt
        return StateColumns("text" if text else "bytes", "json" if json else "bytes")

    def prepare(self, store: StateStore) -> None:
        self.require_keys()
        store.ensure_table(self.table, self.columns)
        if self.history is not None:
            store.ensure_history_table(history_table(self.table), self.columns)

    def value_context(self, key: bytes, start: int) -> bytes:
        return state_context(key)

    def state_keys(self, records: Sequence[RawRecord]) -> set[bytes]:
        return {raw.key for raw in records if raw.key is not None}

    def fold(self, records: Sequence[RawRecord], states: dict[bytes, bytes]) -> BatchResult:
        """Applies every record, in offset order per key, to its key's state."""
        result = BatchResult()
        call, emits = self.call, self.emits
        assert call is not None
        working: dict[bytes, Any] = {}
        topics = {topic.name: topic for topic in self.sources}
        emitters = self.emitters
        plain = self.envelope_sources is None  # records as they are, not re-keyed envelopes
        one = emits == "one"  # one output or none: the common case, without a list per record
        outputs, versions = result.outputs, result.versions
        # with history: each key's latest state, encoded (its next change's ``previous``)
        encoded: dict[bytes, bytes | None] | None = None if self.history is None else {}
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
                state = working[key] if key in working else self._stored(raw, key, states)
                sinks = emitters[record.topic]
                try:
                    returned, new_state = call(record, state)
                    if one:
                        output = (
                            None if returned is None else sinks[0].message(returned, record, origin)
                        )
                    else:
                        produced = encode_outputs(emits, sinks, returned, record, origin)
                except EncodeError:
                    raise
                except NOT_THE_RECORDS:  # a registry down or refusing: not this record's fault
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
            versions[key] = raw.offset
            if encoded is not None:
                self._change(key, new_state, origin, states, encoded, result)
            if one:
                if output is None:
                    result.filtered += 1
                else:
                    outputs.append(output)
            elif produced:
                outputs.extend(produced)
            else:
                result.filtered += 1
        if encoded is not None:  # every state is encoded already
            result.states.update(encoded)
            return result
        for key, state in working.items():
            result.states[key] = None if state is None else self.encode_state(key, state)
        return result

    def _change(
        self,
        key: bytes,
        state: Any,
        origin: RawRecord,
        states: dict[bytes, bytes],
        encoded: dict[bytes, bytes | None],
        result: BatchResult,
    ) -> None:
        """Records the change ``origin`` made to ``key``'s state (none when the key had no
        state and still has none)."""
        previous = encoded[key] if key in encoded else states.get(key)
        value = None if state is None else self.encode_state(key, state)
        encoded[key] = value
        if previous is None and value is None:
            return
        result.changes.append(
            StateChange(
                key,
                previous,
                value,
                origin.topic,
                origin.partition,
                origin.offset,
                origin.timestamp,
            )
        )

    def encode_state(self, key: bytes, state: Any) -> bytes:
        """``state`` in the state format; a state that does not fit stops the flow (a bug
        in its function, which every later record of the key would meet again). So does a
        JSON state that its table's ``jsonb`` column cannot hold (:func:`jsonb_problem`).
        Encrypted last, when the flow encrypts (:meth:`seal`)."""
        try:
            encoded = self.state_format.encode(state)
        except NOT_THE_RECORDS:
            raise
        except Exception as error:
            raise FlowFailedError(
                f"flow {self.flow!r}: the state of key {key!r} does not fit its format "
                f"{self.state_format.name}: {error}"
            ) from error
        if type(state) is not int and self.columns.value == "json":
            problem = jsonb_problem(encoded)
            if problem is not None:
                raise FlowFailedError(
                    f"flow {self.flow!r}: the state of key {key!r} cannot be stored as JSON "
                    f"in table {self.table!r}: {problem}"
                )
        if self.encrypt:
            return self.seal(encoded, state_context(key))
        return encoded

    def _nul_key(self, raw: RawRecord) -> DecodeError:
        return DecodeError(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            part="key",
            format_name=self.sources[0].key_format.name,
            reason=f"it holds a NUL character, which the text keys of table {self.table!r} "
            "cannot (PostgreSQL TEXT)",
        )

    def _stored(self, raw: RawRecord, key: bytes, states: dict[bytes, bytes]) -> Any:
        """The stored state of ``raw``'s key (None: none). A key that has none may be new, so
        only then is it checked: a NUL character is refused where keys are text."""
        encoded = states.get(key)
        if encoded is not None:
            return self.decode_state(key, encoded)
        if b"\x00" in key and self.columns.key == "text":
            raise self._nul_key(raw)
        return None

    def decode_state(self, key: bytes, encoded: bytes) -> Any:
        """A stored state, decrypted (when the flow encrypts) and decoded; one that does
        not decrypt (:class:`StateDecryptionError`) or decode stops the flow."""
        if self.encrypt:
            encoded = self.unseal(key, encoded, state_context(key))
        try:
            return self.state_format.decode(encoded)
        except NOT_THE_RECORDS:
            raise
        except Exception as error:
            sealed = None if self.encrypt else key_id_of(encoded)
            cause = (
                "was the state format changed? Migrate the table or reset the app"
                if sealed is None
                else f"it looks encrypted (key id {sealed!r}): was encrypt=True removed from "
                "the flow? Its states stay encrypted: put it back"
            )
            raise FlowFailedError(
                f"flow {self.flow!r}: the stored state of key {key!r} in table {self.table!r} "
                f"does not decode as {self.state_format.name} ({error}); {cause}"
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


__all__ = ["StatefulStep"]
