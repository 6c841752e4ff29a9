"""The re-key step: each record, in an envelope, to an intermediate topic keyed by state key.

A :class:`~flows.wiring.Join`, and a stateful flow with a ``state_key`` function, compile
to this step (stateless, always exactly-once) and a
:class:`~flows.steps.stateful.StatefulStep` over the intermediate topic. So each state key
lives in exactly one partition, as Kafka Streams repartitions before ``groupByKey``. The
envelope keeps the source record's coordinates and bytes, so the stateful step decodes it
with its source's formats and dead-letters it to its source's dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows._proto import flows_envelope_pb2 as pb
from flows.encoding import decode, encode_part
from flows.errors import DecodeError, EncodeError, UserFunctionError
from flows.formats import BYTES, Format
from flows.records import RawMessage, RawRecord, Record
from flows.steps.base import BatchResult, Step
from flows.topics import Topic


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
                key = encode_part(self.key_format, new_key, target, "key")
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


__all__ = ["RekeyStep"]
