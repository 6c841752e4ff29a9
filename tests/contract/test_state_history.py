"""The history contract (:mod:`flows.history`), run against the in-memory and the PostgreSQL
store: changes appended with the states, in one commit, numbered, paged, read after a
position, and trimmed by retention in bounded work."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from flows.errors import FencedError
from flows.history import HistoryCommit, HistoryEntry, HistoryPolicy, StateChange
from flows.ports import StateColumns, StateCommit
from flows.testing import InMemoryStateStore
from runtimes.postgres import PostgresStateStore

Store = InMemoryStateStore | PostgresStateStore

GROUP, TOPIC = "group-h", "input"
TABLE, HISTORY = "counts", "counts_history"
JSON_COLUMNS = StateColumns("text", "json")
NO_RETENTION = HistoryPolicy()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh store of each implementation, with the tables of a flow with history (JSON
    states, text keys)."""
    found: Store
    if request.param == "memory":
        found = InMemoryStateStore()
    else:
        url: str = request.getfixturevalue("database_url")
        found = PostgresStateStore(url, schema=request.getfixturevalue("db_schema"))
    try:
        found.ensure_table(TABLE, JSON_COLUMNS)
        found.ensure_history_table(HISTORY, JSON_COLUMNS)
        found.watermark(GROUP, TOPIC, 0, 0)
        found.watermark(GROUP, TOPIC, 1, 0)
        yield found
    finally:
        if isinstance(found, PostgresStateStore):
            found.close()


def _change(key: str, previous: int | None, value: int | None, offset: int) -> StateChange:
    def enc(n: int | None) -> bytes | None:
        return None if n is None else str(n).encode()

    return StateChange(key.encode(), enc(previous), enc(value), TOPIC, 0, offset, 1000 + offset)


def _commit(
    store: Store,
    changes: list[StateChange],
    policy: HistoryPolicy = NO_RETENTION,
    limit: int = 1000,
    partition: int = 0,
) -> None:
    """Commits ``changes`` (and the states they leave) as one batch of ``partition``."""
    read = store.watermark(GROUP, TOPIC, partition, 0)
    states = {c.key: c.value for c in changes}
    store.commit(
        StateCommit(
            group=GROUP,
            watermarks={(TOPIC, partition): (read, read + max(1, len(changes)))},
            table=TABLE,
            states=states,
            history=HistoryCommit(HISTORY, changes, policy, limit),
        )
    )


def _values(entries: list[HistoryEntry]) -> list[tuple[int | None, int | None]]:
    def dec(data: bytes | None) -> int | None:
        return None if data is None else int(data)

    return [(dec(e.change.previous), dec(e.change.value)) for e in entries]


def _age(store: Store, by: datetime.timedelta) -> None:
    """Makes every kept change look ``by`` older (behind the stores' backs: a test's way to
    let time pass)."""
    if isinstance(store, InMemoryStateStore):
        entries = store.histories.tables[HISTORY].entries
        for id_, e in entries.items():
            entries[id_] = HistoryEntry(e.id, e.seq, e.change, e.committed_at - by)
        return
    table = sa.table(HISTORY, sa.column("committed_at"), schema=store.schema)
    with store.engine.begin() as conn:
        conn.execute(sa.update(table).values(committed_at=table.c.committed_at - by))


def test_changes_are_kept_in_order_numbered_per_key(store: Store) -> None:
    _commit(store, [_change("a", None, 1, 0), _change("b", None, 1, 1), _change("a", 1, 2, 2)])
    _commit(store, [_change("a", 2, None, 3)])  # a deletion

    newest_first = store.history(HISTORY, b"a", None, 10)
    assert _values(newest_first) == [(2, None), (1, 2), (None, 1)]
    assert [e.seq for e in newest_first] == [3, 2, 1]
    assert [e.change.offset for e in newest_first] == [3, 2, 0]
    assert [e.change.timestamp for e in newest_first] == [1003, 1002, 1000]
    assert all(e.change.topic == TOPIC and e.change.partition == 0 for e in newest_first)
    ids = [e.id for e in newest_first]
    assert ids == sorted(ids, reverse=True)
    # one commit, one commit time; a later commit's is not earlier
    assert newest_first[1].committed_at == newest_first[2].committed_at
    assert newest_first[0].committed_at >= newest_first[1].committed_at
    assert _values(store.history(HISTORY, b"b", None, 10)) == [(None, 1)]
    assert store.history(HISTORY, b"nobody", None, 10) == []
    assert store.load(TABLE, [b"a", b"b"]) == {b"b": b"1"}


