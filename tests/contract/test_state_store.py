"""The state store contract, run against the in-memory and the PostgreSQL store.

Every test in the first part takes the parametrized ``store`` fixture and runs once per
implementation (``memory`` needs nothing; ``postgres`` is marked ``integration`` and gets a
schema of its own). A gap in the fake is ``xfail(strict=True)`` on the ``memory`` param.
The last part tests what only PostgreSQL can show: committers racing in two processes'
worth of connections, and driver errors translated at the edge.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows.errors import (
    DatabaseUnavailableError,
    FencedError,
    StateError,
    TableMissingError,
    TransientError,
)
from flows.ports import PartitionTime, PendingBatch, StateCommit, StateStore, WindowRow
from flows.records import RawMessage
from flows.tables import TableShape, table_shape
from flows.testing import InMemoryStateStore
from flows.testing.faults import Faults, FaultyStore
from runtimes.postgres import PostgresStateStore, encode_outputs, psycopg_url, translate
from runtimes.postgres.migrations import migrate_bookkeeping, migrate_window_table

Store = InMemoryStateStore | PostgresStateStore

GROUP = "group-a"
TOPIC = "input"
TABLE = "counts"
WINDOWS = "counts_windows"


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh store of each implementation (PostgreSQL: in a new schema of this test)."""
    if request.param == "memory":
        yield InMemoryStateStore()
        return
    url: str = request.getfixturevalue("database_url")
    schema: str = request.getfixturevalue("db_schema")
    pg_store = PostgresStateStore(url, schema=schema)
    try:
        yield pg_store
    finally:
        pg_store.close()


def _xfail_on_memory(request: pytest.FixtureRequest, store: Store, reason: str) -> None:
    if isinstance(store, InMemoryStateStore):
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def test_both_implement_the_port(store: Store) -> None:
    port: StateStore = store  # mypy checks the protocol; this checks the fixture
    assert port is store


# --- watermarks ----------------------------------------------------------------------------


def test_watermark_is_inserted_once(store: Store) -> None:
    assert store.watermark(GROUP, TOPIC, 0, 5) == 5
    assert store.watermark(GROUP, TOPIC, 0, 9) == 5  # stored, not overwritten
    assert store.watermark(GROUP, TOPIC, 1, 9) == 9  # per partition
    assert store.watermark("group-b", TOPIC, 0, 2) == 2  # per group
    assert store.watermark(GROUP, "other", 0, 3) == 3  # per topic
    assert store.watermark(GROUP, TOPIC, 0, 0) == 5


# --- states --------------------------------------------------------------------------------


def test_commit_applies_states_deletes_and_watermarks(store: Store) -> None:
    store.ensure_table(TABLE)
    read = store.watermark(GROUP, TOPIC, 0, 0)
    store.commit(
        StateCommit(
            group=GROUP,
            watermarks={(TOPIC, 0): (read, 3)},
            table=TABLE,
            states={b"a": b"1", b"b": b"2", b"c": b"3"},
        )
    )
    assert store.load(TABLE, [b"a", b"b", b"c"]) == {b"a": b"1", b"b": b"2", b"c": b"3"}
    assert store.watermark(GROUP, TOPIC, 0, 0) == 3

    store.commit(
        StateCommit(
            group=GROUP,
            watermarks={(TOPIC, 0): (3, 7)},
            table=TABLE,
            states={b"a": None, b"b": b"22", b"d": b"4", b"never-stored": None},
        )
    )
    assert store.load(TABLE, [b"a", b"b", b"c", b"d"]) == {b"b": b"22", b"c": b"3", b"d": b"4"}
    assert store.get(TABLE, b"a") is None
    assert store.get(TABLE, b"b") == b"22"
    assert store.watermark(GROUP, TOPIC, 0, 0) == 7


def test_load_omits_absent_keys(store: Store) -> None:
    store.ensure_table(TABLE)
    store.watermark(GROUP, TOPIC, 0, 0)
    store.commit(
        StateCommit(group=GROUP, watermarks={(TOPIC, 0): (0, 1)}, table=TABLE, states={b"k": b"v"})
    )
    assert store.load(TABLE, [b"absent", b"k", b"also-absent"]) == {b"k": b"v"}
    assert store.load(TABLE, [b"absent"]) == {}
    assert store.load(TABLE, []) == {}
    assert store.get(TABLE, b"absent") is None
    loaded = store.load(TABLE, [b"k"])
    assert all(type(k) is bytes and type(v) is bytes for k, v in loaded.items())


def test_binary_keys_and_values_are_kept_exactly(store: Store) -> None:
    store.ensure_table(TABLE)
    store.watermark(GROUP, TOPIC, 0, 0)
    states = {b"\x00": b"", b"\xff\x00\xfe": bytes(range(256)), "ключ".encode(): b"\x00" * 9}
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 1)}, table=TABLE, states=states))
    assert store.load(TABLE, list(states)) == states
    # an empty key alone, and a comma, travel as they are
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (1, 2)}, table=TABLE, states={b"": b","}))
    assert store.load(TABLE, [b""]) == {b"": b","}
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (2, 3)}, table=TABLE, states={b"": None}))
    assert store.load(TABLE, [b""]) == {}


def test_commit_many_keys_and_partitions(store: Store) -> None:
    store.ensure_table(TABLE)
    for partition in range(4):
        store.watermark(GROUP, TOPIC, partition, 100)
    states: dict[bytes, bytes | None] = {f"key-{i}".encode(): str(i).encode() for i in range(2500)}
    store.commit(
        StateCommit(
            group=GROUP,
            watermarks={(TOPIC, p): (100, 200 + p) for p in range(4)},
            table=TABLE,
            states=states,
        )
    )
    assert store.load(TABLE, list(states)) == states
    assert [store.watermark(GROUP, TOPIC, p, 0) for p in range(4)] == [200, 201, 202, 203]


# --- fencing -------------------------------------------------------------------------------


def _outputs(tag: str, n: int = 2) -> tuple[RawMessage, ...]:
    return tuple(RawMessage("out", tag.encode(), f"{tag}-{i}".encode()) for i in range(n))


def test_stale_watermark_fences_and_changes_nothing(store: Store) -> None:
    shape = table_shape(WordStats)
    store.ensure_table(TABLE)
    store.ensure_rows_table(shape)
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    first_pending = [
        PendingBatch(TOPIC, 0, 0, 5, _outputs("p0")),
        PendingBatch(TOPIC, 1, 0, 4, _outputs("p1")),
    ]
    store.commit(
        StateCommit(
            group=GROUP,
            watermarks={(TOPIC, 0): (0, 5), (TOPIC, 1): (0, 4)},
            table=TABLE,
            states={b"a": b"1", b"b": b"2"},
            pending=first_pending,
            shape=shape,
            rows=[_stats("cat", 1)],
        )
    )
    before_rows = store.rows(shape.name)

    # Partition 0's read is right, partition 1's is stale: nothing at all may change.
    with pytest.raises(FencedError) as caught:
        store.commit(
            StateCommit(
                group=GROUP,
                watermarks={(TOPIC, 0): (5, 9), (TOPIC, 1): (3, 8)},
                table=TABLE,
                states={b"a": None, b"b": b"20", b"c": b"3"},
                pending=[PendingBatch(TOPIC, 0, 5, 9, _outputs("new"))],
                kafka_committed={(TOPIC, 0): 5, (TOPIC, 1): 4},
                shape=shape,
                rows=[_stats("cat", 99), _stats("dog", 1)],
            )
        )
    message = str(caught.value)
    assert repr(GROUP) in message
    assert f"{TOPIC}[1]" in message
    assert "expected 3" in message

    assert store.load(TABLE, [b"a", b"b", b"c"]) == {b"a": b"1", b"b": b"2"}
    assert store.watermark(GROUP, TOPIC, 0, -1) == 5
    assert store.watermark(GROUP, TOPIC, 1, -1) == 4
    assert store.rows(shape.name) == before_rows
    assert store.pending(GROUP, TOPIC, 0, 0) == [first_pending[0]]
    assert store.pending(GROUP, TOPIC, 1, 0) == [first_pending[1]]


def test_commit_without_a_stored_watermark_is_fenced(store: Store) -> None:
    store.ensure_table(TABLE)
    with pytest.raises(FencedError, match=r"input\[0\]"):
        store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 1)}, table=TABLE, states={b"a": b"1"}))
    assert store.load(TABLE, [b"a"]) == {}
    assert store.watermark(GROUP, TOPIC, 0, 42) == 42


def test_watermarks_of_another_group_do_not_count(store: Store) -> None:
    store.ensure_table(TABLE)
    store.watermark("group-b", TOPIC, 0, 0)
    with pytest.raises(FencedError):
        store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 1)}, table=TABLE, states={b"a": b"1"}))
    assert store.watermark("group-b", TOPIC, 0, 7) == 0


# --- pending outputs -----------------------------------------------------------------------


