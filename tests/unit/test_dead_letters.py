"""Dead-letter records: the failure in headers that consumers can read back."""

from __future__ import annotations

import pytest

from flows import STR, App, Map, Record, Topic
from flows.testing import TestDriver

IN = Topic("in", key_format=STR, value_format=STR)
OUT = Topic("out", key_format=STR, value_format=STR)

#: the most bytes of the error message a dead-letter record carries
LIMIT = 4000


@pytest.mark.parametrize("char", ["é", "€", "😀"])
@pytest.mark.parametrize("padding", range(4))
def test_a_long_error_message_is_cut_on_a_character_boundary(char: str, padding: int) -> None:
    # The paddings shift the cut through every byte of a 2-, 3- and 4-byte character, so
    # some cuts fall inside one: the header must still be strict UTF-8.
    message = "x" * padding + char * LIMIT

    def fail(record: Record[str, str]) -> str:
        raise ValueError(message)

    driver = TestDriver(App("test", [Map(name="fail", source=IN, sink=OUT, fn=fail)]))
    driver.pipe("in", "a", key="k")
    (dead,) = driver.read_all("in.dlq")
    header = dict(dead.headers).get("flows.error.message")
    assert header is not None
    text = header.decode("utf-8", "strict")
    assert len(header) <= LIMIT
    assert len(header) > LIMIT - len(char.encode())  # cut no more than the split character
    assert text.endswith(char)
    assert "ValueError: " + "x" * padding + char in text


def test_a_short_error_message_is_whole() -> None:
    def fail(record: Record[str, str]) -> str:
        raise ValueError("déjà vu 😀")

    driver = TestDriver(App("test", [Map(name="fail", source=IN, sink=OUT, fn=fail)]))
    driver.pipe("in", "a", key="k")
    (dead,) = driver.read_all("in.dlq")
    header = dict(dead.headers).get("flows.error.message", b"")
    assert header.decode("utf-8", "strict").endswith("ValueError: déjà vu 😀")