def test_pages_go_back_by_seq(store: Store) -> None:
    _commit(store, [_change("k", n - 1 if n > 1 else None, n, n) for n in range(1, 8)])
    first = store.history(HISTORY, b"k", None, 3)
    assert [e.seq for e in first] == [7, 6, 5]
    second = store.history(HISTORY, b"k", first[-1].seq, 3)
    assert [e.seq for e in second] == [4, 3, 2]
    last = store.history(HISTORY, b"k", second[-1].seq, 3)
    assert [e.seq for e in last] == [1]
    assert store.history(HISTORY, b"k", 1, 3) == []


def test_after_reads_what_was_committed_after_a_position(store: Store) -> None:
    _commit(store, [_change("apple", None, 1, 0), _change("banana", None, 1, 1)])
    mark = store.history_last_id(HISTORY)
    _commit(store, [_change("apple", 1, 2, 2), _change("avocado", None, 1, 3)])
    _commit(store, [_change("banana", 1, 2, 4)])

    later = store.history_after(HISTORY, mark, 100)
    assert [(e.change.key, e.change.offset) for e in later] == [
        (b"apple", 2),
        (b"avocado", 3),
        (b"banana", 4),
    ]
    assert [e.id for e in later] == sorted(e.id for e in later)
    assert [e.change.key for e in store.history_after(HISTORY, mark, 100, prefix=b"a")] == [
        b"apple",
        b"avocado",
    ]
    assert [e.change.offset for e in store.history_after(HISTORY, 0, 100, key=b"apple")] == [0, 2]
    assert len(store.history_after(HISTORY, mark, 2)) == 2
    bounded = store.history_after(HISTORY, mark, 100, up_to=later[1].id)
    assert [e.id for e in bounded] == [later[0].id, later[1].id]
    assert store.history_last_id(HISTORY) == later[-1].id


def test_a_refused_commit_leaves_no_history(store: Store) -> None:
    _commit(store, [_change("a", None, 1, 0)])
    with pytest.raises(FencedError):  # a zombie's batch: its watermark moved
        store.commit(
            StateCommit(
                group=GROUP,
                watermarks={(TOPIC, 0): (0, 5)},
                table=TABLE,
                states={b"a": b"9"},
                history=HistoryCommit(HISTORY, [_change("a", 1, 9, 0)]),
            )
        )
    assert _values(store.history(HISTORY, b"a", None, 10)) == [(None, 1)]


def test_keep_trims_the_changed_keys_beyond_their_newest(store: Store) -> None:
    keep = HistoryPolicy(keep=2)
    _commit(store, [_change("a", None, 1, 0), _change("b", None, 1, 1)], keep)
    _commit(store, [_change("a", n - 1, n, n) for n in range(2, 6)], keep)  # a: 5 changes
    assert _values(store.history(HISTORY, b"a", None, 10)) == [(4, 5), (3, 4)]
    assert [e.seq for e in store.history(HISTORY, b"a", None, 10)] == [5, 4]
    assert _values(store.history(HISTORY, b"b", None, 10)) == [(None, 1)]  # untouched


def test_keep_trims_at_most_limit_rows_a_commit(store: Store) -> None:
    _commit(store, [_change("a", n - 1 or None, n, n) for n in range(1, 11)])  # 10 kept
    trimmed = HistoryPolicy(keep=1)
    _commit(store, [_change("a", 10, 11, 11)], trimmed, limit=4)  # 11 rows, 4 go, oldest first
    assert [e.seq for e in store.history(HISTORY, b"a", None, 100)] == list(range(11, 4, -1))
    _commit(store, [_change("a", 11, 12, 12)], trimmed, limit=100)
    assert [e.seq for e in store.history(HISTORY, b"a", None, 100)] == [12]