def test_pending_are_ordered_by_first_offset_and_filtered(store: Store) -> None:
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    batches = [
        PendingBatch(TOPIC, 0, 10, 12, _outputs("c")),
        PendingBatch(TOPIC, 0, 0, 5, _outputs("a")),
        PendingBatch(TOPIC, 1, 0, 3, _outputs("other-partition")),
    ]
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 12), (TOPIC, 1): (0, 3)}, pending=batches))
    store.watermark(GROUP, TOPIC, 0, 0)
    later = PendingBatch(TOPIC, 0, 5, 10, _outputs("b"))
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (12, 13)}, pending=[later]))

    assert store.pending(GROUP, TOPIC, 0, 0) == [batches[1], later, batches[0]]
    assert store.pending(GROUP, TOPIC, 0, 5) == [later, batches[0]]
    assert store.pending(GROUP, TOPIC, 0, 6) == [batches[0]]
    assert store.pending(GROUP, TOPIC, 0, 11) == []
    assert store.pending(GROUP, TOPIC, 1, 0) == [batches[2]]
    assert store.pending("group-b", TOPIC, 0, 0) == []
    assert store.pending(GROUP, "other", 0, 0) == []


def test_kafka_committed_forgets_exactly_the_committed_batches(store: Store) -> None:
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    p0 = [
        PendingBatch(TOPIC, 0, 0, 3, _outputs("a")),
        PendingBatch(TOPIC, 0, 3, 7, _outputs("b")),
        PendingBatch(TOPIC, 0, 7, 9, _outputs("c")),
    ]
    p1 = [PendingBatch(TOPIC, 1, 0, 4, _outputs("d"))]
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 9), (TOPIC, 1): (0, 4)}, pending=p0 + p1))

    # Kafka committed 7 on partition 0: [0,3) and [3,7) go (next_offset <= 7), [7,9) stays.
    new = PendingBatch(TOPIC, 0, 9, 11, _outputs("e"))
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (9, 11)}, pending=[new], kafka_committed={(TOPIC, 0): 7})
    )
    assert store.pending(GROUP, TOPIC, 0, 0) == [p0[2], new]
    assert store.pending(GROUP, TOPIC, 1, 0) == p1

    # One short of a batch's end keeps it.
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (11, 11)}, kafka_committed={(TOPIC, 0): 8}))
    assert store.pending(GROUP, TOPIC, 0, 0) == [p0[2], new]
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (11, 11)}, kafka_committed={(TOPIC, 0): 11, (TOPIC, 1): 4})
    )
    assert store.pending(GROUP, TOPIC, 0, 0) == []
    assert store.pending(GROUP, TOPIC, 1, 0) == []


def test_outputs_round_trip_exactly(store: Store) -> None:
    outputs = (
        RawMessage("out", None, None),
        RawMessage("out", b"", b""),
        RawMessage("out", b"k", None, timestamp=0),
        RawMessage("out", None, b"v", timestamp=1_700_000_000_123),
        RawMessage(
            "other-topic",
            b"\x00\xff",
            bytes(range(256)),
            headers=(("trace", b"1"), ("trace", b"2"), ("empty", b""), ("ü", b"\xff")),
            timestamp=None,
        ),
    )
    store.watermark(GROUP, TOPIC, 3, 0)
    batch = PendingBatch(TOPIC, 3, 0, 5, outputs)
    store.commit(StateCommit(GROUP, {(TOPIC, 3): (0, 5)}, pending=[batch]))
    (stored,) = store.pending(GROUP, TOPIC, 3, 0)
    assert stored == batch
    assert [m.timestamp for m in stored.outputs] == [None, None, 0, 1_700_000_000_123, None]
    assert stored.outputs[0].key is None and stored.outputs[0].value is None
    assert stored.outputs[1].key == b"" and stored.outputs[1].value == b""


def test_batches_without_outputs_are_not_stored(
    request: pytest.FixtureRequest, store: Store
) -> None:
    store.watermark(GROUP, TOPIC, 0, 0)
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (0, 3)}, pending=[PendingBatch(TOPIC, 0, 0, 3, ())])
    )
    assert store.pending(GROUP, TOPIC, 0, 0) == []


# --- materialised rows ---------------------------------------------------------------------


@dataclass
class WordStats:
    """A dataclass table with one column of every mapped type."""

    __tablename__ = "word_stats"

    word: str = field(metadata={"primary_key": True})
    count: int
    ratio: float
    seen: bool
    raw: bytes
    tags: dict[str, Any]
    first_seen: datetime
    note: str | None


def _stats(word: str, count: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "word": word,
        "count": count,
        "ratio": count / 3,
        "seen": count % 2 == 0,
        "raw": word.encode() + b"\x00\xff",
        "tags": {"count": count, "list": [1, "two", None], "nested": {"ok": True}},
        "first_seen": datetime(2024, 5, 17, 12, 30, 15, 123456, tzinfo=UTC)
        + timedelta(minutes=count),
        "note": None,
    }
    row.update(changes)
    return row


SCORES = sa.Table(
    "scores",
    sa.MetaData(),
    sa.Column("league", sa.Text, primary_key=True),
    sa.Column("player", sa.Text, primary_key=True),
    sa.Column("score", sa.BigInteger, nullable=False),
    sa.Column("note", sa.Text),
    sa.Index("scores_by_score", "score"),
)


def _score(league: str, player: str, score: int, note: str | None = None) -> dict[str, Any]:
    return {"league": league, "player": player, "score": score, "note": note}


ROW_TABLES: dict[str, tuple[TableShape, Callable[..., dict[str, Any]]]] = {
    "dataclass": (table_shape(WordStats), _stats),
    "sqlalchemy": (table_shape(SCORES), lambda k, n, **c: _score("east", k, n, **c)),
}


@pytest.mark.parametrize("kind", list(ROW_TABLES))
def test_materialise_inserts_then_updates_the_other_columns(store: Store, kind: str) -> None:
    shape, make = ROW_TABLES[kind]
    store.ensure_rows_table(shape)
    store.ensure_rows_table(shape)  # idempotent
    store.watermark(GROUP, TOPIC, 0, 0)
    first = [make("cat", 1), make("ant", 2, note="hi")]
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 2)}, shape=shape, rows=first))
    assert store.rows(shape.name) == [first[1], first[0]]  # primary key order

    # Update one row, add one, and collapse two rows of one key to the last.
    second = [make("cat", 10, note="updated"), make("bee", 3), make("bee", 4)]
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (2, 5)}, shape=shape, rows=second))
    assert store.rows(shape.name) == [first[1], second[2], second[0]]


def test_materialise_keeps_the_columns_a_row_leaves_out(store: Store) -> None:
    shape = table_shape(SCORES)
    store.ensure_rows_table(shape)
    store.watermark(GROUP, TOPIC, 0, 0)
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (0, 1)}, shape=shape, rows=[_score("e", "a", 1, "x")])
    )
    partial = {"league": "e", "player": "a", "score": 5}
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (1, 2)}, shape=shape, rows=[partial]))
    assert store.rows(shape.name) == [_score("e", "a", 5, "x")]


def test_materialise_aware_datetimes_compare_equal(store: Store) -> None:
    shape = table_shape(WordStats)
    store.ensure_rows_table(shape)
    store.watermark(GROUP, TOPIC, 0, 0)
    when = datetime(2024, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=9)))
    store.commit(
        StateCommit(
            GROUP, {(TOPIC, 0): (0, 1)}, shape=shape, rows=[_stats("w", 1, first_seen=when)]
        )
    )
    (row,) = store.rows(shape.name)
    assert row["first_seen"] == when


# --- queries and maintenance ---------------------------------------------------------------


def test_scan_pages_through_a_prefix_in_key_order(store: Store) -> None:
    store.ensure_table(TABLE)
    store.watermark(GROUP, TOPIC, 0, 0)
    keys = [b"a", b"ab", b"ab\x00", b"ab\xff", b"ab\xff\xff", b"abc", b"ac", b"b", b"\xff", b""]
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (0, 1)}, table=TABLE, states={k: b"v" + k for k in keys})
    )
    prefixed = [b"ab", b"ab\x00", b"abc", b"ab\xff", b"ab\xff\xff"]  # bytewise order
    assert [k for k, _ in store.scan(TABLE, b"ab", None, 100)] == prefixed
    assert store.scan(TABLE, b"ab", None, 2) == [(k, b"v" + k) for k in prefixed[:2]]
    assert [k for k, _ in store.scan(TABLE, b"ab", b"ab\x00", 2)] == prefixed[2:4]
    assert [k for k, _ in store.scan(TABLE, b"ab", b"ab\xff", 2)] == [b"ab\xff\xff"]
    assert store.scan(TABLE, b"ab", b"ab\xff\xff", 2) == []
    assert [k for k, _ in store.scan(TABLE, b"ab\xff", None, 10)] == [b"ab\xff", b"ab\xff\xff"]
    assert [k for k, _ in store.scan(TABLE, b"\xff", None, 10)] == [b"\xff"]
    assert [k for k, _ in store.scan(TABLE, b"", None, 100)] == sorted(keys)
    assert [k for k, _ in store.scan(TABLE, b"", b"b", 100)] == [b"\xff"]
    assert store.scan(TABLE, b"zzz", None, 10) == []
    assert store.scan(TABLE, b"", None, 0) == []


