"""State tables as PostgreSQL sees them: plain SQL on TEXT keys and JSONB values, and state
tables of the old shape (BYTEA keys and values) migrated when a worker ensures them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from flows.ports import BYTES_COLUMNS, StateColumns, StateCommit
from runtimes.postgres import PostgresStateStore

pytestmark = pytest.mark.integration

GROUP, TOPIC, TABLE = "g", "in", "word_state"
JSON_COLUMNS = StateColumns("text", "json")

# The DDL of a state table before keys became TEXT, values JSONB and rows versioned.
OLD_DDL = (
    "CREATE TABLE {t} (key BYTEA PRIMARY KEY, value BYTEA NOT NULL,"
    " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)


@pytest.fixture
def stores(database_url: str, db_schema: str) -> Iterator[Callable[[], PostgresStateStore]]:
    """``make()`` opens a store on this test's schema; all are closed at the end."""
    made: list[PostgresStateStore] = []

    def make() -> PostgresStateStore:
        made.append(PostgresStateStore(database_url, schema=db_schema))
        return made[-1]

    yield make
    for store in made:
        store.close()


def _sql(engine: sa.Engine, schema: str, statement: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        conn.execute(sa.text(f'SET LOCAL search_path TO "{schema}"'))
        result = conn.execute(sa.text(statement), params)
        return list(result.all()) if result.returns_rows else []


def _types(engine: sa.Engine, schema: str, table: str = TABLE) -> dict[str, str]:
    rows = _sql(
        engine,
        schema,
        "SELECT column_name, data_type, coalesce(collation_name, '')"
        " FROM information_schema.columns WHERE table_schema = :s AND table_name = :t",
        s=schema,
        t=table,
    )
    return {name: f"{type_} {collation}".strip() for name, type_, collation in rows}


def _commit(store: PostgresStateStore, read: int, new: int, **kwargs: Any) -> None:
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (read, new)}, table=TABLE, **kwargs))


def test_plain_sql_reads_text_keys_and_jsonb_values(
    stores: Callable[[], PostgresStateStore], engine: sa.Engine, db_schema: str
) -> None:
    store = stores()
    store.ensure_table(TABLE, JSON_COLUMNS)
    store.watermark(GROUP, TOPIC, 0, 0)
    _commit(
        store,
        0,
        3,
        states={
            b"the": b"3",
            b"alice": b'{"total":150,"plan":"pro"}',
            b"bob": b'{"total":20,"plan":"free"}',
        },
        versions={b"the": (0, 2), b"alice": (0, 1), b"bob": (0, 0)},
    )
    assert _types(engine, db_schema) == {
        "key": "text C",
        "value": "jsonb",
        "updated_at": "timestamp with time zone",
        "source_partition": "integer",
        "source_offset": "bigint",
    }
    assert _sql(engine, db_schema, f"SELECT value FROM {TABLE} WHERE key = 'the'") == [(3,)]
    big = _sql(
        engine,
        db_schema,
        f"SELECT key, value->>'total' FROM {TABLE} WHERE (value->>'total')::int > 100",
    )
    assert big == [("alice", "150")]
    assert _sql(
        engine, db_schema, f'SELECT key FROM {TABLE} WHERE value @> \'{{"plan":"free"}}\''
    ) == [("bob",)]
    assert _sql(
        engine, db_schema, f"SELECT source_partition, source_offset FROM {TABLE} WHERE key = 'the'"
    ) == [(0, 2)]


def test_bytes_and_protobuf_states_stay_bytea(
    stores: Callable[[], PostgresStateStore], engine: sa.Engine, db_schema: str
) -> None:
    stores().ensure_table(TABLE, BYTES_COLUMNS)
    types = _types(engine, db_schema)
    assert (types["key"], types["value"]) == ("bytea", "bytea")


def _old_table(engine: sa.Engine, schema: str, rows: dict[bytes, bytes]) -> None:
    _sql(engine, schema, OLD_DDL.format(t=TABLE))
    for key, value in rows.items():
        _sql(engine, schema, f"INSERT INTO {TABLE} (key, value) VALUES (:k, :v)", k=key, v=value)


