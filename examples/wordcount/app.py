"""Word count: lines in, a running count per word out, counts kept in PostgreSQL.

The contract (checked by tests): words are ``re.findall(r"[^\\W_]+", line.lower())``;
``word-count-output`` gets one record per word occurrence, key = the word, value = its
running count as a decimal string (1, 2, 3, ... per word, no gap, no repeat); the table
``word_counts(word, count)`` holds the latest count of every word. A line that is not UTF-8
is dead-lettered to ``word-count-input.dlq`` and never touches a count. ``POST /lines``
(the HTTP server, port 8080 by default) adds lines over HTTP. The count flow keeps its
history for a week: ``GET /state/count/<word>/history`` lists a word's counts, newest first,
and ``GET /state/count/changes`` streams them as they commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

from flows import (
    JSON,
    STR,
    App,
    Explode,
    Ingest,
    Materialise,
    Message,
    Record,
    StatefulMap,
    Topic,
)

WORD = re.compile(r"[^\W_]+")

lines = Topic("word-count-input", value_format=STR)
words = Topic("word-count-words", key_format=STR, value_format=STR)
counts = Topic("word-count-output", key_format=STR, value_format=STR)


@dataclass
class WordCount:
    """A row of ``word_counts``."""

    __tablename__ = "word_counts"
    word: str = field(metadata={"primary_key": True})
    count: int = 0


def split(record: Record[bytes | None, str]) -> list[Message]:
    """Each word of the line, keyed by the word, so one partition holds each word."""
    return [Message(word, key=word) for word in WORD.findall(record.value.lower())]


def count(record: Record[str, str], state: int | None) -> tuple[str, int]:
    total = (state or 0) + 1
    return str(total), total


def to_row(record: Record[str, str]) -> WordCount:
    return WordCount(word=record.key, count=int(record.value))


def body_lines(record: Record[None, str]) -> list[str]:
    """``POST /lines``: each non-empty line of a text body becomes one input record."""
    return [line for line in record.value.splitlines() if line.strip()]


app = App(
    "wordcount",
    [
        Explode(name="split", source=lines, sink=words, fn=split, exactly_once=True),
        StatefulMap(
            name="count",
            source=words,
            sink=counts,
            fn=count,
            state_format=JSON,
            history=True,
            history_max_age=timedelta(days=7),
        ),
        Materialise(name="store", source=counts, table=WordCount, fn=to_row),
        Ingest(
            name="ingest",
            path="/lines",
            sink=lines,
            fn=body_lines,
            body_format=STR,
            explode=True,
            headers=("x-request-id",),
        ),
    ],
    description="running word counts, exactly-once, in PostgreSQL",
)