def test_drop_tables_and_forget_groups(store: Store) -> None:
    shape = table_shape(SCORES)
    store.ensure_table(TABLE)
    store.ensure_rows_table(shape)
    for group in (GROUP, "group-b"):
        store.watermark(group, TOPIC, 0, 0)
        store.commit(
            StateCommit(
                group,
                {(TOPIC, 0): (0, 2)},
                pending=[PendingBatch(TOPIC, 0, 0, 2, _outputs(group))],
            )
        )
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (2, 3)}, table=TABLE, states={b"a": b"1"}))
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (3, 4)}, shape=shape, rows=[_score("e", "a", 1)]))

    store.drop_tables([TABLE, shape.name, "never-created"])
    store.forget_groups([GROUP, "group-never-seen"])

    store.ensure_table(TABLE)
    store.ensure_rows_table(shape)
    assert store.load(TABLE, [b"a"]) == {}
    assert store.rows(shape.name) == []
    assert store.watermark(GROUP, TOPIC, 0, 100) == 100
    assert store.pending(GROUP, TOPIC, 0, 0) == []
    assert store.watermark("group-b", TOPIC, 0, 100) == 2
    assert store.pending("group-b", TOPIC, 0, 0) == [
        PendingBatch(TOPIC, 0, 0, 2, _outputs("group-b"))
    ]


def _reshaped(value_type: Any) -> TableShape:
    """A materialised table ``reshaped`` whose ``value`` column has ``value_type``."""
    return table_shape(
        sa.Table(
            "reshaped",
            sa.MetaData(),
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("value", value_type),
        )
    )


@pytest.mark.parametrize(
    ("old_type", "new_type", "value"),
    [
        (sa.BigInteger, sa.Text, "one"),  # the JSON upsert path
        (sa.Date, sa.Numeric, Decimal("1.5")),  # the unnest upsert path
        (pg.ARRAY(sa.Text), pg.ARRAY(sa.Integer), [1, 2]),  # the multi-row VALUES path
    ],
)
def test_a_dropped_table_recreated_with_another_shape_takes_the_new_shape(
    store: Store, old_type: Any, new_type: Any, value: Any
) -> None:
    """No statement built for the dropped table is used on its successor."""
    old, new = _reshaped(old_type), _reshaped(new_type)
    store.ensure_rows_table(old)
    store.watermark(GROUP, TOPIC, 0, 0)
    old_value = {sa.BigInteger: 1, sa.Date: date(2024, 1, 2)}.get(old_type, ["x"])
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (0, 1)}, shape=old, rows=[{"key": "k", "value": old_value}])
    )
    store.drop_tables(["reshaped"])
    store.ensure_rows_table(new)
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (1, 2)}, shape=new, rows=[{"key": "k", "value": value}])
    )
    assert store.rows("reshaped") == [{"key": "k", "value": value}]


def test_rows_of_an_unknown_table_raise_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        store.rows("no_such_table")


def test_ping_and_close(store: Store) -> None:
    store.ping()
    store.close()


# --- windowed steps: commit sequence and stream time ------------------------------------


def test_times_move_with_the_watermark_and_only_where_given(store: Store) -> None:
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    assert store.partition_time(GROUP, TOPIC, 0) == PartitionTime()
    store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, 0): (0, 5), (TOPIC, 1): (0, 2)},
            times={(TOPIC, 0): (0, PartitionTime(1, 1_000))},
        )
    )
    assert store.partition_time(GROUP, TOPIC, 0) == PartitionTime(1, 1_000)
    assert store.partition_time(GROUP, TOPIC, 1) == PartitionTime()  # not in times
    assert store.watermark(GROUP, TOPIC, 0, -1) == 5

    # A commit without times leaves them as they are, whatever their sequence.
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (5, 6)}))
    assert store.partition_time(GROUP, TOPIC, 0) == PartitionTime(1, 1_000)
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (6, 7)}, times={(TOPIC, 0): (1, PartitionTime(2))})
    )
    assert store.partition_time(GROUP, TOPIC, 0) == PartitionTime(2, None)
    assert store.partition_time("group-b", TOPIC, 0) == PartitionTime()  # per group


def _window(
    partition: int, key: bytes, start: int, due: int, value: bytes = b"v", *, wall: bool = False
) -> WindowRow:
    return WindowRow(
        partition, key, start, start + 10, start + 1, start + 9, True, due, value, wall=wall
    )


def test_a_stale_sequence_is_fenced_and_changes_nothing(store: Store) -> None:
    """The watermark read is right, the sequence read is not: a zombie's commit, refused."""
    store.ensure_table(TABLE)
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    kept = [_window(0, b"a", 0, 10), _window(0, b"b", 0, 10)]
    batch = PendingBatch(TOPIC, 0, 0, 4, _outputs("first"), seq=1)
    store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, 0): (0, 4)},
            table=TABLE,
            states={b"s": b"1"},
            pending=[batch],
            times={(TOPIC, 0): (0, PartitionTime(1, 500))},
            window_table=WINDOWS,
            windows=kept,
        )
    )
    with pytest.raises(FencedError) as caught:
        store.commit(
            StateCommit(
                GROUP,
                {(TOPIC, 0): (4, 9)},
                table=TABLE,
                states={b"s": None, b"t": b"2"},
                pending=[PendingBatch(TOPIC, 0, 4, 9, _outputs("zombie"), seq=1)],
                kafka_committed={(TOPIC, 0): 4},
                times={(TOPIC, 0): (0, PartitionTime(1, 900))},  # stale: the store has 1
                window_table=WINDOWS,
                windows=[_window(0, b"a", 0, 10, b"zombie"), _window(0, b"c", 0, 3)],
                windows_removed=[(0, b"b", 0)],
            )
        )
    assert "commit sequence" in str(caught.value)
    assert "expected 0" in str(caught.value)
    assert f"{TOPIC}[0]" in str(caught.value)
    assert store.watermark(GROUP, TOPIC, 0, -1) == 4
    assert store.partition_time(GROUP, TOPIC, 0) == PartitionTime(1, 500)
    assert store.load(TABLE, [b"s", b"t"]) == {b"s": b"1"}
    assert store.pending(GROUP, TOPIC, 0, 0) == [batch]
    assert store.load_windows(WINDOWS, 0, [b"a", b"b", b"c"], 100) == kept


def test_a_tick_moves_the_sequence_not_the_offset_and_a_stale_tick_is_fenced(
    store: Store,
) -> None:
    store.watermark(GROUP, TOPIC, 0, 7)
    tick = PendingBatch(TOPIC, 0, 7, 7, _outputs("closed"), seq=1)
    store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, 0): (7, 7)},
            pending=[tick],
            times={(TOPIC, 0): (0, PartitionTime(1, 50))},
        )
    )
    assert store.watermark(GROUP, TOPIC, 0, -1) == 7
    assert store.partition_time(GROUP, TOPIC, 0) == PartitionTime(1, 50)
    # A second worker's tick read the same (7, seq 0): the offset matches, the sequence not.
    with pytest.raises(FencedError, match="commit sequence"):
        store.commit(
            StateCommit(GROUP, {(TOPIC, 0): (7, 7)}, times={(TOPIC, 0): (0, PartitionTime(1, 60))})
        )
    assert store.partition_time(GROUP, TOPIC, 0) == PartitionTime(1, 50)
    assert store.pending(GROUP, TOPIC, 0, 0) == [tick]


def test_times_of_a_partition_without_a_watermark_in_the_commit_are_refused(
    store: Store,
) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    with pytest.raises(ValueError, match="no watermark"):
        store.commit(
            StateCommit(GROUP, {(TOPIC, 0): (0, 1)}, times={(TOPIC, 1): (0, PartitionTime(1))})
        )
    with pytest.raises(ValueError, match="window_table"):
        store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 1)}, windows=[_window(0, b"a", 0, 1)]))
    assert store.watermark(GROUP, TOPIC, 0, -1) == 0
    assert store.partition_time(GROUP, TOPIC, 1) == PartitionTime()


# --- windowed steps: pending rows with a sequence -----------------------------------------


