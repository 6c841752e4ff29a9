"""The wordcount example against an independent oracle, at several batch sizes.

The oracle is ``collections.Counter`` over ``re.findall(r"[^\\W_]+", line.lower())``: the
contract in ``examples/wordcount/app.py``, computed without flows.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from examples.wordcount.app import app as wordcount
from flows.testing import TestDriver

WORD = re.compile(r"[^\W_]+")

VOCABULARY = [
    "the",
    "The",
    "THE",
    "cat",
    "Cat",
    "hat",
    "naïve",
    "NAÏVE",
    "café",
    "Café",
    "über",
    "straße",
    "ĳssel",
    "日本",
    "Ελλάδα",
    "ελλάδα",
    "x1",
    "42",
    "007",
    "snake_case",
    "a_b_c",
    "don't",
    "e-mail",
    "well-known",
    "ok!",
    "(why?)",
    "¿qué?",
    "«quoted»",
    "1.5",
    "3,000",
    "tab\there",
    "__init__",
    "_",
    "-",
    "...",
    "—",
    "🎉",
    "emoji🎉word",
]


def generate_lines(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = rng.choices(VOCABULARY, k=rng.randrange(0, 12))
        separators = rng.choices([" ", "  ", ", ", "; ", "\t", " - ", "/"], k=len(words))
        lines.append("".join(w + s for w, s in zip(words, separators, strict=True)))
    return lines


def expected_counts(lines: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(WORD.findall(line.lower()))
    return counts


def test_the_generated_text_exercises_the_tricky_cases() -> None:
    counts = expected_counts(generate_lines(7, 300))
    # accents, non-Latin scripts and digits are words; underscores and punctuation split
    for word in ["naïve", "café", "straße", "日本", "ελλάδα", "x1", "42", "007", "snake", "case"]:
        assert counts[word] > 0, word
    assert not any("_" in word or "-" in word for word in counts)


@pytest.mark.parametrize("batch_size", [1, 7, 500])
@pytest.mark.parametrize("seed", [1, 2])
def test_wordcount_matches_counter(batch_size: int, seed: int) -> None:
    lines = generate_lines(seed, 300)
    expected = expected_counts(lines)
    assert len(expected) > 20 and sum(expected.values()) > 1000

    driver = TestDriver(wordcount, batch_size=batch_size)
    # Piped in chunks, so the flows run between arrivals as well as over backlogs.
    for start in range(0, len(lines), 37):
        for line in lines[start : start + 37]:
            driver.pipe_raw("word-count-input", line.encode("utf-8"), run=False)
        driver.run()

    rows = driver.rows("store")
    assert rows == [{"word": word, "count": expected[word]} for word in sorted(expected)]

    outputs: dict[str, list[str]] = {}
    for record in sorted(driver.read("word-count-output"), key=lambda r: (r.partition, r.offset)):
        outputs.setdefault(record.key, []).append(record.value)
    assert set(outputs) == set(expected)
    for word, seen in outputs.items():
        assert seen == [str(n) for n in range(1, expected[word] + 1)], word

    assert driver.states("count") == dict(expected)
    for word in expected:  # its history: each count once, in order
        changes = driver.history("count", word)
        assert [(c["previous"], c["value"]) for c in changes] == [
            (n - 1 or None, n) for n in range(1, expected[word] + 1)
        ], word
    assert driver.counts["dead_lettered"] == 0
    assert driver.read_all("word-count-input.dlq") == []


def test_one_record_per_occurrence() -> None:
    lines = generate_lines(3, 200)
    driver = TestDriver(wordcount, batch_size=7)
    for line in lines:
        driver.pipe_raw("word-count-input", line.encode("utf-8"), run=False)
    driver.run()
    assert len(driver.read_all("word-count-words")) == sum(expected_counts(lines).values())
    assert len(driver.read_all("word-count-output")) == sum(expected_counts(lines).values())


def test_lines_posted_over_http_are_counted() -> None:
    from examples.wordcount.app import app
    from flows.testing import TestDriver

    driver = TestDriver(app)
    assert driver.post("/lines", b"the cat\n\n  \nthe hat\n", {"X-Request-Id": "r"}) == 2
    assert driver.rows("store") == [
        {"word": "cat", "count": 1},
        {"word": "hat", "count": 1},
        {"word": "the", "count": 2},
    ]
    posted = driver.read_all("word-count-input")
    assert [r.headers for r in posted] == [(("x-request-id", b"r"),)] * 2
