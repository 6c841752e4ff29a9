"""Every flow type, state, materialise and error policy through ``flows.testing.TestDriver``.

The driver runs the same compiled steps as the Kafka runtime, against the in-memory broker
and state store, so these tests pin down the semantics users rely on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from examples.wordcount.app import app as wordcount
from flows import (
    JSON,
    STR,
    App,
    Explode,
    Filter,
    FlowFailedError,
    Join,
    Map,
    Materialise,
    Merge,
    Message,
    Mirror,
    Record,
    Split,
    StatefulExplode,
    StatefulMap,
    StatefulSplit,
    Topic,
)
from flows.partitioning import partition_for
from flows.ports import StateCommit
from flows.records import RawRecord
from flows.steps import MaterialiseStep, StatefulStep
from flows.testing import TestDriver

IN = Topic("in", key_format=STR, value_format=STR)
OUT = Topic("out", key_format=STR, value_format=STR)
OUT2 = Topic("out2", key_format=STR, value_format=STR)

DLQ_HEADERS = (
    "flows.flow",
    "flows.error.type",
    "flows.error.message",
    "flows.source.topic",
    "flows.source.partition",
    "flows.source.offset",
    "flows.attempts",
)


def driver_of(*flows: Any, topics: tuple[Topic, ...] = (), batch_size: int = 500) -> TestDriver:
    return TestDriver(App("test", list(flows), topics=topics), batch_size=batch_size)


def values(driver: TestDriver, topic: str) -> list[Any]:
    return [record.value for record in driver.read(topic)]


def by_key(records: list[Record[Any, Any]]) -> dict[Any, list[Any]]:
    """Values per key, in offset order (a key lives in one partition)."""
    found: dict[Any, list[Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        found.setdefault(record.key, []).append(record.value)
    return found


# --- Map ---------------------------------------------------------------------------------


def test_map_transforms_the_value_and_keeps_key_headers_and_timestamp() -> None:
    driver = driver_of(Map(name="up", source=IN, sink=OUT, fn=lambda r: r.value.upper()))
    driver.pipe("in", "hello", key="k", headers=(("trace", b"1"), ("trace", b"2")), timestamp=1234)
    (out,) = driver.read("out")
    assert (out.key, out.value, out.headers, out.timestamp) == (
        "k",
        "HELLO",
        (("trace", b"1"), ("trace", b"2")),
        1234,
    )
    assert out.header("trace") == b"2"


def test_map_returning_none_filters_and_the_offset_still_advances() -> None:
    driver = driver_of(
        Map(name="m", source=IN, sink=OUT, fn=lambda r: None if r.value == "drop" else r.value)
    )
    for value in ["a", "drop", "b", "drop"]:
        driver.pipe("in", value, key="k")
    assert values(driver, "out") == ["a", "b"]
    assert driver.counts == {"filtered": 2, "dead_lettered": 0, "skipped": 0}
    driver.run()  # nothing left: the filtered records were consumed
    assert driver.read("out") == []


def test_map_message_re_keys_and_keeps_headers() -> None:
    driver = driver_of(
        Map(name="m", source=IN, sink=OUT, fn=lambda r: Message(r.value, key=r.value[0]))
    )
    driver.pipe("in", "xyz", key="old", headers=(("h", b"v"),))
    (out,) = driver.read("out")
    assert (out.key, out.value, out.headers) == ("x", "xyz", (("h", b"v"),))
    # re-keyed records land in the key's partition, as the Java client would place them
    assert out.partition == driver.read_all("out")[0].partition


def test_map_message_changes_headers_and_keeps_key() -> None:
    driver = driver_of(
        Map(
            name="m",
            source=IN,
            sink=OUT,
            fn=lambda r: Message(r.value, headers=(*r.headers, ("seen", b"yes"))),
        )
    )
    driver.pipe("in", "v", key="k", headers=(("h", b"1"),))
    (out,) = driver.read("out")
    assert (out.key, out.headers) == ("k", (("h", b"1"), ("seen", b"yes")))


def test_map_message_can_drop_headers_and_the_key() -> None:
    driver = driver_of(
        Map(name="m", source=IN, sink=OUT, fn=lambda r: Message(r.value, key=None, headers=()))
    )
    driver.pipe("in", "v", key="k", headers=(("h", b"1"),))
    (out,) = driver.read("out")
    assert (out.key, out.headers) == (None, ())


def test_map_between_formats() -> None:
    source = Topic("numbers", key_format=STR, value_format=JSON)
    driver = driver_of(Map(name="m", source=source, sink=OUT, fn=lambda r: str(r.value["n"] * 2)))
    driver.pipe("numbers", {"n": 21}, key="k")
    assert values(driver, "out") == ["42"]


# --- Filter ------------------------------------------------------------------------------


def test_filter_keeps_matching_records_unchanged() -> None:
    driver = driver_of(Filter(name="f", source=IN, sink=OUT, predicate=lambda r: "x" in r.value))
    driver.pipe("in", "axe", key="k1", headers=(("h", b"1"),), timestamp=99)
    driver.pipe("in", "nope", key="k2")
    driver.pipe("in", "x", key="k3")
    found = driver.read("out")
    assert sorted((r.key, r.value) for r in found) == [("k1", "axe"), ("k3", "x")]
    first = next(r for r in found if r.key == "k1")
    assert (first.headers, first.timestamp) == ((("h", b"1"),), 99)
    assert driver.counts["filtered"] == 1


# --- Split -------------------------------------------------------------------------------


def route(record: Record[str, str]) -> tuple[str | None, str | None]:
    kind, _, text = record.value.partition(":")
    return (
        text if kind in {"first", "both"} else None,
        text.upper() if kind in {"second", "both"} else None,
    )


def test_split_first_only_second_only_both_and_neither() -> None:
    driver = driver_of(Split(name="sp", source=IN, sinks=(OUT, OUT2), fn=route))
    for value in ["first:a", "second:b", "both:c", "neither:d"]:
        driver.pipe("in", value, key="k")
    assert values(driver, "out") == ["a", "c"]
    assert values(driver, "out2") == ["B", "C"]
    assert driver.counts["filtered"] == 1


def test_split_with_a_message_in_one_branch() -> None:
    driver = driver_of(
        Split(
            name="sp",
            source=IN,
            sinks=(OUT, OUT2),
            fn=lambda r: (r.value, Message(r.value, key="other")),
        )
    )
    driver.pipe("in", "v", key="k")
    assert [(r.key, r.value) for r in driver.read("out")] == [("k", "v")]
    assert [(r.key, r.value) for r in driver.read("out2")] == [("other", "v")]


# --- Explode -----------------------------------------------------------------------------


def test_explode_zero_one_and_many_outputs_in_order() -> None:
    def words(record: Record[str, str]) -> Iterator[str]:
        yield from record.value.split()

    driver = driver_of(Explode(name="ex", source=IN, sink=OUT, fn=words))
    driver.pipe("in", "", key="k")
    assert driver.read("out") == []
    assert driver.counts["filtered"] == 1
    driver.pipe("in", "one", key="k")
    driver.pipe("in", "a b c d e", key="k")
    assert values(driver, "out") == ["one", "a", "b", "c", "d", "e"]


def test_explode_drops_none_items_and_accepts_lists_and_messages() -> None:
    driver = driver_of(
        Explode(
            name="ex",
            source=IN,
            sink=OUT,
            fn=lambda r: [r.value, None, Message(r.value * 2, key=r.value)],
        )
    )
    driver.pipe("in", "x", key="k")
    assert sorted((r.key, r.value) for r in driver.read("out")) == [("k", "x"), ("x", "xx")]


def test_filter_passes_the_bytes_through() -> None:
    source = Topic("j-in", value_format=JSON)
    sink = Topic("j-out", value_format=JSON)
    driver = driver_of(Filter(name="f", source=source, sink=sink, predicate=lambda r: True))
    sent = driver.pipe_raw("j-in", b'{"a": 1.0, "b": 1e3}')
    (kept,) = driver.read_all("j-out")
    assert kept.value == sent.value


# --- Merge and Mirror --------------------------------------------------------------------


def test_merge_without_fn_copies_byte_for_byte() -> None:
    a = Topic("a", key_format=STR, value_format=STR)
    b = Topic("b", key_format=STR, value_format=STR)
    driver = driver_of(Merge(name="mg", sources=(a, b), sink=OUT))
    sent = [
        driver.pipe_raw("a", b"\xff not utf-8", b"k1", (("h", b"\x00"),), 111),
        driver.pipe_raw("b", b"plain", None, (), 222),
        driver.pipe_raw("a", None, b"tomb", (), 333),
    ]
    copied = driver.read_all("out")  # in production (timestamp) order

    def parts(r: RawRecord) -> tuple[Any, ...]:
        return r.key, r.value, r.headers, r.timestamp

    assert [parts(r) for r in copied] == [parts(r) for r in sent]
    assert driver.counts == {"filtered": 0, "dead_lettered": 0, "skipped": 0}


def test_merge_with_fn() -> None:
    a = Topic("a", key_format=STR, value_format=STR)
    b = Topic("b", key_format=STR, value_format=JSON)
    driver = driver_of(
        Merge(name="mg", sources=(a, b), sink=OUT, fn=lambda r: f"{r.topic}:{r.value}")
    )
    driver.pipe("a", "text", key="k")
    driver.pipe("b", {"n": 1}, key="k")
    assert values(driver, "out") == ["a:text", "b:{'n': 1}"]


def test_merge_without_fn_re_encodes_across_formats() -> None:
    a = Topic("a", key_format=STR, value_format=JSON)
    driver = driver_of(
        Merge(name="mg", sources=(a,), sink=Topic("o", key_format=STR, value_format=STR))
    )
    driver.pipe("a", "a string", key="k")
    assert values(driver, "o") == ["a string"]


def test_mirror_copies_keys_values_headers_and_timestamps() -> None:
    driver = driver_of(Mirror(name="mi", source=IN, sink=OUT))
    sent = driver.pipe_raw("in", b"\xc3 broken", b"\xff", (("h", b"1"),), 5)
    (copy,) = driver.read_all("out")
    assert (copy.key, copy.value, copy.headers, copy.timestamp) == (
        sent.key,
        sent.value,
        sent.headers,
        sent.timestamp,
    )


# --- stateful ----------------------------------------------------------------------------


def count(record: Record[str, str], state: int | None) -> tuple[str, int]:
    total = (state or 0) + 1
    return str(total), total


def test_stateful_map_applies_many_records_of_one_key_in_one_batch_in_order() -> None:
    driver = driver_of(StatefulMap(name="count", source=IN, sink=OUT, fn=count))
    commits: list[int] = []
    real_commit = driver.store.commit

    def counting_commit(commit: StateCommit) -> None:
        commits.append(len(commit.states))
        real_commit(commit)

    driver.store.commit = counting_commit  # type: ignore[method-assign]
    driver.pipe_many("in", [f"v{i}" for i in range(50)], key="k")
    assert commits == [1], "the 50 records must have been one batch"
    assert values(driver, "out") == [str(i) for i in range(1, 51)]
    assert driver.state("count", "k") == 50
    driver.pipe("in", "one more", key="k")
    assert values(driver, "out") == ["51"]


def test_stateful_fold_sees_its_own_writes_within_a_batch() -> None:
    app = App("direct", [StatefulMap(name="count", source=IN, sink=OUT, fn=count)])
    (step,) = app.steps
    assert isinstance(step, StatefulStep)
    records = [RawRecord("in", 0, i, b"k", f"v{i}".encode()) for i in range(10)]
    result = step.fold(records, {b"k": b"100"})
    assert [m.value for m in result.outputs] == [str(i).encode() for i in range(101, 111)]
    assert result.states == {b"k": b"110"}


def test_stateful_keys_are_independent() -> None:
    driver = driver_of(StatefulMap(name="count", source=IN, sink=OUT, fn=count))
    for key in ["a", "b", "a", "c", "a", "b"]:
        driver.pipe_raw("in", b"x", key.encode(), run=False)
    driver.run()
    assert by_key(driver.read("out")) == {"a": ["1", "2", "3"], "b": ["1", "2"], "c": ["1"]}
    assert driver.states("count") == {"a": 3, "b": 2, "c": 1}


def test_returning_none_as_new_state_deletes_the_row() -> None:
    def fn(record: Record[str, str], state: int | None) -> tuple[str, int | None]:
        if record.value == "reset":
            return f"reset after {state}", None
        total = (state or 0) + 1
        return str(total), total

    driver = driver_of(StatefulMap(name="count", source=IN, sink=OUT, fn=fn))
    driver.pipe_many("in", ["x", "x", "x"], key="k")
    assert driver.state("count", "k") == 3
    driver.pipe("in", "reset", key="k")
    assert driver.state("count", "k") is None
    assert driver.store.tables[driver.app.state_tables()["count"]] == {}
    # deleted and re-created in one batch: the state restarts from nothing
    driver.pipe_many("in", ["x", "reset", "x", "x"], key="k")
    assert values(driver, "out") == ["1", "2", "3", "reset after 3", "1", "reset after 1", "1", "2"]
    assert driver.state("count", "k") == 2


def test_stateful_filtered_output_still_updates_state() -> None:
    driver = driver_of(
        StatefulMap(
            name="s",
            source=IN,
            sink=OUT,
            fn=lambda r, s: (None if r.value == "quiet" else r.value, (s or 0) + 1),
        )
    )
    driver.pipe_many("in", ["quiet", "loud", "quiet"], key="k")
    assert values(driver, "out") == ["loud"]
    assert driver.state("s", "k") == 3
    assert driver.counts["filtered"] == 2


def test_stateful_split() -> None:
    def parity(record: Record[str, str], state: int | None) -> tuple[tuple[Any, Any], int]:
        total = (state or 0) + 1
        return ((str(total), None) if total % 2 else (None, str(total))), total

    driver = driver_of(StatefulSplit(name="ss", source=IN, sinks=(OUT, OUT2), fn=parity))
    driver.pipe_many("in", ["x"] * 5, key="k")
    assert values(driver, "out") == ["1", "3", "5"]
    assert values(driver, "out2") == ["2", "4"]
    assert driver.state("ss", "k") == 5


def test_stateful_explode() -> None:
    def history(record: Record[str, str], state: list[str] | None) -> tuple[list[str], Any]:
        seen = [*(state or []), record.value]
        return list(seen), seen

    driver = driver_of(StatefulExplode(name="se", source=IN, sink=OUT, fn=history))
    driver.pipe_many("in", ["a", "b", "c"], key="k")
    assert values(driver, "out") == ["a", "a", "b", "a", "b", "c"]
    assert driver.state("se", "k") == ["a", "b", "c"]


def test_stateful_explode_with_no_outputs() -> None:
    driver = driver_of(StatefulExplode(name="se", source=IN, sink=OUT, fn=lambda r, s: ([], 1)))
    driver.pipe("in", "a", key="k")
    assert driver.read("out") == []
    assert driver.state("se", "k") == 1
    assert driver.counts["filtered"] == 1


def test_stateful_record_without_a_key_is_dead_lettered() -> None:
    driver = driver_of(StatefulMap(name="count", source=IN, sink=OUT, fn=count))
    driver.pipe("in", "no key")
    driver.pipe("in", "keyed", key="k")
    assert values(driver, "out") == ["1"]
    (dead,) = driver.read("in.dlq")
    assert dead.value == b"no key"
    assert b"needs keyed records" in (dead.header("flows.error.message") or b"")


def test_a_keyless_stateful_record_names_the_real_error_type() -> None:
    driver = driver_of(StatefulMap(name="count", source=IN, sink=OUT, fn=count))
    driver.pipe("in", "no key")
    (dead,) = driver.read("in.dlq")
    assert dead.header("flows.error.type") == b"ValueError"


def test_stateful_flow_with_state_key_re_keys_through_an_intermediate_topic() -> None:
    # Keyed by account, not by user: the flow's state is per user. (One account per user
    # keeps each user's payments in one partition, hence ordered.)
    payments = Topic("payments", key_format=STR, value_format=JSON)

    def total(
        record: Record[bytes | None, dict[str, Any]], state: int | None
    ) -> tuple[Message, int]:
        new = (state or 0) + record.value["amount"]
        return Message(str(new), key=record.value["user"]), new

    driver = driver_of(
        StatefulMap(
            name="per-user",
            source=payments,
            sink=OUT,
            fn=total,
            state_key=lambda r: r.value["user"],
        )
    )
    assert "test.per-user.rekey" in driver.app.topics
    for user, amount in [("ann", 5), ("bob", 1), ("ann", 7), ("ann", 1), ("bob", 2)]:
        driver.pipe_raw(
            "payments",
            json.dumps({"user": user, "amount": amount}).encode(),
            f"account-of-{user}".encode(),
            run=False,
        )
    driver.run()
    assert by_key(driver.read("out")) == {"ann": ["5", "12", "13"], "bob": ["1", "3"]}
    assert driver.state("per-user", "ann") == 13
    assert driver.state("per-user", "bob") == 3
    # each user's records went to one partition of the intermediate topic, keyed by user
    intermediate = driver.read_all("test.per-user.rekey")
    assert len(intermediate) == 5
    partitions: dict[bytes | None, set[int]] = {}
    for raw in intermediate:
        partitions.setdefault(raw.key, set()).add(raw.partition)
    assert partitions == {key: {partition_for(key, 4)} for key in (b"ann", b"bob")}


def test_state_key_of_none_filters_the_record() -> None:
    driver = driver_of(
        StatefulMap(name="s", source=IN, sink=OUT, fn=count, state_key=lambda r: r.value or None)
    )
    driver.pipe("in", "", key="k")
    driver.pipe("in", "x", key="k")
    assert values(driver, "out") == ["1"]
    assert driver.counts["filtered"] == 1


ORDERS = Topic("orders", key_format=STR, value_format=JSON)
PAYMENTS = Topic("payments", key_format=STR, value_format=JSON)
PAID = Topic("paid-orders", key_format=STR, value_format=JSON)


def match(
    record: Record[str, dict[str, Any]], state: dict[str, Any] | None
) -> tuple[Message | None, dict[str, Any]]:
    """Joins an order with its payment, whichever comes first."""
    state = dict(state or {})
    if record.topic == "orders":
        state["item"] = record.value["item"]
    elif record.topic == "payments":
        state["paid"] = state.get("paid", 0) + record.value["amount"]
    else:  # pragma: no cover - the join has only two sources
        raise AssertionError(record.topic)
    if "item" in state and "paid" in state:
        return Message({**state, "order": record.value["order"]}, key=record.value["order"]), state
    return None, state


def test_join_two_topics_by_order_id() -> None:
    driver = driver_of(
        Join(
            name="match",
            sources={ORDERS: lambda r: r.value["order"], PAYMENTS: lambda r: r.value["order"]},
            sink=PAID,
            fn=match,
        )
    )
    # orders are keyed by customer, payments by payment id: neither by order id
    driver.pipe("orders", {"order": "o1", "item": "book"}, key="cust-1")
    driver.pipe("payments", {"order": "o2", "amount": 3}, key="pay-1")
    assert driver.read("paid-orders") == []
    driver.pipe("payments", {"order": "o1", "amount": 10}, key="pay-2")
    driver.pipe("orders", {"order": "o2", "item": "pen"}, key="cust-2")
    joined = {r.key: r.value for r in driver.read("paid-orders")}
    assert joined == {
        "o1": {"item": "book", "paid": 10, "order": "o1"},
        "o2": {"item": "pen", "paid": 3, "order": "o2"},
    }
    assert driver.state("match", "o1") == {"item": "book", "paid": 10}
    assert driver.state("match", "o2") == {"item": "pen", "paid": 3}
    assert "test.match.rekey" in driver.app.topics


def test_join_sees_the_original_record() -> None:
    seen: list[tuple[str, Any, Any, tuple[tuple[str, bytes], ...]]] = []

    def remember(record: Record[str, Any], state: Any) -> tuple[None, int]:
        seen.append((record.topic, record.key, record.value, record.headers))
        return None, 1

    driver = driver_of(
        Join(
            name="j",
            sources={ORDERS: lambda r: r.value["order"], PAYMENTS: lambda r: r.value["order"]},
            sink=PAID,
            fn=remember,
        )
    )
    sent = driver.pipe("orders", {"order": "o1"}, key="cust", headers=(("h", b"1"),))
    assert seen == [("orders", "cust", {"order": "o1"}, (("h", b"1"),))]
    record = driver.read_all("test.j.rekey")[0]
    assert record.key == b"o1" and sent.offset == 0


# --- Materialise -------------------------------------------------------------------------


@dataclass
class Balance:
    __tablename__ = "balances"
    account: str = field(metadata={"primary_key": True})
    amount: int = 0


def test_materialise_keeps_the_last_row_of_a_key_in_a_batch() -> None:
    driver = driver_of(
        Materialise(
            name="store",
            source=IN,
            table=Balance,
            fn=lambda r: Balance(account=r.key, amount=int(r.value)),
        )
    )
    driver.pipe_raw("in", b"1", b"a", run=False)
    driver.pipe_raw("in", b"2", b"a", run=False)
    driver.pipe_raw("in", b"7", b"b", run=False)
    driver.pipe_raw("in", b"3", b"a", run=False)
    driver.run()
    assert driver.rows("store") == [{"account": "a", "amount": 3}, {"account": "b", "amount": 7}]
    driver.pipe("in", "0", key="b")
    assert driver.rows("store") == [{"account": "a", "amount": 3}, {"account": "b", "amount": 0}]


def test_materialise_collect_collapses_one_primary_key() -> None:
    app = App(
        "direct",
        [
            Materialise(
                name="store",
                source=IN,
                table=Balance,
                fn=lambda r: {"account": r.key, "amount": int(r.value)},
            )
        ],
    )
    (step,) = app.steps
    assert isinstance(step, MaterialiseStep)
    records = [RawRecord("in", 0, i, b"a", str(i).encode()) for i in range(5)]
    result = step.collect(records)
    assert result.rows == {("a",): {"account": "a", "amount": 4}}


def test_materialise_many_rows_none_and_bad_rows() -> None:
    def rows(record: Record[str, str]) -> Any:
        if record.value == "none":
            return None
        if record.value == "bad":
            return {"account": record.key, "nope": 1}
        if record.value == "nokey":
            return {"amount": 1}
        return [{"account": record.key, "amount": 1}, {"account": record.key + "2", "amount": 2}]

    driver = driver_of(Materialise(name="store", source=IN, table=Balance, fn=rows))
    for value in ["none", "bad", "nokey", "two"]:
        driver.pipe("in", value, key="a")
    assert driver.rows("store") == [{"account": "a", "amount": 1}, {"account": "a2", "amount": 2}]
    assert driver.counts == {"filtered": 1, "dead_lettered": 2, "skipped": 0}


def test_materialise_fn_may_yield_rows() -> None:
    def rows(record: Record[str, str]) -> Iterator[dict[str, Any]]:
        yield {"account": record.key, "amount": 1}
        yield {"account": record.key + "2", "amount": 2}

    driver = driver_of(Materialise(name="store", source=IN, table=Balance, fn=rows))
    driver.pipe("in", "x", key="a")
    assert driver.counts["dead_lettered"] == 0
    assert driver.rows("store") == [{"account": "a", "amount": 1}, {"account": "a2", "amount": 2}]


# --- error policies ----------------------------------------------------------------------


def explode_on_boom(record: Record[str, str]) -> str:
    if record.value == "boom":
        raise ZeroDivisionError("boom went the record")
    return record.value.upper()


def test_a_raising_function_dead_letters_with_every_header_and_the_flow_goes_on() -> None:
    driver = driver_of(Map(name="shout", source=IN, sink=OUT, fn=explode_on_boom))
    driver.pipe("in", "a", key="k")
    sent = driver.pipe("in", "boom", key="k", headers=(("trace", b"t-1"),), timestamp=42)
    driver.pipe("in", "b", key="k")
    assert values(driver, "out") == ["A", "B"]
    assert driver.counts == {"filtered": 0, "dead_lettered": 1, "skipped": 0}
    (dead,) = driver.read_all("in.dlq")
    assert (dead.key, dead.value, dead.timestamp) == (b"k", b"boom", 42)
    names = [name for name, _ in dead.headers]
    assert names == ["trace", *DLQ_HEADERS]
    headers = dict(dead.headers)
    assert headers["trace"] == b"t-1"
    assert headers["flows.flow"] == b"shout"
    assert headers["flows.error.type"] == b"ZeroDivisionError"
    assert b"boom went the record" in headers["flows.error.message"]
    assert headers["flows.source.topic"] == b"in"
    assert headers["flows.source.partition"] == str(sent.partition).encode()
    assert headers["flows.source.offset"] == str(sent.offset).encode()
    assert headers["flows.attempts"] == b"1"


def test_a_named_dead_letter_topic() -> None:
    driver = driver_of(
        Map(name="shout", source=IN, sink=OUT, fn=explode_on_boom, dead_letter_topic="errors")
    )
    driver.pipe("in", "boom", key="k")
    assert len(driver.read_all("errors")) == 1
    assert "in.dlq" not in driver.app.topics


def test_an_output_that_does_not_fit_the_sink_is_dead_lettered() -> None:
    driver = driver_of(Map(name="m", source=IN, sink=OUT, fn=lambda r: 42))
    driver.pipe("in", "x", key="k")
    (dead,) = driver.read_all("in.dlq")
    assert dead.value == b"x"
    assert dict(dead.headers)["flows.error.type"] == b"EncodeError"


def test_a_stateful_failure_leaves_the_state_alone() -> None:
    def fn(record: Record[str, str], state: int | None) -> tuple[str, int]:
        if record.value == "boom":
            raise RuntimeError("no")
        return count(record, state)

    driver = driver_of(StatefulMap(name="count", source=IN, sink=OUT, fn=fn))
    driver.pipe_many("in", ["x", "boom", "x", "boom", "x"], key="k")
    assert values(driver, "out") == ["1", "2", "3"]
    assert driver.state("count", "k") == 3
    assert len(driver.read_all("in.dlq")) == 2


def test_a_failing_join_function_dead_letters_the_source_record() -> None:
    def picky(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
        if record.topic == "payments":
            raise RuntimeError("no payments today")
        return None, 1

    driver = driver_of(
        Join(
            name="j",
            sources={ORDERS: lambda r: r.value["order"], PAYMENTS: lambda r: r.value["order"]},
            sink=PAID,
            fn=picky,
        )
    )
    sent = driver.pipe("payments", {"order": "o1", "amount": 1}, key="pay-1")
    (dead,) = driver.read_all("payments.dlq")
    assert (dead.key, dead.value) == (sent.key, sent.value)
    assert dict(dead.headers)["flows.source.topic"] == b"payments"


def test_skip_counts_and_goes_on() -> None:
    driver = driver_of(Map(name="shout", source=IN, sink=OUT, fn=explode_on_boom, on_error="skip"))
    driver.pipe_many("in", ["a", "boom", "b", "boom"], key="k")
    driver.pipe_raw("in", b"\xff")
    assert values(driver, "out") == ["A", "B"]
    assert driver.counts == {"filtered": 0, "dead_lettered": 0, "skipped": 3}
    assert not any(name.endswith(".dlq") for name in driver.app.topics)


def test_stop_raises_flow_failed() -> None:
    driver = driver_of(Map(name="shout", source=IN, sink=OUT, fn=explode_on_boom, on_error="stop"))
    driver.pipe("in", "a", key="k")
    with pytest.raises(FlowFailedError, match="'shout'") as caught:
        driver.pipe("in", "boom", key="k")
    assert isinstance(caught.value.__cause__, Exception)
    assert values(driver, "out") == ["A"]


def test_stop_on_a_stateful_flow_commits_nothing_of_the_batch() -> None:
    def fn(record: Record[str, str], state: int | None) -> tuple[str, int]:
        if record.value == "boom":
            raise RuntimeError("no")
        return count(record, state)

    driver = driver_of(StatefulMap(name="count", source=IN, sink=OUT, fn=fn, on_error="stop"))
    with pytest.raises(FlowFailedError):
        driver.pipe_many("in", ["x", "x", "boom"], key="k")
    assert driver.state("count", "k") is None
    assert driver.read("out") == []


def test_malformed_utf8_to_wordcount_is_dead_lettered_and_counts_stay_exact() -> None:
    driver = TestDriver(wordcount)
    driver.pipe("word-count-input", "the cat and the hat")
    bad = driver.pipe_raw("word-count-input", b"the \xff\xfe cat")
    driver.pipe("word-count-input", "the end")
    assert driver.rows("store") == [
        {"word": "and", "count": 1},
        {"word": "cat", "count": 1},
        {"word": "end", "count": 1},
        {"word": "hat", "count": 1},
        {"word": "the", "count": 3},
    ]
    assert by_key(driver.read("word-count-output"))["the"] == ["1", "2", "3"]
    (dead,) = driver.read_all("word-count-input.dlq")
    assert dead.value == b"the \xff\xfe cat"
    headers = dict(dead.headers)
    assert headers["flows.flow"] == b"split"
    assert headers["flows.error.type"] == b"DecodeError"
    assert headers["flows.source.offset"] == str(bad.offset).encode()
    assert driver.state("count", "the") == 3


# --- failures after the user function returned -------------------------------------------
# A generator's body runs while its outputs are taken, and a malformed return value fails
# while it is unpacked: both are the user function's failures and must follow the policy.


def test_an_explode_generator_that_raises_is_dead_lettered() -> None:
    def words(record: Record[str, str]) -> Iterator[str]:
        yield "first"
        if record.value == "boom":
            raise RuntimeError("half-way")
        yield record.value

    driver = driver_of(Explode(name="ex", source=IN, sink=OUT, fn=words))
    driver.pipe_many("in", ["a", "boom", "b"], key="k")
    assert values(driver, "out") == ["first", "a", "first", "b"]
    (dead,) = driver.read_all("in.dlq")
    assert (dead.value, dict(dead.headers)["flows.error.type"]) == (b"boom", b"RuntimeError")


@pytest.mark.parametrize(
    "config",
    [
        Split(name="s", source=IN, sinks=(OUT, OUT2), fn=lambda r: "not a pair"),  # type: ignore[arg-type,return-value]
        Explode(name="e", source=IN, sink=OUT, fn=lambda r: 5),  # type: ignore[arg-type,return-value]
        StatefulSplit(name="ss", source=IN, sinks=(OUT, OUT2), fn=lambda r, s: ("xyz", s)),
        StatefulExplode(name="se", source=IN, sink=OUT, fn=lambda r, s: (5, s)),
    ],
    ids=["split", "explode", "stateful-split", "stateful-explode"],
)
def test_a_malformed_return_value_is_dead_lettered(config: Any) -> None:
    driver = driver_of(config)
    driver.pipe("in", "x", key="k")
    assert driver.counts["dead_lettered"] == 1
    assert len(driver.read_all("in.dlq")) == 1


def test_a_stateful_explode_generator_that_raises_leaves_the_state_alone() -> None:
    def fn(record: Record[str, str], state: int | None) -> tuple[Iterator[str], int]:
        def outputs() -> Iterator[str]:
            if record.value == "boom":
                raise RuntimeError("lazy")
            yield record.value

        return outputs(), (state or 0) + 1

    driver = driver_of(StatefulExplode(name="se", source=IN, sink=OUT, fn=fn))
    driver.pipe_many("in", ["a", "boom", "b"], key="k")
    assert values(driver, "out") == ["a", "b"]
    assert driver.state("se", "k") == 2


def test_a_null_line_to_wordcount_is_dead_lettered() -> None:
    # wordcount's split is a generator: record.value.lower() fails on a tombstone lazily.
    driver = TestDriver(wordcount)
    driver.pipe_raw("word-count-input", None)
    driver.pipe("word-count-input", "still counting")
    assert driver.rows("store") == [{"word": "counting", "count": 1}, {"word": "still", "count": 1}]
    (dead,) = driver.read_all("word-count-input.dlq")
    assert dead.value is None


def test_a_stateful_output_that_cannot_be_built_is_dead_lettered_and_keeps_the_state() -> None:
    """Headers that are not pairs fail while the output is built: the function's fault, as in
    a stateless flow, so the record goes to the dead-letter topic and the worker goes on."""

    def bad_headers(record: Any, state: int | None) -> tuple[Message, int]:
        return Message(record.value, headers=5), (state or 0) + 1

    driver = driver_of(StatefulMap(name="bad", source=IN, sink=OUT, fn=bad_headers))
    driver.pipe("in", "a", key="k")
    assert driver.read("out") == []
    (dead,) = driver.read("in.dlq")
    assert dead.header("flows.error.type") == b"TypeError"
    assert driver.state("bad", "k") is None