def test_pending_rows_are_told_apart_by_seq_and_filtered_by_after_seq(store: Store) -> None:
    store.watermark(GROUP, TOPIC, 0, 0)
    before = PendingBatch(TOPIC, 0, 0, 5, _outputs("batch-1"), seq=1)
    tick = PendingBatch(TOPIC, 0, 5, 5, _outputs("tick-2"), seq=2)  # at the watermark
    after = PendingBatch(TOPIC, 0, 5, 8, _outputs("batch-3"), seq=3)  # same first_offset
    times = {(TOPIC, 0): (0, PartitionTime(1, 10))}
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 5)}, pending=[before], times=times))
    times = {(TOPIC, 0): (1, PartitionTime(2, 20))}
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (5, 5)}, pending=[tick], times=times))
    times = {(TOPIC, 0): (2, PartitionTime(3, 30))}
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (5, 8)}, pending=[after], times=times))

    assert store.pending(GROUP, TOPIC, 0, 0) == [before, tick, after]
    assert store.pending(GROUP, TOPIC, 0, 5) == [tick, after]
    assert store.pending(GROUP, TOPIC, 0, 5, after_seq=1) == [tick, after]
    assert store.pending(GROUP, TOPIC, 0, 5, after_seq=2) == [after]
    assert store.pending(GROUP, TOPIC, 0, 0, after_seq=2) == [after]
    assert store.pending(GROUP, TOPIC, 0, 0, after_seq=3) == []
    assert store.pending(GROUP, TOPIC, 0, 6) == []
    (stored,) = store.pending(GROUP, TOPIC, 0, 5, after_seq=2)
    assert stored.seq == 3 and stored.first_offset == 5 and stored.next_offset == 8

    # Forgetting stays by offset: Kafka committed 5 covers [0, 5) and the tick at 5.
    times = {(TOPIC, 0): (3, PartitionTime(4, 30))}
    store.commit(
        StateCommit(GROUP, {(TOPIC, 0): (8, 8)}, kafka_committed={(TOPIC, 0): 5}, times=times)
    )
    assert store.pending(GROUP, TOPIC, 0, 0) == [after]


def test_pending_rows_of_steps_without_seq_read_back_with_seq_zero(store: Store) -> None:
    store.watermark(GROUP, TOPIC, 0, 0)
    batch = PendingBatch(TOPIC, 0, 0, 3, _outputs("plain"))
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (0, 3)}, pending=[batch]))
    assert store.pending(GROUP, TOPIC, 0, 0) == [batch]
    assert store.pending(GROUP, TOPIC, 0, 0, after_seq=0) == []


# --- windowed steps: window rows ----------------------------------------------------------


def _commit_windows(
    store: Store,
    read: int,
    windows: list[WindowRow] = [],  # noqa: B006 (never mutated)
    removed: list[tuple[int, bytes, int]] = [],  # noqa: B006
    partitions: tuple[int, ...] = (0,),
) -> None:
    store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, p): (read, read + 1) for p in partitions},
            window_table=WINDOWS,
            windows=windows,
            windows_removed=removed,
        )
    )


