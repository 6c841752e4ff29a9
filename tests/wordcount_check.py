"""Independent checks of the wordcount contract, shared by example and fault tests."""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict

import sqlalchemy as sa

from tests.helpers import Consumed

WORD = re.compile(r"[^\W_]+")

_SYLLABLES = ["ka", "lo", "mi", "ré", "zu", "ñe", "tö", "bi", "ça", "do", "fy", "gå"]


def vocabulary(size: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def text_lines(count: int, seed: int, words_per_line: int = 6, vocab: int = 2000) -> list[str]:
    """Lines with mixed case, punctuation, digits and underscores, seeded."""
    rng = random.Random(seed)
    words = vocabulary(vocab, seed)
    lines = []
    for i in range(count):
        picked = [rng.choice(words) for _ in range(rng.randint(1, words_per_line * 2 - 1))]
        if i % 7 == 0:
            picked.append(f"n{i % 13}_x")  # an underscore splits a word
        if i % 11 == 0:
            picked = [w.upper() for w in picked]
        separator = rng.choice([" ", ", ", "; ", " -- "])
        lines.append(separator.join(picked) + rng.choice(["", ".", "!"]))
    return lines


def expected_counts(lines: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(WORD.findall(line.lower()))
    return counts


def check_output(records: list[Consumed], expected: Counter[str]) -> None:
    """Each word's records, in offset order, read exactly 1..N."""
    seen: dict[str, list[int]] = defaultdict(list)
    partition_of: dict[str, int] = {}
    for record in records:  # sorted by partition then offset
        assert record.key is not None and record.value is not None
        word = record.key.decode()
        assert partition_of.setdefault(word, record.partition) == record.partition, word
        seen[word].append(int(record.value))
    assert set(seen) == set(expected), (
        f"{len(set(expected) - set(seen))} words missing, {len(set(seen) - set(expected))} extra"
    )
    bad = {w: v[:20] for w, v in seen.items() if v != list(range(1, expected[w] + 1))}
    assert not bad, f"{len(bad)} words with gaps or repeats, e.g. {list(bad.items())[:3]}"


def table_counts(engine: sa.Engine) -> Counter[str]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT word, count FROM word_counts")).all()
    return Counter({word: count for word, count in rows})


def check_history(engine: sa.Engine, expected: Counter[str]) -> None:
    """The count flow's history: each word's changes, in id order, are 1..N, each once,
    with the count before it as ``previous``."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT key, array_agg(previous::int ORDER BY id),"
                " array_agg(value::int ORDER BY id) FROM wordcount_count_state_history"
                " GROUP BY key"
            )
        ).all()
    found = {word: (list(before), list(after)) for word, before, after in rows}
    assert set(found) == set(expected), (
        f"{len(set(expected) - set(found))} words without history, "
        f"{len(set(found) - set(expected))} extra"
    )
    bad = {
        w: after[:20]
        for w, (before, after) in found.items()
        if after != list(range(1, expected[w] + 1)) or before != [None, *after[:-1]]
    }
    assert not bad, (
        f"{len(bad)} words whose history has gaps or repeats, e.g. {list(bad.items())[:3]}"
    )
