"""Seeded input data: the same seed gives the same records, byte for byte.

Each generator yields ``(key, value)`` pairs of bytes and is cheap enough to feed a
producer directly (about 1 µs of Python per field).
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

COUNTRIES = ("DE", "FR", "NL", "SE", "PL", "IT", "ES", "GB", "US", "JP")
CURRENCIES = ("EUR", "USD", "GBP", "SEK", "JPY")


def json_record(rng: random.Random, i: int) -> dict[str, object]:
    """A ~200-byte JSON event; ``user`` is the field the stateless case transforms."""
    return {
        "id": i,
        "user": f"user-{rng.randrange(100_000):05d}",
        "ts": 1_700_000_000_000 + i,
        "amount": round(rng.uniform(1, 1000), 2),
        "currency": rng.choice(CURRENCIES),
        "country": rng.choice(COUNTRIES),
        "tags": rng.sample(("new", "vip", "promo", "mobile", "web", "retry"), 2),
        "payload": "".join(rng.choices(string.ascii_letters + string.digits, k=60)),
    }


def stateless_json(seed: int, count: int) -> Iterator[tuple[bytes | None, bytes]]:
    rng = random.Random(seed)
    dumps = json.dumps
    for i in range(count):
        record = json_record(rng, i)
        yield str(record["user"]).encode(), dumps(record, separators=(",", ":")).encode()


def vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10))))
    return sorted(words)


def wordcount_lines(
    seed: int, lines: int, vocabulary_size: int = 5000, words_per_line: int = 10
) -> Iterator[tuple[bytes | None, bytes]]:
    """Lines of ``words_per_line`` words drawn Zipf-like (weight 1/rank) from a vocabulary.

    Every word matches the example's ``[^\\W_]+``, so each line yields exactly
    ``words_per_line`` outputs.
    """
    rng = random.Random(seed)
    vocab = vocabulary(rng, vocabulary_size)
    rng.shuffle(vocab)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    cumulative = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    for _ in range(lines):
        words = rng.choices(vocab, cum_weights=cumulative, k=words_per_line)
        # Some capitals and punctuation, so lower() and the regex have work to do.
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        yield None, (" ".join(words) + rng.choice((".", ",", "!", ""))).encode()


@dataclass
class MaterialiseExpectation:
    """What the table holds once every record is applied."""

    rows: int = 0
    seq_sum: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)


def materialise_rows(
    seed: int, count: int, keys: int, expect: MaterialiseExpectation
) -> Iterator[tuple[bytes | None, bytes]]:
    """Keyed JSON rows; the record key is the row's ``id`` so each key keeps its order.

    Fills ``expect`` as it goes (the last ``seq`` of each id wins).
    """
    rng = random.Random(seed)
    dumps = json.dumps
    last = expect.last_seq
    for seq in range(count):
        key = f"k{rng.randrange(keys):06d}"
        row = {
            "id": key,
            "seq": seq,
            "name": "".join(rng.choices(string.ascii_lowercase, k=12)),
            "amount": round(rng.uniform(0, 10_000), 2),
            "qty": rng.randrange(1, 100),
        }
        last[key] = seq
        yield key.encode(), dumps(row, separators=(",", ":")).encode()
    expect.rows = len(last)
    expect.seq_sum = sum(last.values())


#: The windowed case's window (Tumbling, one minute) and how many records each key gets
#: per window on average: event time advances by ``WINDOW_MS / (keys * PER_WINDOW)`` per
#: record, so windows close all through the run, not only at its end.
WINDOW_MS = 60_000
PER_WINDOW = 10
#: how far before the wall clock the windowed events start, aligned to a window: recent
#: enough that the broker's time retention (7 days by default) never deletes the results,
#: which carry their window's time, before they are counted
EPOCH_BEHIND_MS = 6 * 3_600_000


def window_epoch() -> int:
    """The first event time of a windowed run: six hours ago, aligned to a window."""
    start = int(time.time() * 1000) - EPOCH_BEHIND_MS
    return start - start % WINDOW_MS


@dataclass
class WindowExpectation:
    """Every final window result the input implies: ``(key, start) -> count``.

    ``records`` counts the timed records; the ``keys`` closing records after them are not
    in any expected window (their own windows stay open: nothing comes after them).
    """

    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0


def windowed_events(
    seed: int, count: int, keys: int, expect: WindowExpectation
) -> Iterator[tuple[bytes | None, bytes]]:
    """Keyed JSON events whose ``ts`` field (ms) never decreases, then one closing record per key.

    ``count`` events over ``keys`` keys drawn uniformly, event time advancing evenly, so a
    key gets about ``PER_WINDOW`` events in each one-minute window and each partition's event
    time never goes back (no record is late, whichever partition a key lands in). Then each
    key gets one record a window past the last event, which closes every window of the
    events under either closing rule: a partition's stream time (flows, raw) or the key's own
    latest timestamp (Quix Streams' default). Fills ``expect`` as it goes.
    """
    rng = random.Random(seed)
    dumps = json.dumps
    counts = expect.counts
    per_minute = keys * PER_WINDOW
    names = [f"k{i:04d}" for i in range(keys)]
    epoch = ts = window_epoch()
    for i in range(count):
        key = names[rng.randrange(keys)]
        ts = epoch + i * WINDOW_MS // per_minute
        start = ts - ts % WINDOW_MS
        counts[(key, start)] = counts.get((key, start), 0) + 1
        event = {"user": key, "ts": ts, "page": rng.randrange(500), "ms": rng.randrange(30_000)}
        yield key.encode(), dumps(event, separators=(",", ":")).encode()
    expect.records = count
    closing = ts + WINDOW_MS
    for key in names:
        event = {"user": key, "ts": closing, "page": 0, "ms": 0}
        yield key.encode(), dumps(event, separators=(",", ":")).encode()


def key_name(index: int) -> str:
    """The ``index``-th key of the counting cases (failover, keyspace): ``k0000042``."""
    return f"k{index:07d}"


def keyed_passes(
    seed: int, records: int, keys: int, value: bytes
) -> Iterator[tuple[bytes | None, bytes]]:
    """``records`` records over ``keys`` distinct keys, each carrying ``value``.

    The keys come in passes, each a fresh shuffle of the whole keyspace, so every key
    appears once before any appears twice: ``records >= keys`` touches every key, and after
    ``p`` whole passes each key's count is ``p``. A key's state is last touched about a
    keyspace ago, so a cache smaller than the keyspace misses.
    """
    rng = random.Random(seed)
    names = [key_name(i).encode() for i in range(keys)]
    left = records
    while left > 0:
        order = names[:]
        rng.shuffle(order)
        for key in order[:left]:
            yield key, value
        left -= min(left, keys)


def fresh_keys(seed: int, phase: int, count: int, keys: int) -> list[int]:
    """The keys of the failover case's fresh records of ``phase``: ``count`` distinct ones,
    drawn from the ``keys`` whose state was built (so each output is a count of 2 or more)."""
    return random.Random(f"{seed}-fresh-{phase}").sample(range(keys), min(count, keys))