def test_windows_are_upserted_deleted_and_loaded_by_key_and_by_due(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.ensure_window_table(WINDOWS)  # idempotent
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    a0, a10 = _window(0, b"a", 0, 100), _window(0, b"a", 10, 30)
    b0, ff = _window(0, b"b", 0, 20), _window(0, b"\xff", 5, 40)
    zero = _window(0, b"\x00", 0, 200)
    other = _window(1, b"a", 0, 1)  # another partition: never loaded for partition 0
    _commit_windows(store, 0, [a10, ff, b0, a0, zero, other], partitions=(0, 1))

    assert store.load_windows(WINDOWS, 0, [b"a"], None) == [a0, a10]  # (key, start) order
    assert store.load_windows(WINDOWS, 0, [b"a", b"\xff", b"\x00"], None) == [zero, a0, a10, ff]
    assert store.load_windows(WINDOWS, 0, [b"missing"], None) == []
    assert store.load_windows(WINDOWS, 0, [], None) == []
    assert store.load_windows(WINDOWS, 0, [], 19) == []
    assert store.load_windows(WINDOWS, 0, [], 20) == [b0]  # due <= due_by, inclusive
    assert store.load_windows(WINDOWS, 0, [], 40) == [a10, b0, ff]
    assert store.load_windows(WINDOWS, 0, [b"\x00"], 30) == [zero, a10, b0]  # key OR due
    assert store.load_windows(WINDOWS, 0, [b"b"], 30) == [a10, b0]  # each row once
    assert store.load_windows(WINDOWS, 1, [b"a"], None) == [other]
    assert store.next_due(WINDOWS, 0) == 20
    assert store.next_due(WINDOWS, 1) == 1
    assert store.next_due(WINDOWS, 2) is None

    # Update one row (every field), delete two (one never stored), the last of a row wins.
    closed = WindowRow(0, b"b", 0, 11, 2, 8, False, 500, b"final")
    _commit_windows(
        store,
        1,
        [_window(0, b"b", 0, 7, b"overwritten"), closed],
        [(0, b"a", 10), (0, b"\xff", 5), (0, b"never", 0)],
    )
    assert store.load_windows(WINDOWS, 0, [b"a", b"b", b"\xff"], None) == [a0, closed]
    assert store.next_due(WINDOWS, 0) == 100
    assert store.load_windows(WINDOWS, 1, [b"a"], None) == [other]  # untouched

    # Upserted then removed in one commit: removed. (``closed``, due 500 but not pending,
    # falls due silently: see below.)
    _commit_windows(store, 2, [_window(0, b"c", 0, 1)], [(0, b"c", 0)])
    assert store.load_windows(WINDOWS, 0, [b"c"], 1_000) == [zero, a0]
    assert store.load_windows(WINDOWS, 0, [b"b"], None) == [closed]


def test_windows_of_a_key_span_partitions(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    for partition in (0, 1, 2):
        store.watermark(GROUP, TOPIC, partition, 0)
    rows = [
        _window(2, b"k", 0, 1),
        _window(0, b"k", 20, 1),
        _window(0, b"k", 10, 1),
        _window(1, b"other", 0, 1),
        _window(1, b"k\x00", 0, 1),  # a longer key, not a prefix match
    ]
    _commit_windows(store, 0, rows, partitions=(0, 1, 2))
    assert store.windows(WINDOWS, b"k") == [rows[2], rows[1], rows[0]]
    assert store.windows(WINDOWS, b"nobody") == []
    loaded = store.windows(WINDOWS, b"k")[0]
    assert type(loaded.key) is bytes and type(loaded.value) is bytes
    assert type(loaded.pending) is bool


def test_window_values_round_trip_exactly(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    rows = [
        WindowRow(0, b"", -5, 0, -5, -1, False, -1, b""),
        WindowRow(0, bytes(range(256)), 2**62, 2**62 + 1, 2**62, 2**62, True, 2**63 - 1, b","),
    ]
    _commit_windows(store, 0, rows)
    assert store.load_windows(WINDOWS, 0, [b"", bytes(range(256))], None) == rows


def test_a_stale_watermark_writes_no_window(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    kept = _window(0, b"a", 0, 10)
    _commit_windows(store, 0, [kept], partitions=(0, 1))
    with pytest.raises(FencedError):
        store.commit(
            StateCommit(
                GROUP,
                {(TOPIC, 0): (1, 2), (TOPIC, 1): (0, 2)},  # partition 1 is stale
                window_table=WINDOWS,
                windows=[_window(0, b"a", 0, 10, b"new"), _window(0, b"b", 0, 10)],
                windows_removed=[(0, b"a", 0)],
            )
        )
    assert store.windows(WINDOWS, b"a") == [kept]
    assert store.windows(WINDOWS, b"b") == []
    assert store.watermark(GROUP, TOPIC, 0, -1) == 1


def test_drop_tables_drops_window_tables(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    _commit_windows(store, 0, [_window(0, b"a", 0, 10)])
    store.drop_tables([WINDOWS])
    store.ensure_window_table(WINDOWS)
    assert store.windows(WINDOWS, b"a") == []
    assert store.next_due(WINDOWS, 0) is None
    store.forget_groups([GROUP])
    assert store.partition_time(GROUP, TOPIC, 0) == PartitionTime()


# --- rows due by the wall clock -----------------------------------------------------------

# A wall-clock due (ms since the epoch) dwarfs any stream time of the tests, so a store that
# compared the two clocks would load every wall row with the stream-time ones, or none.
NOW = 1_700_000_000_000


def test_wall_rows_fall_due_by_the_wall_clock_and_stream_rows_by_stream_time(
    store: Store,
) -> None:
    store.ensure_window_table(WINDOWS)
    for partition in (0, 1):
        store.watermark(GROUP, TOPIC, partition, 0)
    s20, s100 = _window(0, b"s", 0, 20), _window(0, b"t", 0, 100)
    w15 = _window(0, b"w", 0, 15, wall=True)  # due earlier than s20, on the other clock
    w_now = _window(0, b"w", 10, NOW, wall=True)
    other = _window(1, b"w", 0, 1, wall=True)  # another partition: never loaded for 0
    _commit_windows(store, 0, [w_now, s100, other, w15, s20], partitions=(0, 1))

    # Stream time alone: the wall rows are not due, however small their due.
    assert store.load_windows(WINDOWS, 0, [], 20) == [s20]
    assert store.load_windows(WINDOWS, 0, [], 20, None) == [s20]
    assert store.load_windows(WINDOWS, 0, [], NOW) == [s20, s100]
    # The wall clock alone: the stream-time rows are not due, however small their due.
    assert store.load_windows(WINDOWS, 0, [], None, 14) == []
    assert store.load_windows(WINDOWS, 0, [], None, 15) == [w15]  # inclusive
    assert store.load_windows(WINDOWS, 0, [], None, NOW) == [w15, w_now]
    # Both, each with its own threshold; in (key, start) order, each row once.
    assert store.load_windows(WINDOWS, 0, [], 20, 15) == [s20, w15]
    assert store.load_windows(WINDOWS, 0, [], 100, NOW) == [s20, s100, w15, w_now]
    assert store.load_windows(WINDOWS, 0, [b"w", b"s"], 20, 15) == [s20, w15, w_now]
    # A key loads its rows of both clocks, due or not.
    assert store.load_windows(WINDOWS, 0, [b"w"], None) == [w15, w_now]
    assert store.load_windows(WINDOWS, 0, [b"t"], None, 15) == [s100, w15]
    assert store.load_windows(WINDOWS, 1, [], 1_000, None) == []
    assert store.load_windows(WINDOWS, 1, [], None, 1) == [other]

    assert store.next_due(WINDOWS, 0) == 20
    assert store.next_due(WINDOWS, 0, wall=False) == 20
    assert store.next_due(WINDOWS, 0, wall=True) == 15
    assert store.next_due(WINDOWS, 1) is None  # only a wall row
    assert store.next_due(WINDOWS, 1, wall=True) == 1
    assert store.next_due(WINDOWS, 2, wall=True) is None

    # A row that moves to the other clock (the upsert writes wall) is due by that one only.
    _commit_windows(store, 1, [_window(0, b"w", 0, 15)], [(0, b"t", 0)])
    assert store.load_windows(WINDOWS, 0, [], None, NOW) == [w_now]
    assert store.load_windows(WINDOWS, 0, [], 15) == [_window(0, b"w", 0, 15)]
    assert store.next_due(WINDOWS, 0) == 15
    assert store.next_due(WINDOWS, 0, wall=True) == NOW


def test_wall_round_trips(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    assert WindowRow(0, b"k", 0, 1, 0, 0, True, 1, b"v").wall is False  # the default
    rows = [_window(0, b"k", 0, NOW, wall=True), _window(0, b"k", 10, 5)]
    _commit_windows(store, 0, rows)
    assert store.windows(WINDOWS, b"k") == rows
    assert [r.wall for r in store.windows(WINDOWS, b"k")] == [True, False]
    assert store.load_windows(WINDOWS, 0, [b"k"], None) == rows
    assert all(type(r.wall) is bool for r in store.load_windows(WINDOWS, 0, [b"k"], None))
    # Updated in place: wall changes with the rest of the row.
    flipped = [dataclasses.replace(r, wall=not r.wall) for r in rows]
    _commit_windows(store, 1, flipped)
    assert store.windows(WINDOWS, b"k") == flipped


# --- rows that are not pending: they fall due silently, and expire --------------------------


def _kept(
    partition: int, key: bytes, start: int, due: int, value: bytes = b"v", *, wall: bool = False
) -> WindowRow:
    """A row that is not pending (a TTL, a deduplication key, a closed window kept)."""
    return dataclasses.replace(_window(partition, key, start, due, value, wall=wall), pending=False)


def _expire(
    store: Store,
    read: int,
    expire: dict[int, tuple[int | None, int | None]],
    limit: int,
    windows: list[WindowRow] = [],  # noqa: B006 (never mutated)
    removed: list[tuple[int, bytes, int]] = [],  # noqa: B006
    partitions: tuple[int, ...] = (0,),
) -> None:
    store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, p): (read, read + 1) for p in partitions},
            window_table=WINDOWS,
            windows=windows,
            windows_removed=removed,
            expire=expire,
            expire_limit=limit,
        )
    )


def _left(store: Store, partition: int, rows: list[WindowRow]) -> list[WindowRow]:
    """Which of ``rows`` (of ``partition``) the store still has, loaded by key."""
    keys = sorted({r.key for r in rows})
    stored = store.load_windows(WINDOWS, partition, keys, None)
    return [r for r in rows if r in stored]


def test_rows_that_are_not_pending_are_loaded_by_key_never_for_being_due(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    s5, s50 = _kept(0, b"a", 0, 5), _window(0, b"b", 0, 50)  # due by stream time
    w5, w_now = _kept(0, b"c", 0, 5, wall=True), _window(0, b"d", 0, NOW, wall=True)
    alone = _kept(1, b"a", 0, 1)  # the only row of partition 1, and it is not pending
    _commit_windows(store, 0, [s5, s50, w5, w_now, alone], partitions=(0, 1))

    # The due part: pending rows only, though the others are due earlier on each clock.
    assert store.load_windows(WINDOWS, 0, [], 50) == [s50]
    assert store.load_windows(WINDOWS, 0, [], 10) == []
    assert store.load_windows(WINDOWS, 0, [], None, NOW) == [w_now]
    assert store.load_windows(WINDOWS, 0, [], None, 10) == []
    assert store.load_windows(WINDOWS, 0, [], NOW, NOW) == [s50, w_now]
    assert store.load_windows(WINDOWS, 1, [], NOW, NOW) == []
    # By key: every row of the key, pending or not, due or not.
    assert store.load_windows(WINDOWS, 0, [b"a", b"c"], None) == [s5, w5]
    assert store.load_windows(WINDOWS, 0, [b"a"], 50, NOW) == [s5, s50, w_now]
    assert store.load_windows(WINDOWS, 1, [b"a"], NOW, NOW) == [alone]

    # next_due: the smallest due of the pending rows of the clock.
    assert store.next_due(WINDOWS, 0) == 50
    assert store.next_due(WINDOWS, 0, wall=True) == NOW
    assert store.next_due(WINDOWS, 1) is None
    assert store.next_due(WINDOWS, 1, wall=True) is None

    # A row that stops being pending stops being due with it; one that starts, starts.
    _commit_windows(store, 1, [dataclasses.replace(s50, pending=False), _window(0, b"a", 0, 5)])
    assert store.load_windows(WINDOWS, 0, [], 50) == [_window(0, b"a", 0, 5)]
    assert store.next_due(WINDOWS, 0) == 5


def test_expire_deletes_due_rows_that_are_not_pending_up_to_the_limit_smallest_due_first(
    store: Store,
) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    # Keys run against dues, so that an order by key (or by insertion) deletes other rows.
    due = [_kept(0, f"k{9 - d}".encode(), d, d) for d in (4, 1, 6, 3, 2, 5)]
    by_due = sorted(due, key=lambda r: r.due)
    pending = _window(0, b"p", 0, 0)  # due first, but pending: the engine closes it
    later = _kept(0, b"l", 0, 11)  # not due yet
    everything = [*due, pending, later]
    _commit_windows(store, 0, everything)

    _expire(store, 1, {0: (10, None)}, limit=4)
    assert _left(store, 0, everything) == [r for r in everything if r not in by_due[:4]]
    _expire(store, 2, {0: (10, None)}, limit=4)  # the next batch takes the rest
    assert _left(store, 0, everything) == [pending, later]
    _expire(store, 3, {0: (10, None)}, limit=4)  # nothing else is due and not pending
    assert _left(store, 0, everything) == [pending, later]
    _expire(store, 4, {0: (11, None)}, limit=4)  # inclusive
    assert _left(store, 0, everything) == [pending]
    assert store.next_due(WINDOWS, 0) == 0


def test_expire_reads_each_clock_by_its_own_threshold(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    stream = [_kept(0, f"s{d}".encode(), 0, d) for d in (3, 1, 2)]
    wall = [_kept(0, f"w{d}".encode(), 0, NOW + d, wall=True) for d in (3, 1, 2)]
    # A wall row due 1 and a stream row due NOW: each is due only by its own clock.
    early_wall, late_stream = _kept(0, b"ew", 0, 1, wall=True), _kept(0, b"ls", 0, NOW)
    everything = [*stream, *wall, early_wall, late_stream]
    _commit_windows(store, 0, everything)

    _expire(store, 1, {0: (NOW - 1, None)}, limit=100)  # stream time only
    assert _left(store, 0, everything) == [*wall, early_wall, late_stream]
    _expire(store, 2, {0: (None, NOW + 2)}, limit=100)  # the wall clock only
    assert _left(store, 0, everything) == [wall[0], late_stream]
    _expire(store, 3, {0: (None, None)}, limit=100)  # neither: nothing
    assert _left(store, 0, everything) == [wall[0], late_stream]
    _expire(store, 4, {0: (NOW, NOW + 3)}, limit=100)  # both
    assert _left(store, 0, everything) == []


def test_expire_limits_both_clocks_together_each_smallest_due_first(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    stream = [_kept(0, f"s{9 - d}".encode(), 0, d) for d in range(1, 6)]
    wall = [_kept(0, f"w{9 - d}".encode(), 0, NOW + d, wall=True) for d in range(1, 6)]
    _commit_windows(store, 0, [*stream, *wall])

    _expire(store, 1, {0: (10, NOW + 10)}, limit=4)
    left_stream, left_wall = _left(store, 0, stream), _left(store, 0, wall)
    assert len(left_stream) + len(left_wall) == 6  # at most the limit, for the partition
    # Whatever the split between the clocks (they are never compared), each clock loses
    # its smallest dues first.
    assert left_stream == stream[len(stream) - len(left_stream) :]
    assert left_wall == wall[len(wall) - len(left_wall) :]


def test_expire_deletes_only_in_its_partitions_with_the_limit_for_each(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    rows = {p: [_kept(p, f"k{d}".encode(), 0, d) for d in (1, 2, 3)] for p in (0, 1, 2)}
    for partition in rows:
        store.watermark(GROUP, TOPIC, partition, 0)
    _commit_windows(store, 0, [r for p in rows for r in rows[p]], partitions=(0, 1, 2))

    _expire(store, 1, {1: (10, None)}, limit=2, partitions=(0, 1, 2))
    assert [_left(store, p, rows[p]) for p in rows] == [rows[0], rows[1][2:], rows[2]]
    _expire(store, 2, {0: (10, None), 2: (1, None)}, limit=2, partitions=(0, 1, 2))
    assert [_left(store, p, rows[p]) for p in rows] == [rows[0][2:], rows[1][2:], rows[2][1:]]
    _expire(store, 3, {0: (10, None), 1: (10, None)}, limit=0, partitions=(0, 1, 2))
    assert [_left(store, p, rows[p]) for p in rows] == [rows[0][2:], rows[1][2:], rows[2][1:]]


def test_expire_comes_after_the_rows_of_the_same_commit(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    closing, reopened = _window(0, b"a", 0, 5), _kept(0, b"b", 0, 5)
    _commit_windows(store, 0, [closing, reopened])
    # The batch closes one window (kept, not pending, due) and makes the other pending
    # again; expiry sees the rows as the batch left them.
    closed, pending = _kept(0, b"a", 0, 6), _window(0, b"b", 0, 6)
    new_kept = _kept(0, b"c", 0, 7)
    _expire(store, 1, {0: (10, None)}, limit=10, windows=[closed, pending, new_kept])
    assert _left(store, 0, [closed, pending, new_kept]) == [pending]


def test_a_stale_commit_expires_nothing(store: Store) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    store.watermark(GROUP, TOPIC, 1, 0)
    kept = [_kept(0, b"a", 0, 1), _kept(1, b"a", 0, 1), _kept(0, b"w", 0, 1, wall=True)]
    _commit_windows(store, 0, kept, partitions=(0, 1))
    with pytest.raises(FencedError):
        store.commit(
            StateCommit(
                GROUP,
                {(TOPIC, 0): (1, 2), (TOPIC, 1): (0, 2)},  # partition 1 is stale
                window_table=WINDOWS,
                expire={0: (10, 10), 1: (10, 10)},
                expire_limit=10,
            )
        )
    assert store.windows(WINDOWS, b"a") == kept[:2]
    assert store.windows(WINDOWS, b"w") == kept[2:]


def test_expiry_without_a_window_table_or_with_a_negative_limit_is_refused(
    store: Store,
) -> None:
    store.ensure_window_table(WINDOWS)
    store.watermark(GROUP, TOPIC, 0, 0)
    kept = _kept(0, b"a", 0, 1)
    _commit_windows(store, 0, [kept])
    with pytest.raises(ValueError, match="window_table"):
        store.commit(StateCommit(GROUP, {(TOPIC, 0): (1, 2)}, expire={0: (10, None)}))
    with pytest.raises(ValueError, match="expire_limit"):
        _expire(store, 1, {0: (10, None)}, limit=-1)
    assert store.watermark(GROUP, TOPIC, 0, -1) == 1
    assert store.windows(WINDOWS, b"a") == [kept]


def test_the_faulty_store_passes_due_rows_and_expiry_through() -> None:
    """``flows.testing.faults.FaultyStore`` (the driver's store) adds faults, nothing else."""
    inner = InMemoryStateStore()
    faulty = FaultyStore(inner, Faults())
    faulty.ensure_window_table(WINDOWS)
    faulty.watermark(GROUP, TOPIC, 0, 0)
    kept = [_kept(0, b"a", 0, 1), _kept(0, b"b", 0, 2), _kept(0, b"w", 0, 1, wall=True)]
    pending = _window(0, b"p", 0, 3)
    _commit_windows(inner, 0, [*kept, pending])
    assert faulty.load_windows(WINDOWS, 0, [], 10, 10) == [pending]
    assert faulty.next_due(WINDOWS, 0) == 3
    assert faulty.next_due(WINDOWS, 0, wall=True) is None
    faulty.commit(
        StateCommit(
            GROUP,
            {(TOPIC, 0): (1, 2)},
            window_table=WINDOWS,
            expire={0: (10, None)},
            expire_limit=1,
        )
    )
    assert _left(inner, 0, [*kept, pending]) == [kept[1], kept[2], pending]


# --- PostgreSQL only -----------------------------------------------------------------------


@pytest.fixture
def pg_factory(database_url: str, db_schema: str) -> Iterator[Callable[[], PostgresStateStore]]:
    """``make()`` opens another store on this test's schema; all are closed at the end."""
    made: list[PostgresStateStore] = []

    def make() -> PostgresStateStore:
        made.append(PostgresStateStore(database_url, schema=db_schema))
        return made[-1]

    yield make
    for pg_store in made:
        pg_store.close()


def _race(stores: list[PostgresStateStore], read: int) -> list[str | BaseException]:
    """Both stores commit ``read -> read + 1`` at once; "ok" or the error, per store."""
    barrier = threading.Barrier(len(stores))
    results: list[str | BaseException] = [""] * len(stores)

    def commit(i: int) -> None:
        barrier.wait()
        try:
            stores[i].commit(
                StateCommit(
                    GROUP,
                    {(TOPIC, 0): (read, read + 1)},
                    table=TABLE,
                    states={b"winner": str(i).encode()},
                    pending=[PendingBatch(TOPIC, 0, read, read + 1, _outputs(str(i), 1))],
                )
            )
            results[i] = "ok"
        except BaseException as error:
            results[i] = error

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.integration
def test_racing_committers_one_wins_one_is_fenced(
    pg_factory: Callable[[], PostgresStateStore],
) -> None:
    stores = [pg_factory(), pg_factory()]
    stores[0].ensure_table(TABLE)
    for _ in range(20):  # many rounds, so the two really overlap in some of them
        read = stores[0].watermark(GROUP, TOPIC, 0, 0)
        results = _race(stores, read)
        assert sorted(type(r).__name__ for r in results) == ["WatermarkMovedError", "str"], results
        winner = results.index("ok")
        assert stores[1].watermark(GROUP, TOPIC, 0, -1) == read + 1
        assert stores[1].get(TABLE, b"winner") == str(winner).encode()
        (batch,) = stores[1].pending(GROUP, TOPIC, 0, read)
        assert batch.outputs == _outputs(str(winner), 1)


@pytest.mark.integration
def test_a_committer_waiting_on_the_watermark_row_is_fenced_when_it_moves(
    pg_factory: Callable[[], PostgresStateStore],
) -> None:
    """READ COMMITTED suffices: a blocked ``UPDATE ... AND next_offset = :read`` re-checks
    its condition against the row the lock holder committed, and matches nothing."""
    zombie = pg_factory()
    zombie.ensure_table(TABLE)
    assert zombie.watermark(GROUP, TOPIC, 0, 0) == 0
    offsets = sa.Table(
        "flows_offsets", sa.MetaData(schema=zombie.schema), autoload_with=zombie.engine
    )
    outcome: list[BaseException | None] = []
    with zombie.engine.connect() as holder:
        holder.execute(
            sa.update(offsets).where(offsets.c.group_id == GROUP).values(next_offset=4)
        )  # the new owner's transaction, holding the row lock
        thread = threading.Thread(
            target=lambda: outcome.append(_try_commit(zombie, read=0, new=1)), daemon=True
        )
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive(), "the zombie's commit should wait for the row lock"
        holder.commit()
        thread.join(timeout=30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], FencedError), outcome
    assert "expected 0" in str(outcome[0])
    assert zombie.load(TABLE, [b"zombie"]) == {}
    assert zombie.watermark(GROUP, TOPIC, 0, -1) == 4


def _try_commit(pg_store: PostgresStateStore, read: int, new: int) -> BaseException | None:
    try:
        pg_store.commit(
            StateCommit(GROUP, {(TOPIC, 0): (read, new)}, table=TABLE, states={b"zombie": b"1"})
        )
    except BaseException as error:
        return error
    return None


@pytest.mark.integration
def test_one_statement_per_kind_of_change(pg_factory: Callable[[], PostgresStateStore]) -> None:
    pg_store = pg_factory()
    shape = table_shape(WordStats)
    pg_store.ensure_table(TABLE)
    pg_store.ensure_rows_table(shape)
    for partition in range(3):
        pg_store.watermark(GROUP, TOPIC, partition, 0)
    statements: list[str] = []

    @sa.event.listens_for(pg_store.engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    states: dict[bytes, bytes | None] = {f"k{i}".encode(): b"v" for i in range(1000)}
    states.update({f"gone{i}".encode(): None for i in range(1000)})
    pg_store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, p): (0, 10) for p in range(3)},
            table=TABLE,
            states=states,
            pending=[PendingBatch(TOPIC, p, 0, 10, _outputs("x", 50)) for p in range(3)],
            kafka_committed={(TOPIC, p): 0 for p in range(3)},
            shape=shape,
            rows=[_stats(f"w{i}", i) for i in range(1000)],
        )
    )
    sa.event.remove(pg_store.engine, "before_cursor_execute", count)
    kinds = [s.split()[0] + " " + s.split()[2] for s in statements]
    # watermarks (one executemany), states upsert and delete, rows, forget, pending
    assert len(statements) == 6, kinds
    assert len(pg_store.load(TABLE, list(states))) == 1000
    assert len(pg_store.rows(shape.name)) == 1000


@pytest.mark.integration
def test_reading_a_table_never_created_raises_table_missing(
    pg_factory: Callable[[], PostgresStateStore],
) -> None:
    pg_store = pg_factory()
    for read in (
        lambda: pg_store.get("never_created", b"k"),
        lambda: pg_store.scan("never_created", b"", None, 10),
        lambda: pg_store.load("never_created", [b"k"]),
    ):
        with pytest.raises(TableMissingError) as caught:
            read()
        assert "never_created" in str(caught.value)
        assert isinstance(caught.value.__cause__, sa.exc.ProgrammingError)


@pytest.mark.integration
def test_plain_postgresql_urls_are_accepted(database_url: str, db_schema: str) -> None:
    plain = "postgresql://" + database_url.split("://", 1)[1]
    pg_store = PostgresStateStore(plain, schema=db_schema)
    try:
        pg_store.ping()
        assert pg_store.engine.dialect.driver == "psycopg"
    finally:
        pg_store.close()


def test_psycopg_url() -> None:
    assert psycopg_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert psycopg_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert psycopg_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_an_unreachable_database_is_unavailable() -> None:
    pg_store = PostgresStateStore("postgresql://postgres:secret@127.0.0.1:1/flows")
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            pg_store.ping()
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
        assert "secret" not in str(caught.value)
        assert "secret" not in repr(pg_store)
    finally:
        pg_store.close()


@pytest.mark.parametrize(
    ("orig", "expected"),
    [
        (psycopg.errors.SerializationFailure("could not serialize"), TransientError),
        (psycopg.errors.DeadlockDetected("deadlock"), TransientError),
        (psycopg.OperationalError("server closed the connection"), DatabaseUnavailableError),
        (psycopg.errors.UniqueViolation("duplicate key"), StateError),
        (psycopg.errors.UndefinedTable('relation "counts" does not exist'), TableMissingError),
    ],
)
def test_driver_errors_are_translated(orig: Exception, expected: type[Exception]) -> None:
    wrapped: sa.exc.DBAPIError
    if isinstance(orig, psycopg.OperationalError):
        wrapped = sa.exc.OperationalError("SELECT 1", {}, orig)
    else:
        wrapped = sa.exc.IntegrityError("INSERT", {}, orig)
    error = translate(wrapped, "committing")
    assert type(error) is expected
    assert "committing" in str(error)


# --- PostgreSQL only: windowed steps -------------------------------------------------------

_OLD_SHAPE = """
CREATE TABLE {s}.flows_offsets (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL, PRIMARY KEY (group_id, topic, partition));
CREATE TABLE {s}.flows_pending (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    first_offset BIGINT NOT NULL, next_offset BIGINT NOT NULL, outputs BYTEA NOT NULL,
    PRIMARY KEY (group_id, topic, partition, first_offset));
INSERT INTO {s}.flows_offsets VALUES ('group-a', 'input', 0, 5);
INSERT INTO {s}.flows_pending VALUES ('group-a', 'input', 0, 2, 5, :outputs);
"""


@pytest.mark.integration
def test_old_bookkeeping_tables_are_migrated_on_first_use(
    engine: sa.Engine, db_schema: str, pg_factory: Callable[[], PostgresStateStore]
) -> None:
    quoted = engine.dialect.identifier_preparer.quote(db_schema)
    old = PendingBatch(TOPIC, 0, 2, 5, _outputs("old"))
    with engine.begin() as conn:
        for statement in _OLD_SHAPE.format(s=quoted).split(";"):
            if statement.strip():
                conn.execute(sa.text(statement), {"outputs": encode_outputs(old.outputs)})

    pg_store = pg_factory()
    assert pg_store.watermark(GROUP, TOPIC, 0, 0) == 5  # kept
    assert pg_store.partition_time(GROUP, TOPIC, 0) == PartitionTime()
    assert pg_store.pending(GROUP, TOPIC, 0, 0) == [old]  # seq 0
    tick = PendingBatch(TOPIC, 0, 5, 5, _outputs("tick"), seq=1)
    batch = PendingBatch(TOPIC, 0, 5, 6, _outputs("batch"), seq=2)
    pg_store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, 0): (5, 5)},
            pending=[tick],
            times={(TOPIC, 0): (0, PartitionTime(1, 9))},
        )
    )
    pg_store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, 0): (5, 6)},
            pending=[batch],
            times={(TOPIC, 0): (1, PartitionTime(2, 9))},
        )
    )
    assert pg_store.pending(GROUP, TOPIC, 0, 0) == [old, tick, batch]
    assert pg_store.partition_time(GROUP, TOPIC, 0) == PartitionTime(2, 9)

    # Idempotent: a second store (a second worker) finds nothing to do, and keeps the data.
    with engine.begin() as conn:
        assert migrate_bookkeeping(conn, db_schema) == []
    other = pg_factory()
    assert other.pending(GROUP, TOPIC, 0, 0) == [old, tick, batch]
    with engine.connect() as conn:
        key = conn.execute(
            sa.text(
                "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_constraint c"
                " CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)"
                " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
                " WHERE c.conrelid = :table ::regclass AND c.contype = 'p'"
            ),
            {"table": f"{quoted}.flows_pending"},
        ).scalar_one()
    assert key == ["group_id", "topic", "partition", "first_offset", "seq"]


