"""The state store contract for text keys, JSON values, versions and JSON search, run
against the in-memory and the PostgreSQL store (where keys become ``TEXT`` and values
``JSONB``, see ``runtimes/postgres/state_tables.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from flows.ports import StateColumns, StateCommit, StoredState
from flows.testing import InMemoryStateStore
from runtimes.postgres import PostgresStateStore

Store = InMemoryStateStore | PostgresStateStore

GROUP = "group-a"
TOPIC = "input"
TABLE = "docs"
JSON_COLUMNS = StateColumns("text", "json")


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


class Writer:
    """Commits states to one table, one batch after another, on partition 0."""

    def __init__(self, store: Store, columns: StateColumns = JSON_COLUMNS) -> None:
        self.store = store
        store.ensure_table(TABLE, columns)
        self.at = store.watermark(GROUP, TOPIC, 0, 0)

    def write(
        self,
        states: Mapping[bytes, bytes | None],
        versions: Mapping[bytes, tuple[int, int]] | None = None,
    ) -> None:
        new = self.at + max(len(states), 1)
        self.store.commit(
            StateCommit(
                GROUP,
                {(TOPIC, 0): (self.at, new)},
                table=TABLE,
                states=states,
                versions=versions or {},
            )
        )
        self.at = new


def _values(found: dict[bytes, bytes]) -> dict[bytes, Any]:
    return {key: json.loads(value) for key, value in found.items()}


def test_text_keys_and_json_values_round_trip(store: Store) -> None:
    writer = Writer(store)
    states = {
        b"the": b"3",
        "é".encode(): b'{"total":4,"words":["a","b"],"ok":true,"none":null}',
        "ключ/🙂".encode(): b'"a string with \\"quotes\\" and \\\\u0000 as text"',
        b"": b"[]",
        b'"json key"': b"1.5",
    }
    writer.write(states)
    loaded = store.load(TABLE, list(states))
    assert set(loaded) == set(states)  # keys byte for byte
    assert _values(loaded) == _values(states)  # values: the same JSON
    writer.write({b"the": b"4", "é".encode(): None})
    assert _values(store.load(TABLE, list(states))) == {
        **_values({k: v for k, v in states.items() if k != "é".encode()}),
        b"the": 4,
    }


def test_keys_text_cannot_hold_are_never_stored(store: Store) -> None:
    writer = Writer(store)
    writer.write({b"k": b"1"})
    assert store.load(TABLE, [b"\xff\xfe", b"a\x00b", b"k"]) == {b"k": b"1"}
    assert store.get(TABLE, b"\xff") is None
    assert store.state(TABLE, b"a\x00") is None


def test_text_keys_page_in_bytewise_order(store: Store) -> None:
    writer = Writer(store)
    keys = ["a", "ab", "Z", "é", "z", "éa", "ê", "ab\x7f", "🙂", "a b"]
    writer.write({k.encode(): b"1" for k in keys})
    expected = sorted(k.encode() for k in keys)
    assert [k for k, _ in store.scan(TABLE, b"", None, 100)] == expected
    assert [k for k, _ in store.scan(TABLE, b"", expected[3], 100)] == expected[4:]
    assert [k for k, _ in store.scan(TABLE, "é".encode(), None, 100)] == [
        "é".encode(),
        "éa".encode(),
    ]
    assert [k for k, _ in store.scan(TABLE, b"ab", None, 100)] == [b"ab", b"ab\x7f"]
    # bounds that are not UTF-8 text (a prefix or cursor cut inside a character)
    assert [k for k, _ in store.scan(TABLE, b"\xc3", None, 100)] == [
        "é".encode(),
        "éa".encode(),
        "ê".encode(),
    ]
    assert [k for k, _ in store.scan(TABLE, b"", b"\xc3", 100)] == [
        k for k in expected if k > b"\xc3"
    ]


def test_versions_name_the_record_that_last_changed_a_state(store: Store) -> None:
    writer = Writer(store)
    writer.write({b"a": b"1", b"b": b"1"}, {b"a": (0, 4), b"b": (0, 5)})
    assert store.state(TABLE, b"a") == StoredState(b"a", b"1", "0-4")
    writer.write({b"a": b"2"}, {b"a": (0, 9)})
    first, second = store.states(TABLE, b"", None, 10)
    assert (first.key, json.loads(first.value), first.version) == (b"a", 2, "0-9")
    assert second.version == "0-5"  # unchanged
    writer.write({b"a": None})
    assert store.state(TABLE, b"a") is None
    # a state stored without a version gets one that still changes with every write
    writer.write({b"c": b"1"})
    one = store.state(TABLE, b"c")
    writer.write({b"c": b"2"})
    two = store.state(TABLE, b"c")
    assert one is not None and two is not None
    assert one.version != two.version and "-" not in one.version


def test_bytes_tables_keep_versions_too(store: Store) -> None:
    writer = Writer(store, StateColumns())
    writer.write({b"\xff": b"\x00"}, {b"\xff": (3, 7)})
    assert store.state(TABLE, b"\xff") == StoredState(b"\xff", b"\x00", "3-7")


def test_where_keeps_the_states_whose_value_contains_it_and_pages(store: Store) -> None:
    writer = Writer(store)
    docs = {
        f"user{i:02}".encode(): json.dumps(
            {"plan": "pro" if i % 3 == 0 else "free", "total": i, "tags": ["x", f"t{i % 2}"]}
        ).encode()
        for i in range(20)
    }
    writer.write(docs)
    pro = sorted(k for k, v in docs.items() if json.loads(v)["plan"] == "pro")
    where = '{"plan":"pro"}'
    pages: list[bytes] = []
    after = None
    while True:
        page = store.states(TABLE, b"", after, 3, where)
        pages += [s.key for s in page]
        if len(page) < 3:
            break
        after = page[-1].key
    assert pages == pro
    assert [s.key for s in store.states(TABLE, b"user1", None, 100, where)] == [
        k for k in pro if k.startswith(b"user1")
    ]
    tagged = store.states(TABLE, b"", None, 100, '{"tags":["t1"],"plan":"free"}')
    assert [s.key for s in tagged] == sorted(
        k
        for k, v in docs.items()
        if json.loads(v)["plan"] == "free" and json.loads(v)["total"] % 2 == 1
    )
    assert store.states(TABLE, b"", None, 100, '{"plan":"gold"}') == []


# (value, template, whether value @> template), as PostgreSQL's jsonb says
CONTAINMENT = [
    ('{"a":1,"b":2}', '{"a":1}', True),
    ('{"a":1}', '{"a":1,"b":2}', False),
    ('{"a":{"b":1,"c":2}}', '{"a":{"b":1}}', True),
    ('{"a":{"b":1}}', '{"b":1}', False),
    ("[1,2,3]", "[3,1]", True),
    ("[1,2,3]", "[1,1]", True),
    ("[1,2,[3,4]]", "[[4]]", True),
    ("[1,2,[3,4]]", "[4]", False),
    ('["a","b"]', '"a"', True),
    ('{"a":[1,2]}', '{"a":1}', False),
    ('{"a":[1,2]}', '{"a":[1]}', True),
    ("1", "1", True),
    ("1", "1.0", True),
    ("1", "true", False),
    ("true", "true", True),
    ('"1"', "1", False),
    ("null", "null", True),
    ("1", "[1]", False),
    ('{"a":null}', '{"a":null}', True),
    ('{"a":false}', '{"a":0}', False),
    ('[{"a":1,"b":2},{"c":3}]', '[{"a":1}]', True),
    ('{"a":1}', "{}", True),
    ("[1]", "[]", True),
    ("{}", "[]", False),
]


def test_containment_follows_jsonb(store: Store) -> None:
    writer = Writer(store)
    writer.write({f"{i:02}".encode(): v.encode() for i, (v, _, _) in enumerate(CONTAINMENT)})
    wrong = []
    for i, (value, template, expected) in enumerate(CONTAINMENT):
        found = store.states(TABLE, f"{i:02}".encode(), None, 1, template)
        if bool(found) != expected:
            wrong.append((value, template, expected))
    assert not wrong


def test_where_on_a_table_without_json_values_is_a_value_error(store: Store) -> None:
    writer = Writer(store, StateColumns("text", "bytes"))
    writer.write({b"k": b"{}"})
    with pytest.raises(ValueError, match=TABLE):
        store.states(TABLE, b"", None, 10, "{}")
    assert [s.key for s in store.states(TABLE, b"", None, 10)] == [b"k"]
