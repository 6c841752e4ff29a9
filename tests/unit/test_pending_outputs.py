"""Pending outputs survive their trip through PostgreSQL's bytes exactly as produced."""

from __future__ import annotations

import pytest

from flows._proto import flows_envelope_pb2 as pb
from flows.records import RawMessage
from runtimes.postgres import decode_outputs, encode_outputs

MIXED = [
    RawMessage("counts", b"a", b"1", (), 1700000000000),
    RawMessage("counts", None, b"2", (("trace", b"x"), ("trace", b"")), None),
    RawMessage("counts.dlq", b"c", None, (("flows.error", b"boom"),), 0),
    RawMessage("counts", b"", b"", (), 5),
    RawMessage("other", None, None, (), None),
]


@pytest.mark.parametrize(
    "outputs",
    [
        MIXED,
        [RawMessage("one-topic", f"k{i}".encode(), f"{i}".encode(), (), i) for i in range(50)],
        [RawMessage("t", None, b"v", (), None)],
    ],
    ids=["mixed", "one-topic", "single"],
)
def test_outputs_round_trip(outputs: list[RawMessage]) -> None:
    assert decode_outputs(encode_outputs(outputs)) == tuple(outputs)


def test_outputs_stored_by_earlier_versions_still_decode() -> None:
    """Rows written as an ``OutputBatch`` (one ``Output`` each) before the columns."""
    legacy = pb.OutputBatch()
    for m in MIXED:
        out = legacy.outputs.add(topic=m.topic)
        if m.key is not None:
            out.key = m.key
        if m.value is not None:
            out.value = m.value
        if m.timestamp is not None:
            out.timestamp = m.timestamp
        for name, value in m.headers:
            out.headers.add(key=name, value=value)
    assert decode_outputs(legacy.SerializeToString()) == tuple(MIXED)