@pytest.mark.integration
def test_a_windowed_commit_is_one_statement_per_kind_of_change(
    pg_factory: Callable[[], PostgresStateStore],
) -> None:
    pg_store = pg_factory()
    pg_store.ensure_window_table(WINDOWS)
    for partition in range(3):
        pg_store.watermark(GROUP, TOPIC, partition, 0)
    statements: list[str] = []

    @sa.event.listens_for(pg_store.engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    pg_store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, p): (0, 0 if p == 2 else 10) for p in range(3)},  # partition 2 ticks
            pending=[PendingBatch(TOPIC, p, 0, 10, _outputs("x", 5), seq=1) for p in range(3)],
            kafka_committed={(TOPIC, p): 0 for p in range(3)},
            times={(TOPIC, p): (0, PartitionTime(1, 100)) for p in range(3)},
            window_table=WINDOWS,
            windows=[_window(i % 3, f"k{i}".encode(), i, i) for i in range(1000)],
            windows_removed=[(i % 3, f"gone{i}".encode(), 0) for i in range(1000)],
        )
    )
    sa.event.remove(pg_store.engine, "before_cursor_execute", count)
    kinds = [s.split()[0] + " " + s.split()[2] for s in statements]
    # watermarks (one executemany), windows upsert and delete, forget, pending
    assert len(statements) == 5, kinds
    assert len(pg_store.load_windows(WINDOWS, 0, [], 1_000)) == 334
    assert [pg_store.partition_time(GROUP, TOPIC, p).seq for p in range(3)] == [1, 1, 1]


