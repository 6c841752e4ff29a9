"""The built-in formats: round trips, malformed input and wrong types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flows import BYTES, JSON, STR, Format, protobuf
from flows._proto.flows_envelope_pb2 import Envelope, Header


@pytest.mark.parametrize("value", [b"", b"plain", bytes(range(256)), b"\xff\xfe not utf-8 \x80"])
def test_bytes_round_trip(value: bytes) -> None:
    encoded = BYTES.encode(value)
    assert encoded == value
    assert BYTES.decode(encoded) == value


@pytest.mark.parametrize("value", [bytearray(b"ab\x00c"), memoryview(b"ab\x00c")])
def test_bytes_accepts_buffers_and_returns_bytes(value: Any) -> None:
    encoded = BYTES.encode(value)
    assert type(encoded) is bytes
    assert encoded == b"ab\x00c"


@pytest.mark.parametrize("value", ["text", 1, None, ["a"]])
def test_bytes_rejects_non_bytes(value: Any) -> None:
    with pytest.raises(TypeError, match="bytes format"):
        BYTES.encode(value)


@pytest.mark.parametrize(
    "value", ["", "ascii", "naïve café", "日本語", "emoji 🎉", "nul\x00inside", "a\nb\tc"]
)
def test_str_round_trip(value: str) -> None:
    encoded = STR.encode(value)
    assert encoded == value.encode("utf-8")
    assert STR.decode(encoded) == value


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",  # never valid in UTF-8
        b"caf\xe9",  # Latin-1, not UTF-8
        b"\xc3",  # truncated two-byte sequence
        b"\xed\xa0\x80",  # an encoded surrogate
        b"\xc0\xaf",  # overlong encoding of '/'
    ],
)
def test_str_rejects_malformed_utf8(data: bytes) -> None:
    with pytest.raises(ValueError):
        STR.decode(data)


@pytest.mark.parametrize("value", [b"bytes", 1, None, 1.5, ["a"]])
def test_str_rejects_non_str(value: Any) -> None:
    with pytest.raises(TypeError, match="str format"):
        STR.encode(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -12,
        2**70,
        1.25,
        "",
        "naïve ✓",
        [],
        [1, "two", None, [3.5]],
        {},
        {"k": {"nested": [1, 2]}, "é": "ü"},
    ],
)
def test_json_round_trip(value: Any) -> None:
    assert JSON.decode(JSON.encode(value)) == value


def test_json_is_compact_utf8() -> None:
    encoded = JSON.encode({"a": [1, 2], "é": "✓"})
    assert encoded == '{"a":[1,2],"é":"✓"}'.encode()
    assert json.loads(encoded.decode("utf-8")) == {"a": [1, 2], "é": "✓"}


@pytest.mark.parametrize("value", [0, 7, 123456789012345678901234567890, -5, True, 1.5])
def test_json_numbers_read_back_as_json_writes_them(value: Any) -> None:
    """Integers take a short cut; bools (an int subclass) and floats do not."""
    encoded = JSON.encode(value)
    assert encoded == json.dumps(value).encode()
    decoded = JSON.decode(encoded)
    assert decoded == value and type(decoded) is type(value)


def test_json_skips_a_byte_order_mark_as_json_loads_does() -> None:
    assert JSON.decode(b'\xef\xbb\xbf{"a":1}') == {"a": 1}


@pytest.mark.parametrize("data", [b"", b"{", b"{'a': 1}", b"nope", b'"\xff"', b"1 2", b"0123"])
def test_json_rejects_malformed_input(data: bytes) -> None:
    with pytest.raises(ValueError):
        JSON.decode(data)


@pytest.mark.parametrize("value", [b"bytes", object(), {1, 2}, {"k": object()}])
def test_json_rejects_unencodable_values(value: Any) -> None:
    with pytest.raises(TypeError):
        JSON.encode(value)


ENVELOPE = protobuf(Envelope)


def _envelope() -> Envelope:
    return Envelope(
        source_topic="orders",
        source_partition=3,
        source_offset=2**40,
        key=b"k\x00",
        value=b"\xff\xfe",
        headers=[Header(key="h", value=b"1"), Header(key="h", value=b"2")],
        timestamp=1_700_000_000_000,
    )


def test_protobuf_round_trip() -> None:
    message = _envelope()
    decoded = ENVELOPE.decode(ENVELOPE.encode(message))
    assert isinstance(decoded, Envelope)
    assert decoded == message
    assert decoded.HasField("key")
    assert [(h.key, h.value) for h in decoded.headers] == [("h", b"1"), ("h", b"2")]


def test_protobuf_keeps_optional_presence() -> None:
    decoded = ENVELOPE.decode(ENVELOPE.encode(Envelope(source_topic="t", key=b"")))
    assert decoded.HasField("key")
    assert not decoded.HasField("value")


def test_protobuf_name_is_the_message_full_name() -> None:
    assert ENVELOPE.name == "protobuf:flows.v1.Envelope"


@pytest.mark.parametrize("value", [b"\x0a\x01t", "text", {"source_topic": "t"}, Header()])
def test_protobuf_rejects_other_types(value: Any) -> None:
    with pytest.raises(TypeError, match="needs a Envelope"):
        ENVELOPE.encode(value)


def test_protobuf_malformed_bytes_raise_value_error() -> None:
    # Format.decode: "raises ValueError (or a subclass) on malformed bytes"
    with pytest.raises(ValueError):
        ENVELOPE.decode(b"\xff\xff\xff")


@pytest.mark.parametrize("fmt", [BYTES, STR, JSON, ENVELOPE])
def test_builtin_formats_satisfy_the_protocol(fmt: Any) -> None:
    assert isinstance(fmt, Format)
    assert isinstance(fmt.name, str) and fmt.name