def test_max_age_trims_old_changes_of_every_key_oldest_first(store: Store) -> None:
    day = datetime.timedelta(days=1)
    _commit(store, [_change("a", None, 1, 0), _change("b", None, 1, 1), _change("c", None, 1, 2)])
    _age(store, 2 * day)
    _commit(store, [_change("d", None, 1, 3)])
    week = HistoryPolicy(max_age_ms=7 * 86_400_000)
    _commit(store, [_change("d", 1, 2, 4)], week)  # nothing is a week old
    assert len(store.history_after(HISTORY, 0, 100)) == 5
    one_day = HistoryPolicy(max_age_ms=86_400_000)
    _commit(store, [], one_day, limit=2)  # a commit without changes trims too, two at most
    assert [e.change.key for e in store.history_after(HISTORY, 0, 100)] == [b"c", b"d", b"d"]
    _commit(store, [_change("e", None, 1, 5)], one_day)
    assert [e.change.key for e in store.history_after(HISTORY, 0, 100)] == [b"d", b"d", b"e"]


def test_seq_restarts_when_retention_removed_every_change_of_a_key(store: Store) -> None:
    _commit(store, [_change("a", None, 1, 0), _change("a", 1, 2, 1)])
    _age(store, datetime.timedelta(days=2))
    _commit(store, [_change("a", 2, 3, 2)], HistoryPolicy(max_age_ms=86_400_000))
    [only] = store.history(HISTORY, b"a", None, 10)
    assert (only.seq, _values([only])) == (1, [(2, 3)])


def test_bytes_values_and_keys_round_trip(store: Store) -> None:
    store.ensure_table("raw", StateColumns())
    store.ensure_history_table("raw_history", StateColumns())
    odd = StateChange(b"\x00\xff", b"", b"\x00v", TOPIC, 1, 7, None)
    read = store.watermark(GROUP, TOPIC, 1, 0)
    store.commit(
        StateCommit(
            group=GROUP,
            watermarks={(TOPIC, 1): (read, 8)},
            table="raw",
            states={b"\x00\xff": b"\x00v"},
            history=HistoryCommit("raw_history", [odd]),
        )
    )
    [entry] = store.history("raw_history", b"\x00\xff", None, 10)
    assert entry.change == odd  # an empty previous state is not an absent one


@pytest.mark.integration
def test_ids_grow_in_commit_order_across_concurrent_committers(
    database_url: str, db_schema: str
) -> None:
    """Two committers of one flow (two partitions, two connections) racing, and a reader
    that follows with ``id > last seen``: it must receive every change. Were ids handed out
    in insert order, a commit that drew smaller ids and committed later would be skipped."""
    stores = [PostgresStateStore(database_url, schema=db_schema) for _ in range(3)]
    try:
        for s in stores:
            s.ensure_table(TABLE, JSON_COLUMNS)
            s.ensure_history_table(HISTORY, JSON_COLUMNS)
        failures: list[BaseException] = []
        commits = 150

        def commit_many(store: PostgresStateStore, partition: int) -> None:
            try:
                key = f"p{partition}"
                for n in range(commits):
                    changes = [
                        StateChange(key.encode(), None, b"1", TOPIC, partition, 3 * n + i, 0)
                        for i in range(3)
                    ]
                    _commit(store, changes, partition=partition)
            except BaseException as error:
                failures.append(error)

        writers = [
            threading.Thread(target=commit_many, args=(s, p)) for p, s in enumerate(stores[:2])
        ]
        for thread in writers:
            thread.start()
        reader, seen = stores[2], 0
        received: list[int] = []
        while True:
            done = not any(t.is_alive() for t in writers)
            rows = reader.history_after(HISTORY, seen, 1000)
            received.extend(r.id for r in rows)
            seen = rows[-1].id if rows else seen
            if done and not rows:
                break
        for thread in writers:
            thread.join()
        assert not failures
        every = [e.id for e in reader.history_after(HISTORY, 0, 10_000)]
        assert len(every) == 2 * commits * 3
        missed = sorted(set(every) - set(received))
        assert not missed, f"{len(missed)} changes were committed below an id already read"
    finally:
        for s in stores:
            s.close()