@pytest.mark.integration
def test_load_windows_is_one_query(pg_factory: Callable[[], PostgresStateStore]) -> None:
    pg_store = pg_factory()
    pg_store.ensure_window_table(WINDOWS)
    pg_store.watermark(GROUP, TOPIC, 0, 0)
    _commit_windows(pg_store, 0, [_window(0, f"k{i}".encode(), 0, i) for i in range(100)])
    statements: list[str] = []

    @sa.event.listens_for(pg_store.engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    found = pg_store.load_windows(WINDOWS, 0, [f"k{i}".encode() for i in range(50, 60)], 9)
    sa.event.remove(pg_store.engine, "before_cursor_execute", count)
    assert len(found) == 20
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.integration
def test_each_clock_of_load_windows_and_next_due_can_use_the_due_index(
    engine: sa.Engine, db_schema: str, pg_factory: Callable[[], PostgresStateStore]
) -> None:
    """The statements the store sends plan as they should on a table of some size: the keys
    off the primary key, each clock's fell-due rows off a range of the due index (sequential
    scans priced out, so that a plan that cannot use the index shows as one)."""
    pg_store = pg_factory()
    pg_store.ensure_window_table(WINDOWS)
    pg_store.watermark(GROUP, TOPIC, 0, 0)
    rows = [
        _window(0, f"k{i}".encode(), 0, NOW + i if i % 2 == 0 else i, wall=i % 2 == 0)
        for i in range(5_000)
    ]
    _commit_windows(pg_store, 0, rows)
    with pg_store.engine.begin() as conn:
        conn.execute(
            sa.text(f"ANALYZE {engine.dialect.identifier_preparer.quote(db_schema)}.{WINDOWS}")
        )
    sent: list[tuple[str, Any]] = []

    @sa.event.listens_for(pg_store.engine, "before_cursor_execute")
    def capture(*args: Any) -> None:
        sent.append((args[2], args[3]))

    found = pg_store.load_windows(WINDOWS, 0, [b"k1"], 5, NOW + 4)
    assert [r.key for r in found] == [b"k0", b"k1", b"k2", b"k3", b"k4", b"k5"]
    assert pg_store.next_due(WINDOWS, 0, wall=True) == NOW
    assert pg_store.next_due(WINDOWS, 0) == 1
    sa.event.remove(pg_store.engine, "before_cursor_execute", capture)

    def explained(statement: str, params: Any) -> list[dict[str, Any]]:
        with pg_store.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            explain = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params)
            (plan,) = explain.scalar_one()  # a JSON array of one plan
        return list(_plan_nodes(plan["Plan"]))

    load, wall_due, stream_due = [explained(s, p) for s, p in sent]
    assert not [n for n in load if n["Node Type"] == "Seq Scan"], load
    on_due_index = sorted(
        n["Index Cond"] for n in load if n.get("Index Name") == f"{WINDOWS}_pending_due"
    )
    assert len(on_due_index) == 2, load
    assert "wall = false" in on_due_index[0] and "due <=" in on_due_index[0]
    assert "wall = true" in on_due_index[1] and "due <=" in on_due_index[1]
    for plan in (wall_due, stream_due):
        scans = [n for n in plan if "Index Name" in n]
        assert [n["Index Name"] for n in scans] == [f"{WINDOWS}_pending_due"], plan
        assert "wall =" in scans[0]["Index Cond"], plan