def test_an_old_bytea_table_is_migrated_once_by_two_workers_starting_at_once(
    stores: Callable[[], PostgresStateStore], engine: sa.Engine, db_schema: str
) -> None:
    old = {b"the": b"41", "é".encode(): b'{"total":2,"words":["a"]}', b"x": b'"text"'}
    _old_table(engine, db_schema, old)
    workers = [stores(), stores()]
    altered: list[str] = []
    for worker in workers:

        @sa.event.listens_for(worker.engine, "before_cursor_execute")
        def seen(*args: Any) -> None:
            if args[2].startswith("ALTER TABLE"):
                altered.append(args[2])

    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def start(worker: PostgresStateStore) -> None:
        barrier.wait()
        try:
            worker.ensure_table(TABLE, JSON_COLUMNS)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(altered) == 2, altered  # the version columns, then both types, by one worker
    types = _types(engine, db_schema)
    assert (types["key"], types["value"], types["source_offset"]) == ("text C", "jsonb", "bigint")
    # the rows are there, in SQL and through either store
    assert _sql(engine, db_schema, f"SELECT value FROM {TABLE} WHERE key = 'the'") == [(41,)]
    assert _sql(engine, db_schema, f"SELECT value->'words'->>0 FROM {TABLE} WHERE key = 'é'") == [
        ("a",)
    ]
    loaded = workers[1].load(TABLE, list(old))
    assert set(loaded) == set(old)
    assert loaded[b"the"] == b"41" and loaded[b"x"] == b'"text"'
    before = workers[0].state(TABLE, b"the")
    assert before is not None and before.version.startswith("u")  # no version before
    workers[0].watermark(GROUP, TOPIC, 0, 0)
    _commit(workers[0], 0, 1, states={b"the": b"42"}, versions={b"the": (0, 0)})
    after = workers[1].state(TABLE, b"the")
    assert after is not None and (after.value, after.version) == (b"42", "0-0")


def test_a_table_whose_rows_do_not_convert_is_read_as_it_is_until_they_do(
    stores: Callable[[], PostgresStateStore],
    engine: sa.Engine,
    db_schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _old_table(engine, db_schema, {b"ok": b"1", b"bad": b'{"mean":NaN}'})
    store = stores()
    with caplog.at_level(logging.WARNING, logger="flows.postgres"):
        store.ensure_table(TABLE, JSON_COLUMNS)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "flows.postgres"]
    assert TABLE in warning and "value" in warning and "NaN" in warning
    types = _types(engine, db_schema)
    assert (types["key"], types["value"]) == ("text C", "bytea")  # the keys converted
    assert store.state_columns(TABLE) == StateColumns("text", "bytes")
    # read and written as it is
    assert store.load(TABLE, [b"ok", b"bad"]) == {b"ok": b"1", b"bad": b'{"mean":NaN}'}
    store.watermark(GROUP, TOPIC, 0, 0)
    _commit(store, 0, 1, states={b"ok": b"2"}, versions={b"ok": (0, 0)})
    assert store.get(TABLE, b"ok") == b"2"
    with pytest.raises(ValueError, match="not jsonb"):
        store.states(TABLE, b"", None, 10, '{"mean":1}')
    # once the row is fixed, the next start migrates the values
    _sql(engine, db_schema, f"UPDATE {TABLE} SET value = 'null'::bytea WHERE key = 'bad'")
    store.ensure_table(TABLE, JSON_COLUMNS)
    assert _types(engine, db_schema)["value"] == "jsonb"
    assert store.load(TABLE, [b"ok", b"bad"]) == {b"ok": b"2", b"bad": b"null"}


def test_a_query_store_follows_a_table_migrated_under_it(
    stores: Callable[[], PostgresStateStore], engine: sa.Engine, db_schema: str
) -> None:
    _old_table(engine, db_schema, {b"the": b"5"})
    reader, worker = stores(), stores()
    first = reader.state(TABLE, b"the")  # reads the old shape off the catalog
    assert first is not None and first.value == b"5"
    worker.ensure_table(TABLE, JSON_COLUMNS)
    again = reader.state(TABLE, b"the")
    assert again is not None and again.value == b"5"
    assert [s.key for s in reader.states(TABLE, b"", None, 10, "5")] == [b"the"]


def test_a_flow_whose_formats_became_bytes_gets_bytea_back(
    stores: Callable[[], PostgresStateStore], engine: sa.Engine, db_schema: str
) -> None:
    store = stores()
    store.ensure_table(TABLE, JSON_COLUMNS)
    store.watermark(GROUP, TOPIC, 0, 0)
    _commit(store, 0, 1, states={"é".encode(): b'{"a": 1}'})
    store.ensure_table(TABLE, BYTES_COLUMNS)
    types = _types(engine, db_schema)
    assert (types["key"], types["value"]) == ("bytea", "bytea")
    assert store.load(TABLE, ["é".encode()]) == {"é".encode(): b'{"a": 1}'}
