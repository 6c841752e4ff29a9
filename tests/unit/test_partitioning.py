"""murmur2 and key partitioning agree with Kafka's Java client.

The vectors are Kafka's own (``UtilsTest.testMurmur2``), given there as Java's signed
32-bit ints; ``murmur2`` here returns the same bits unsigned.
"""

from __future__ import annotations

import random

import pytest

from flows.partitioning import murmur2, partition_for

KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("data", "java"), KAFKA_VECTORS)
def test_murmur2_matches_kafka(data: bytes, java: int) -> None:
    assert murmur2(data) == java & 0xFFFFFFFF


def _java_int(n: int) -> int:
    n &= 0xFFFFFFFF
    return n - (1 << 32) if n & 0x80000000 else n


def _urshift(n: int, bits: int) -> int:
    """Java's ``>>>`` on an int."""
    return (n & 0xFFFFFFFF) >> bits


def _java_murmur2(data: bytes) -> int:
    """A line-by-line transliteration of Kafka's ``Utils.murmur2``, in signed Java ints."""
    length = len(data)
    seed = _java_int(0x9747B28C)
    m = 0x5BD1E995
    r = 24
    h = _java_int(seed ^ length)
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = _java_int(
            (data[i4 + 0] & 0xFF)
            + ((data[i4 + 1] & 0xFF) << 8)
            + ((data[i4 + 2] & 0xFF) << 16)
            + ((data[i4 + 3] & 0xFF) << 24)
        )
        k = _java_int(k * m)
        k = _java_int(k ^ _urshift(k, r))
        k = _java_int(k * m)
        h = _java_int(h * m)
        h = _java_int(h ^ k)
    tail = length & ~3
    rest = length % 4
    # Java's switch falls through from case 3 to case 1.
    if rest >= 3:
        h = _java_int(h ^ ((data[tail + 2] & 0xFF) << 16))
    if rest >= 2:
        h = _java_int(h ^ ((data[tail + 1] & 0xFF) << 8))
    if rest >= 1:
        h = _java_int(h ^ (data[tail] & 0xFF))
        h = _java_int(h * m)
    h = _java_int(h ^ _urshift(h, 13))
    h = _java_int(h * m)
    h = _java_int(h ^ _urshift(h, 15))
    return h


@pytest.mark.parametrize(("data", "java"), KAFKA_VECTORS)
def test_the_reference_transliteration_matches_kafka(data: bytes, java: int) -> None:
    assert _java_murmur2(data) == java


def test_murmur2_matches_the_reference_for_every_tail_length() -> None:
    # Kafka's vectors have no length % 4 == 1; the reference covers all four tail branches.
    rng = random.Random(20240611)
    for length in range(70):
        for _ in range(20):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) == _java_murmur2(data) & 0xFFFFFFFF, data


@pytest.mark.parametrize("data", [b"", b"x", b"\xff" * 7, bytes(range(256))])
def test_murmur2_is_unsigned_32_bit(data: bytes) -> None:
    assert 0 <= murmur2(data) <= 0xFFFFFFFF


def test_murmur2_of_empty_input() -> None:
    # Only the seed mixed with length 0 goes through the final avalanche.
    seed, m = 0x9747B28C, 0x5BD1E995
    h = seed
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    assert murmur2(b"") == h


@pytest.mark.parametrize(("data", "java"), KAFKA_VECTORS)
@pytest.mark.parametrize("partitions", [1, 3, 4, 12, 100])
def test_partition_for_is_java_to_positive_mod(data: bytes, java: int, partitions: int) -> None:
    # Java: Utils.toPositive(Utils.murmur2(key)) % numPartitions, toPositive = n & 0x7fffffff
    assert partition_for(data, partitions) == (java & 0x7FFFFFFF) % partitions


def test_partition_for_uses_the_sign_bit_cleared_hash() -> None:
    # -973932308 is negative in Java: a plain unsigned modulo would pick another partition.
    data, java = b"21", -973932308
    assert partition_for(data, 7) == (java & 0x7FFFFFFF) % 7
    assert (java & 0xFFFFFFFF) % 7 != (java & 0x7FFFFFFF) % 7


def test_partition_for_is_in_range() -> None:
    for i in range(1000):
        assert 0 <= partition_for(str(i).encode(), 6) < 6
