"""Flows with ``encrypt=True`` through the test driver: the store holds ciphertext only (states,
timers, windows), the driver reads them decrypted, rotation, and what a value that does not
decrypt does (it stops the flow; nothing is dead-lettered)."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from flows import (
    JSON,
    STR,
    App,
    ConfigError,
    FlowFailedError,
    Join,
    Record,
    StateDecryptionError,
    StatefulMap,
    StateKeys,
    Timer,
    Topic,
    Tumbling,
    Window,
    WiringError,
    schedule_timer,
)
from flows.encryption import key_id_of
from flows.ports import BYTES_COLUMNS, StateColumns
from flows.steps import StatefulStep
from flows.testing import TestDriver
from flows.windows import Session

SECRET = "4111-1111-1111-1111"  # what must never reach the store in the clear

payments = Topic("payments", key_format=STR, value_format=JSON, partitions=2)
totals = Topic("totals", key_format=STR, value_format=JSON, partitions=2)


def total(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
    state = state or {"card": record.value["card"], "total": 0}
    state = {**state, "total": state["total"] + record.value["amount"]}
    return state["total"], state


def app(**options: Any) -> App:
    flow = StatefulMap(name="totals", source=payments, sink=totals, fn=total, **options)
    return App("pay", [flow])


def pay(driver: TestDriver, user: str, amount: int) -> None:
    driver.pipe("payments", {"card": SECRET, "amount": amount}, key=user)


def stored(driver: TestDriver, table: str = "pay_totals_state") -> dict[bytes, bytes]:
    return dict(driver.store.tables[table])


def test_states_are_stored_encrypted_and_read_decrypted() -> None:
    keys = StateKeys.generate("k1")
    driver = TestDriver(app(encrypt=True), state_keys=keys)
    for user, amount in (("ann", 5), ("bob", 7), ("ann", 10)):
        pay(driver, user, amount)
    assert sorted(r.value for r in driver.read("totals")) == [5, 7, 15]
    rows = stored(driver)
    assert set(rows) == {b"ann", b"bob"}  # keys stay readable: rows are found by them
    for value in rows.values():
        assert SECRET.encode() not in value and b"total" not in value
        assert key_id_of(value) == "k1"
    assert driver.state("totals", "ann") == {"card": SECRET, "total": 15}
    assert driver.states("totals") == {
        "ann": {"card": SECRET, "total": 15},
        "bob": {"card": SECRET, "total": 7},
    }


def test_an_encrypted_json_state_keeps_bytes_in_its_table() -> None:
    plain, sealed = app().steps[0], app(encrypt=True).steps[0]
    assert isinstance(plain, StatefulStep) and isinstance(sealed, StatefulStep)
    assert plain.columns == StateColumns("text", "json")
    assert sealed.columns == StateColumns("text", "bytes")


def test_the_keys_may_be_given_as_the_text_of_the_setting() -> None:
    driver = TestDriver(app(encrypt=True), state_keys=StateKeys.generate("k9").to_setting())
    pay(driver, "ann", 1)
    assert key_id_of(stored(driver)[b"ann"]) == "k9"


def test_without_keys_an_encrypted_flow_refuses_to_start_and_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match="flow 'totals' encrypts its state") as caught:
        TestDriver(app(encrypt=True))
    assert "FLOWS_STATE_KEYS" in str(caught.value) and "state_keys=" in str(caught.value)
    TestDriver(app(), state_keys=StateKeys.generate("k1"))  # keys for no encrypted flow: fine


def test_encrypt_must_be_a_bool() -> None:
    with pytest.raises(WiringError, match="flow 'totals', field 'encrypt'"):
        app(encrypt="yes")


def test_a_tampered_state_stops_the_flow_naming_flow_key_and_key_id() -> None:
    driver = TestDriver(app(encrypt=True), state_keys=StateKeys.generate("k1"))
    pay(driver, "ann", 5)
    table = driver.store.tables["pay_totals_state"]
    good = table[b"ann"]
    value = bytearray(good)
    value[-1] ^= 1
    table[b"ann"] = bytes(value)
    driver.crash()  # a new worker, which loads the state from the store, not its cache
    with pytest.raises(StateDecryptionError) as caught:
        pay(driver, "ann", 1)
    error = caught.value
    assert (error.flow, error.key, error.key_id) == ("totals", b"ann", "k1")
    assert "does not authenticate" in str(error) and "'pay_totals_state'" in str(error)
    assert driver.counts["dead_lettered"] == 0  # the state is not the record's fault
    assert driver.read("payments.dlq") == []
    # nothing was committed: with the state repaired, a restarted flow applies the record
    table[b"ann"] = good
    driver.crash()
    driver.run()
    assert driver.state("totals", "ann") == {"card": SECRET, "total": 6}


def test_a_state_copied_to_another_key_does_not_decrypt() -> None:
    driver = TestDriver(app(encrypt=True), state_keys=StateKeys.generate("k1"))
    pay(driver, "ann", 5)
    pay(driver, "bob", 1)
    table = driver.store.tables["pay_totals_state"]
    table[b"bob"] = table[b"ann"]
    with pytest.raises(StateDecryptionError, match="key b'bob'"):
        driver.state("totals", "bob")


def test_a_value_of_an_unknown_key_id_names_it() -> None:
    driver = TestDriver(app(encrypt=True), state_keys=StateKeys.generate("k1"))
    pay(driver, "ann", 5)
    other = TestDriver(app(encrypt=True), state_keys=StateKeys.generate("k2"))
    other.store.tables["pay_totals_state"] = stored(driver)
    with pytest.raises(StateDecryptionError, match="key id 'k1'") as caught:
        other.state("totals", "ann")
    assert caught.value.key_id == "k1" and "this process has k2" in str(caught.value)


def test_plaintext_stored_before_encryption_was_turned_on_is_refused() -> None:
    plain = TestDriver(app())
    pay(plain, "ann", 5)
    sealed = TestDriver(app(encrypt=True), state_keys=StateKeys.generate("k1"))
    sealed.store.tables["pay_totals_state"] = stored(plain)
    with pytest.raises(StateDecryptionError, match="names no key id") as caught:
        sealed.state("totals", "ann")
    assert "flows state rotate" in str(caught.value)


def test_rotation_old_values_read_and_changed_ones_rewritten_with_the_new_key() -> None:
    old = StateKeys.generate("k1")
    new = StateKeys([*StateKeys.generate("k2"), *old])
    first = app(encrypt=True).bind(state_keys=old).steps[0]
    assert isinstance(first, StatefulStep)
    written = first.encode_state(b"ann", {"total": 1})
    assert key_id_of(written) == "k1"
    rotated = app(encrypt=True).bind(state_keys=new).steps[0]
    assert isinstance(rotated, StatefulStep)
    assert rotated.decode_state(b"ann", written) == {"total": 1}
    assert key_id_of(rotated.encode_state(b"ann", {"total": 2})) == "k2"

    driver = TestDriver(app(encrypt=True), state_keys=old)
    pay(driver, "ann", 5)
    pay(driver, "bob", 1)
    # the stored states, read by a driver whose keys put k2 first
    restarted = TestDriver(app(encrypt=True), state_keys=new)
    restarted.store.tables["pay_totals_state"] = stored(driver)
    pay(restarted, "ann", 2)
    assert restarted.states("totals") == {
        "ann": {"card": SECRET, "total": 7},
        "bob": {"card": SECRET, "total": 1},
    }
    after = stored(restarted)
    assert (key_id_of(after[b"ann"]), key_id_of(after[b"bob"])) == ("k2", "k1")


def test_a_bound_app_is_bound_again_only_for_something_new() -> None:
    keys = StateKeys.generate("k1")
    declared = app(encrypt=True)
    bound = declared.bind(state_keys=keys)
    assert bound is not declared and declared.steps[0].cipher is None  # type: ignore[attr-defined]
    assert bound.bind(state_keys=keys) is bound and bound.bind() is bound
    assert app().bind(state_keys=keys).steps[0].cipher is None  # type: ignore[attr-defined]
    assert declared.encrypted_flows() == ("totals",) and app().encrypted_flows() == ()


# --- timed flows, joins and windows ------------------------------------------------------

MINUTE = 60_000


def remind(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
    schedule_timer("remind", after=timedelta(minutes=5), data={"card": record.value["card"]})
    return None, {"card": record.value["card"], "n": (state or {"n": 0})["n"] + 1}


def fire(key: str, state: Any, timer: Timer) -> tuple[Any, Any]:
    return {"user": key, "card": timer.data["card"], "n": state["n"]}, state


def test_a_timed_flow_encrypts_its_states_and_its_timers() -> None:
    flow = StatefulMap(
        name="remind",
        source=payments,
        sink=totals,
        fn=remind,
        on_timer=fire,
        timestamp=lambda r: r.value["ts"],
        ttl=timedelta(hours=1),
        encrypt=True,
    )
    driver = TestDriver(App("pay", [flow]), state_keys=StateKeys.generate("k1"))
    driver.pipe("payments", {"card": SECRET, "ts": 0}, key="ann", partition=0)
    rows = driver.store.window_tables["pay_remind_timed"].values()
    assert {row.start == 0 for row in rows} == {True, False}  # a state and a timer
    for row in rows:
        assert SECRET.encode() not in row.value and b"remind" not in row.value
        assert key_id_of(row.value) == "k1"
    assert driver.state("remind", "ann") == {"card": SECRET, "n": 1}
    assert [t.data for t in driver.timers("remind", "ann")] == [{"card": SECRET}]
    driver.pipe("payments", {"card": "other", "ts": 6 * MINUTE}, key="bob", partition=0)
    assert [r.value for r in driver.read("totals")] == [{"user": "ann", "card": SECRET, "n": 1}]


def test_a_join_encrypts_its_shared_state() -> None:
    cards = Topic("cards", key_format=STR, value_format=JSON)

    def join(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
        state = {**(state or {}), record.topic: record.value}
        return (state if len(state) == 2 else None), state

    flow = Join(
        name="join",
        sources={payments: lambda r: r.value["user"], cards: lambda r: r.value["user"]},
        sink=totals,
        fn=join,
        encrypt=True,
    )
    driver = TestDriver(App("pay", [flow]), state_keys=StateKeys.generate("k1"))
    driver.pipe("cards", {"user": "ann", "card": SECRET})
    driver.pipe("payments", {"user": "ann", "amount": 3})
    assert [r.value["cards"]["card"] for r in driver.read("totals")] == [SECRET]
    for value in stored(driver, "pay_join_state").values():
        assert SECRET.encode() not in value and key_id_of(value) == "k1"


@pytest.mark.parametrize(
    "kind", [Tumbling(timedelta(minutes=1)), Session(timedelta(minutes=1))], ids=repr
)
def test_a_window_flow_encrypts_its_aggregates(kind: Any) -> None:
    flow = Window(
        name="cards",
        source=payments,
        sink=totals,
        window=kind,
        initial=list,
        fn=lambda record, acc: [*acc, record.value["card"]],
        timestamp=lambda r: r.value["ts"],
        encrypt=True,
    )
    driver = TestDriver(App("pay", [flow]), state_keys=StateKeys.generate("k1"))
    driver.pipe("payments", {"card": SECRET, "ts": 0}, key="ann", partition=0)
    rows = list(driver.store.window_tables["pay_cards_windows"].values())
    assert rows
    for row in rows:
        assert SECRET.encode() not in row.value and key_id_of(row.value) == "k1"
    assert [w["value"] for w in driver.windows("cards", "ann")] == [[SECRET]]
    driver.pipe("payments", {"card": "x", "ts": 10 * MINUTE}, key="bob", partition=0)
    assert [r.value["value"] for r in driver.read("totals")] == [[SECRET]]


def test_a_window_flow_without_keys_refuses_to_start() -> None:
    flow = Window(
        name="w",
        source=payments,
        sink=totals,
        window=Tumbling(timedelta(minutes=1)),
        fn=lambda record, acc: acc,
        encrypt=True,
    )
    with pytest.raises(ConfigError, match="flow 'w' encrypts its state"):
        TestDriver(App("pay", [flow]))


def test_bytes_columns_are_the_default_for_timed_flows() -> None:
    flow = StatefulMap(
        name="t", source=payments, sink=totals, fn=total, ttl=timedelta(1), encrypt=True
    )
    step = App("pay", [flow]).steps[0]
    assert isinstance(step, StatefulStep) and step.columns == BYTES_COLUMNS


def test_json_states_of_an_encrypted_flow_need_no_jsonb_check() -> None:
    # NaN is no standard JSON: a jsonb column would refuse it, a bytea one of ciphertext not
    flow = StatefulMap(
        name="nan",
        source=payments,
        sink=totals,
        fn=lambda record, state: (None, float("nan")),
        encrypt=True,
        state_format=JSON,
        key_format=STR,
    )
    driver = TestDriver(App("pay", [flow]), state_keys=StateKeys.generate("k1"))
    driver.pipe("payments", {"x": 1}, key="ann")
    assert math.isnan(driver.state("nan", "ann"))  # stored, encrypted, and read back


def test_rotation_needs_keys_and_a_flow_that_encrypts() -> None:
    sealed, plain = app(encrypt=True).steps[0], app().steps[0]
    assert isinstance(sealed, StatefulStep) and isinstance(plain, StatefulStep)
    with pytest.raises(ConfigError, match="no state keys were given"):
        sealed.reseal(b"ann", 0, b"x")
    with pytest.raises(ConfigError, match="does not encrypt"):
        plain.reseal(b"ann", 0, b"x")


def test_states_of_a_flow_that_stopped_encrypting_say_so() -> None:
    sealed = TestDriver(app(encrypt=True), state_keys=StateKeys.generate("k1"))
    pay(sealed, "ann", 5)
    plain = TestDriver(app())
    plain.store.tables["pay_totals_state"] = stored(sealed)
    with pytest.raises(FlowFailedError, match="looks encrypted \\(key id 'k1'\\)"):
        plain.state("totals", "ann")
