"""``runtimes/postgres/rotation.py`` against PostgreSQL: the values of a window-shaped table
(a timed flow's states and timers) rotated to a new key; plaintext states stored before a
flow encrypted, migrated to BYTEA and encrypted; a worker's write between the read and the
write of a page is never overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flows import JSON, STR, App, Record, StateDecryptionError, StatefulMap, StateKeys, Topic
from flows.encryption import key_id_of
from flows.ports import StateColumns, StateCommit, WindowRow
from flows.steps import StatefulStep
from flows.steps.timed_state import STATE_SLOT, TimedStatefulStep, timer_slot
from flows.timers import Timer
from runtimes.postgres import PostgresStateStore
from runtimes.postgres.rotation import rotate_values

pytestmark = pytest.mark.integration

GROUP, TOPIC, TABLE = "g", "in", "enc_state"
source = Topic(TOPIC, key_format=STR, value_format=JSON, partitions=1)
sink = Topic("out", key_format=STR, value_format=JSON, partitions=1)
OLD, NEW = StateKeys.generate("old"), StateKeys.generate("new")
BOTH = StateKeys([*NEW, *OLD])


def keep(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
    return None, record.value


def step(keys: StateKeys | None, **options: Any) -> StatefulStep:
    flow = StatefulMap(
        name="f", source=source, sink=sink, fn=keep, table=TABLE, encrypt=True, **options
    )
    app = App("a", [flow])
    found = (app if keys is None else app.bind(state_keys=keys)).steps[0]
    assert isinstance(found, StatefulStep)
    return found


@pytest.fixture
def store(database_url: str, db_schema: str) -> Iterator[PostgresStateStore]:
    made = PostgresStateStore(database_url, schema=db_schema)
    made.watermark(GROUP, TOPIC, 0, 0)
    yield made
    made.close()


def _commit(store: PostgresStateStore, **kwargs: Any) -> None:
    read = store.watermark(GROUP, TOPIC, 0, 0)
    store.commit(StateCommit(GROUP, {(TOPIC, 0): (read, read + 1)}, **kwargs))


def test_a_timed_flow_s_states_and_timers_rotate_to_the_new_key(store: PostgresStateStore) -> None:
    old = step(OLD, ttl=timedelta(hours=1))
    assert isinstance(old, TimedStatefulStep)
    old.prepare(store)
    slot = timer_slot("remind")
    rows = []
    for number in range(5):
        key = f"user-{number}".encode()
        state = old.encode_state(key, {"card": f"secret-{number}"})
        timer = old.seal(b'{"name":"remind","data":7}', old.value_context(key, slot))
        rows.append(WindowRow(0, key, STATE_SLOT, 0, 0, 0, False, 10**12, state, wall=True))
        rows.append(WindowRow(0, key, slot, 5, 0, 0, True, 5, timer))
    _commit(store, window_table=TABLE, windows=rows)

    rotated = step(BOTH, ttl=timedelta(hours=1))
    done = rotate_values(store.engine, store.schema, TABLE, True, rotated.reseal, batch=3)
    assert (done.scanned, done.rewritten, done.current, done.changed) == (10, 10, 0, 0)
    again = rotate_values(store.engine, store.schema, TABLE, True, rotated.reseal, batch=3)
    assert (again.rewritten, again.current) == (0, 10)

    new = step(NEW, ttl=timedelta(hours=1))
    assert isinstance(new, TimedStatefulStep)
    found = store.windows(TABLE, b"user-3")
    assert {key_id_of(row.value) for row in found} == {"new"}
    working = new.load(0, None, 0, found)
    assert working.states == {b"user-3": {"card": "secret-3"}}
    assert working.timers[b"user-3"] == {"remind": Timer("remind", 5, "event", 7)}


def test_plaintext_states_of_a_flow_that_starts_to_encrypt_are_encrypted_by_rotation(
    store: PostgresStateStore, engine: sa.Engine, db_schema: str
) -> None:
    store.ensure_table(TABLE, StateColumns("text", "json"))
    _commit(
        store,
        table=TABLE,
        states={b"ann": b'{"card":"4111"}', b"bob": b'{"card":"5500"}'},
        versions={b"ann": (0, 7), b"bob": (0, 8)},
    )
    sealed = step(BOTH)
    sealed.prepare(store)  # the worker of the encrypting flow: JSONB becomes BYTEA
    with engine.connect() as conn:
        kind = conn.execute(
            sa.text(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_schema = :s AND table_name = :t AND column_name = 'value'"
            ),
            {"s": db_schema, "t": TABLE},
        ).scalar_one()
    assert kind == "bytea"
    stored = store.load(TABLE, [b"ann"])
    with pytest.raises(StateDecryptionError, match="names no key id"):
        sealed.decode_state(b"ann", stored[b"ann"])
    with pytest.raises(StateDecryptionError):  # without --plaintext, rotation refuses too
        rotate_values(store.engine, store.schema, TABLE, False, sealed.reseal)

    def plaintext(key: bytes, start: int, value: bytes) -> bytes | None:
        return sealed.reseal(key, start, value, plaintext=True)

    done = rotate_values(store.engine, store.schema, TABLE, False, plaintext)
    assert (done.rewritten, done.current) == (2, 0)
    for key, card in ((b"ann", "4111"), (b"bob", "5500")):
        value = store.load(TABLE, [key])[key]
        assert card.encode() not in value and key_id_of(value) == "new"
        assert step(NEW).decode_state(key, value) == {"card": card}
    versions = {s.key: s.version for s in store.states(TABLE, b"", None, 10)}
    assert versions == {b"ann": "0-7", b"bob": "0-8"}


def test_a_value_a_worker_changed_meanwhile_is_left_to_it(store: PostgresStateStore) -> None:
    old = step(OLD)
    old.prepare(store)
    _commit(store, table=TABLE, states={b"ann": old.encode_state(b"ann", 1)})
    new = step(BOTH)

    def racing(key: bytes, start: int, value: bytes) -> bytes | None:
        # a worker commits a new state between the rotation's read and its write
        _commit(store, table=TABLE, states={b"ann": new.encode_state(b"ann", 2)})
        return new.reseal(key, start, value)

    done = rotate_values(store.engine, store.schema, TABLE, False, racing)
    assert (done.rewritten, done.changed) == (0, 1)
    assert new.decode_state(b"ann", store.load(TABLE, [b"ann"])[b"ann"]) == 2