@pytest.mark.integration
def test_expiry_is_one_statement_for_every_partition(
    pg_factory: Callable[[], PostgresStateStore],
) -> None:
    pg_store = pg_factory()
    pg_store.ensure_window_table(WINDOWS)
    for partition in range(3):
        pg_store.watermark(GROUP, TOPIC, partition, 0)
    _commit_windows(
        pg_store,
        0,
        [_kept(p, f"k{i}".encode(), 0, i) for p in range(3) for i in range(10)],
        partitions=(0, 1, 2),
    )
    statements: list[str] = []

    @sa.event.listens_for(pg_store.engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    # Partition 2 has no threshold: nothing to send for it.
    _expire(pg_store, 1, {0: (4, None), 1: (None, 4), 2: (None, None)}, 3, partitions=(0, 1, 2))
    _expire(pg_store, 2, {0: (4, None)}, 0)  # a limit of 0: nothing to send
    sa.event.remove(pg_store.engine, "before_cursor_execute", count)
    kinds = [s.split()[0] for s in statements]
    # each commit: watermarks (one executemany); the first, expiry (one executemany)
    assert kinds == ["UPDATE", "DELETE", "UPDATE"], kinds
    keys = [f"k{i}".encode() for i in range(10)]
    assert [len(pg_store.load_windows(WINDOWS, p, keys, None)) for p in range(3)] == [7, 10, 10]


@pytest.mark.integration
def test_expiry_reads_a_bounded_range_of_the_due_index(
    engine: sa.Engine, db_schema: str, pg_factory: Callable[[], PostgresStateStore]
) -> None:
    """The expiry statement plans as a delete by primary key of the first rows of each
    clock's range of the due index, each range cut by a ``Limit``: it reads a bounded part
    of the table however many rows fell due."""
    pg_store = pg_factory()
    pg_store.ensure_window_table(WINDOWS)
    pg_store.watermark(GROUP, TOPIC, 0, 0)
    rows = [
        _kept(0, f"k{i}".encode(), 0, NOW + i if i % 2 == 0 else i, wall=i % 2 == 0)
        for i in range(5_000)
    ]
    _commit_windows(pg_store, 0, rows)
    with pg_store.engine.begin() as conn:
        conn.execute(
            sa.text(f"ANALYZE {engine.dialect.identifier_preparer.quote(db_schema)}.{WINDOWS}")
        )
    sent: list[tuple[str, Any]] = []

    @sa.event.listens_for(pg_store.engine, "before_cursor_execute")
    def capture(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("DELETE"):
            sent.append((args[2], args[3]))

    _expire(pg_store, 1, {0: (10_000, NOW + 10_000)}, 10)
    sa.event.remove(pg_store.engine, "before_cursor_execute", capture)
    assert len(pg_store.load_windows(WINDOWS, 0, [r.key for r in rows], None)) == 4_990
    ((statement, params),) = sent
    one = params if isinstance(params, dict) else params[0]  # executemany of one partition
    with pg_store.engine.begin() as conn:
        explain = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, one)
        (plan,) = explain.scalar_one()
    nodes = list(_plan_nodes(plan["Plan"]))
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    on_due_index = sorted(
        n["Index Cond"] for n in nodes if n.get("Index Name") == f"{WINDOWS}_silent_due"
    )
    assert len(on_due_index) == 2, nodes
    assert "wall = false" in on_due_index[0] and "due <=" in on_due_index[0]
    assert "wall = true" in on_due_index[1] and "due <=" in on_due_index[1]
    assert len([n for n in nodes if n["Node Type"] == "Limit"]) == 3, nodes


_OLD_WINDOW_TABLE = """
CREATE TABLE {s}.{t} (
    partition INTEGER NOT NULL, key BYTEA NOT NULL, start BIGINT NOT NULL,
    "end" BIGINT NOT NULL, first_ts BIGINT NOT NULL, last_ts BIGINT NOT NULL,
    pending BOOLEAN NOT NULL, due BIGINT NOT NULL, value BYTEA NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (partition, key, start));
CREATE INDEX {t}_due ON {s}.{t} (partition, due);
INSERT INTO {s}.{t} VALUES (0, 'old', 0, 10, 1, 9, true, 10, 'agg', now());
"""

_INDEX_COLUMNS = sa.text(
    "SELECT i.relname, array_agg(a.attname::text ORDER BY k.ord) FROM pg_index x"
    " JOIN pg_class i ON i.oid = x.indexrelid"
    " CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)"
    " JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum"
    " WHERE x.indrelid = :table ::regclass GROUP BY i.relname"
)


@pytest.mark.integration
def test_a_window_table_without_wall_is_migrated_on_first_use(
    engine: sa.Engine, db_schema: str, pg_factory: Callable[[], PostgresStateStore]
) -> None:
    quoted = engine.dialect.identifier_preparer.quote(db_schema)
    with engine.begin() as conn:
        for statement in _OLD_WINDOW_TABLE.format(s=quoted, t=WINDOWS).split(";"):
            if statement.strip():
                conn.execute(sa.text(statement))

    pg_store = pg_factory()
    pg_store.ensure_window_table(WINDOWS)
    old = WindowRow(0, b"old", 0, 10, 1, 9, True, 10, b"agg")  # kept, due by stream time
    assert pg_store.windows(WINDOWS, b"old") == [old]
    with engine.connect() as conn:
        wall = conn.execute(
            sa.text(
                "SELECT attnotnull, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a"
                " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                " WHERE a.attrelid = :table ::regclass AND a.attname = 'wall'"
            ),
            {"table": f"{quoted}.{WINDOWS}"},
        ).one()
        found = conn.execute(_INDEX_COLUMNS, {"table": f"{quoted}.{WINDOWS}"})
        indexes = {name: list(columns) for name, columns in found}
    assert tuple(wall) == (True, "false")
    assert indexes == {
        f"{WINDOWS}_pkey": ["partition", "key", "start"],
        f"{WINDOWS}_pending_due": ["partition", "wall", "due"],
        f"{WINDOWS}_silent_due": ["partition", "wall", "due"],
    }

    pg_store.watermark(GROUP, TOPIC, 0, 0)
    timer = _window(0, b"timer", 0, NOW, wall=True)
    _commit_windows(pg_store, 0, [timer])
    assert pg_store.load_windows(WINDOWS, 0, [], 10) == [old]
    assert pg_store.load_windows(WINDOWS, 0, [], None, NOW) == [timer]
    assert pg_store.next_due(WINDOWS, 0) == 10
    assert pg_store.next_due(WINDOWS, 0, wall=True) == NOW

    # Idempotent: nothing left to do, and a second store (a second worker) alters nothing.
    with engine.begin() as conn:
        assert migrate_window_table(conn, WINDOWS, db_schema) == []
    other = pg_factory()
    statements: list[str] = []

    @sa.event.listens_for(other.engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    other.ensure_window_table(WINDOWS)
    sa.event.remove(other.engine, "before_cursor_execute", count)
    assert not [s for s in statements if s.lstrip().upper().startswith(("ALTER", "DROP"))]
    assert other.windows(WINDOWS, b"timer") == [timer]
