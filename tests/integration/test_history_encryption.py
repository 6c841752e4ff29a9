"""History of encrypted flows against PostgreSQL: its previous and new states are stored
as the states are (ciphertext), a plaintext JSONB history of a flow that starts to encrypt
is converted to BYTEA by its worker, and ``rotate_history`` moves every value to the first
key (``--plaintext``: encrypting the old ones)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from flows import JSON, STR, App, Record, StatefulMap, StateKeys, Topic
from flows.encryption import key_id_of
from flows.history import HistoryCommit, StateChange
from flows.ports import StateColumns, StateCommit
from flows.steps import StatefulStep
from runtimes.postgres import PostgresStateStore
from runtimes.postgres.rotation import rotate_history

pytestmark = pytest.mark.integration

GROUP, TOPIC, TABLE = "g", "in", "enc_state"
HISTORY = f"{TABLE}_history"
source = Topic(TOPIC, key_format=STR, value_format=JSON, partitions=1)
sink = Topic("out", key_format=STR, value_format=JSON, partitions=1)
OLD, NEW = StateKeys.generate("old"), StateKeys.generate("new")
BOTH = StateKeys([*NEW, *OLD])


def keep(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
    return None, record.value


def step(keys: StateKeys) -> StatefulStep:
    flow = StatefulMap(
        name="f", source=source, sink=sink, fn=keep, table=TABLE, encrypt=True, history=True
    )
    found = App("a", [flow]).bind(state_keys=keys).steps[0]
    assert isinstance(found, StatefulStep)
    return found


@pytest.fixture
def store(database_url: str, db_schema: str) -> Iterator[PostgresStateStore]:
    made = PostgresStateStore(database_url, schema=db_schema)
    made.watermark(GROUP, TOPIC, 0, 0)
    yield made
    made.close()


def _commit(store: PostgresStateStore, changes: list[StateChange]) -> None:
    read = store.watermark(GROUP, TOPIC, 0, 0)
    store.commit(
        StateCommit(
            GROUP,
            {(TOPIC, 0): (read, read + len(changes))},
            table=TABLE,
            states={c.key: c.value for c in changes},
            history=HistoryCommit(HISTORY, changes),
        )
    )


def _change(key: bytes, previous: bytes | None, value: bytes | None, offset: int) -> StateChange:
    return StateChange(key, previous, value, TOPIC, 0, offset, 0)


def _kind(engine: sa.Engine, schema: str, column: str) -> str:
    with engine.connect() as conn:
        found: str = conn.execute(
            sa.text(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_schema = :s AND table_name = :t AND column_name = :c"
            ),
            {"s": schema, "t": HISTORY, "c": column},
        ).scalar_one()
    return found


def test_a_plaintext_history_is_converted_then_encrypted_by_rotation(
    store: PostgresStateStore, engine: sa.Engine, db_schema: str
) -> None:
    # the flow before it encrypted: JSONB states and history
    store.ensure_table(TABLE, StateColumns("text", "json"))
    store.ensure_history_table(HISTORY, StateColumns("text", "json"))
    _commit(store, [_change(b"ann", None, b'{"card":"4111"}', 0)])
    assert _kind(engine, db_schema, "value") == "jsonb"

    old = step(OLD)
    old.prepare(store)  # the worker of the encrypting flow: JSONB becomes BYTEA, history too
    assert [_kind(engine, db_schema, c) for c in ("previous", "value")] == ["bytea", "bytea"]
    first = old.encode_state(b"ann", {"card": "5500"})
    _commit(store, [_change(b"ann", old.encode_state(b"ann", {"card": "4111"}), first, 1)])
    stored = store.history(HISTORY, b"ann", None, 10)
    assert b"5500" not in (stored[0].change.value or b"")  # what the worker writes: ciphertext

    def plaintext(key: bytes, start: int, value: bytes) -> bytes | None:
        return step(BOTH).reseal(key, start, value, plaintext=True)

    done = rotate_history(store.engine, store.schema, HISTORY, plaintext, batch=1)
    assert (done.scanned, done.rewritten, done.current) == (2, 3, 0)
    again = rotate_history(store.engine, store.schema, HISTORY, step(BOTH).reseal)
    assert (again.rewritten, again.current) == (0, 3)
    new = step(NEW)
    entries = store.history(HISTORY, b"ann", None, 10)
    seen = []
    for entry in reversed(entries):
        for data in (entry.change.previous, entry.change.value):
            if data is not None:
                assert key_id_of(data) == "new" and b"card" not in data
                seen.append(new.decode_state(b"ann", data))
    assert seen == [{"card": "4111"}, {"card": "4111"}, {"card": "5500"}]
