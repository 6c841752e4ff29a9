"""The stateless step: decode, call the function, encode, one record at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.encoding import NOT_THE_RECORDS, SinkEncoder, decode, encode_outputs
from flows.errors import DecodeError, EncodeError, UserFunctionError
from flows.records import RawMessage, RawRecord, Record
from flows.steps.base import BatchResult, Step
from flows.wiring import Emits


@dataclass(eq=False)
class StatelessStep(Step):
    """Decode, call the function, encode: one record at a time, outputs in input order."""

    call: Callable[[Record[Any, Any]], Any] | None = None
    emits: Emits = "one"
    #: sinks by index, per source topic name (the reusable key bytes depend on the source)
    emitters: dict[str, tuple[SinkEncoder, ...]] = field(default_factory=dict)
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
                    produced = encode_outputs(emits, sinks, call(record), record, raw)
                except EncodeError:
                    raise
                except NOT_THE_RECORDS:  # a registry down or refusing: not this record's fault
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


__all__ = ["StatelessStep"]
