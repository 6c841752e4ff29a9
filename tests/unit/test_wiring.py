"""Wiring is validated when an app is created: a bad flow fails with a WiringError naming
the flow and the field, never later, mid-stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import flows
from flows import (
    JSON,
    STR,
    App,
    ConfigError,
    Explode,
    Filter,
    FlowsError,
    Join,
    Map,
    Materialise,
    Merge,
    Mirror,
    Split,
    StatefulExplode,
    StatefulMap,
    StatefulSplit,
    Topic,
    WiringError,
)
from flows.steps import MaterialiseStep, RekeyStep, StatefulStep, StatelessStep


def one(record: Any) -> Any:
    return record.value


def two(record: Any, state: Any) -> tuple[Any, Any]:
    return record.value, state


def pair(record: Any) -> tuple[Any, Any]:
    return record.value, None


def many(record: Any) -> Iterator[Any]:
    yield record.value


def key_of(record: Any) -> Any:
    return record.key


@dataclass
class Row:
    __tablename__ = "rows"
    id: str = field(metadata={"primary_key": True})
    value: str = ""


@dataclass
class RowWithoutKey:
    __tablename__ = "rows_without_key"
    id: str = ""


@dataclass
class RowWithoutName:
    id: str = field(metadata={"primary_key": True})


T1 = Topic("t1", value_format=STR)
T2 = Topic("t2", value_format=STR)
T3 = Topic("t3", value_format=STR)


def wiring_error(build: Callable[[], Any]) -> WiringError:
    with pytest.raises(WiringError) as caught:
        build()
    error = caught.value
    assert isinstance(error, FlowsError)
    assert repr(error.flow) in str(error) and repr(error.field) in str(error)
    return error


# --- topics ------------------------------------------------------------------------------


def test_unknown_topic_name() -> None:
    error = wiring_error(lambda: App("a", [Map(name="m", source="nope", sink=T2, fn=one)]))
    assert (error.flow, error.field) == ("m", "source")
    assert "'nope'" in error.problem


def test_unknown_sink_name() -> None:
    error = wiring_error(
        lambda: App("a", [Map(name="m", source="t1", sink="nope", fn=one)], topics=[T1])
    )
    assert (error.flow, error.field) == ("m", "sink")


def test_declared_topic_names_resolve() -> None:
    app = App("a", [Map(name="m", source="t1", sink="t2", fn=one)], topics=[T1, T2])
    (step,) = app.steps
    assert step.sources == (T1,) and step.sources[0] is T1
    assert step.sinks[0] is T2


def test_a_topic_ref_of_the_wrong_type() -> None:
    error = wiring_error(lambda: App("a", [Map(name="m", source=42, sink=T2, fn=one)]))  # type: ignore[arg-type]
    assert (error.flow, error.field) == ("m", "source")


def test_topic_declared_twice_with_different_formats() -> None:
    error = wiring_error(
        lambda: App("a", [], topics=[Topic("t", value_format=STR), Topic("t", value_format=JSON)])
    )
    assert (error.flow, error.field) == ("<app>", "topics")


def test_topic_used_twice_with_different_formats() -> None:
    error = wiring_error(
        lambda: App(
            "a",
            [
                Map(name="m1", source=T1, sink=Topic("t", value_format=STR), fn=one),
                Map(name="m2", source=Topic("t", value_format=JSON), sink=T3, fn=one),
            ],
        )
    )
    assert (error.flow, error.field) == ("m2", "source")


def test_topic_declared_twice_with_different_partitions() -> None:
    error = wiring_error(
        lambda: App("a", [], topics=[Topic("t", partitions=1), Topic("t", partitions=2)])
    )
    assert error.field == "topics"


def test_equal_topic_objects_are_one_topic() -> None:
    app = App(
        "a",
        [
            Map(name="m1", source=T1, sink=Topic("t", value_format=STR), fn=one),
            Map(name="m2", source=Topic("t", value_format=STR), sink=T3, fn=one),
        ],
    )
    assert app.topics["t"].value_format is STR


# --- functions ---------------------------------------------------------------------------


def test_stateless_function_taking_two_arguments() -> None:
    error = wiring_error(lambda: App("a", [Map(name="m", source=T1, sink=T2, fn=two)]))  # type: ignore[arg-type]
    assert (error.flow, error.field) == ("m", "fn")
    assert "(record)" in error.problem


def test_stateful_function_taking_one_argument() -> None:
    error = wiring_error(lambda: App("a", [StatefulMap(name="s", source=T1, sink=T2, fn=one)]))  # type: ignore[arg-type]
    assert (error.flow, error.field) == ("s", "fn")
    assert "(record, state)" in error.problem


def test_filter_predicate_of_the_wrong_arity() -> None:
    error = wiring_error(
        lambda: App("a", [Filter(name="f", source=T1, sink=T2, predicate=lambda: True)])  # type: ignore[arg-type,misc]
    )
    assert (error.flow, error.field) == ("f", "predicate")


def test_not_a_function() -> None:
    error = wiring_error(lambda: App("a", [Map(name="m", source=T1, sink=T2, fn="upper")]))  # type: ignore[arg-type]
    assert (error.flow, error.field) == ("m", "fn")


def test_state_key_of_the_wrong_arity() -> None:
    error = wiring_error(
        lambda: App("a", [StatefulMap(name="s", source=T1, sink=T2, fn=two, state_key=two)])  # type: ignore[arg-type]
    )
    assert (error.flow, error.field) == ("s", "state_key")


def test_join_key_function_of_the_wrong_arity() -> None:
    error = wiring_error(
        lambda: App("a", [Join(name="j", sources={T1: key_of, T2: two}, sink=T3, fn=two)])  # type: ignore[dict-item]
    )
    assert error.flow == "j"
    assert error.field == "sources['t2']"


def test_functions_with_defaults_and_varargs_are_accepted() -> None:
    def loose(*args: Any) -> Any:
        return None

    def optional(record: Any, state: Any = None, extra: int = 0) -> tuple[Any, Any]:
        return None, state

    App(
        "a",
        [
            Map(name="m", source=T1, sink=T2, fn=loose),
            StatefulMap(name="s", source=T1, sink=T3, fn=optional),
        ],
    )


# --- names -------------------------------------------------------------------------------


def test_two_flows_with_one_name() -> None:
    error = wiring_error(
        lambda: App(
            "a",
            [Map(name="m", source=T1, sink=T2, fn=one), Map(name="m", source=T1, sink=T3, fn=one)],
        )
    )
    assert (error.flow, error.field) == ("m", "name")


@pytest.mark.parametrize(
    "name", ["", "has space", "dot.ted", "-leading", "_leading", "x" * 102, "é"]
)
def test_bad_flow_name(name: str) -> None:
    error = wiring_error(lambda: App("a", [Map(name=name, source=T1, sink=T2, fn=one)]))
    assert error.field == "name"
    assert error.flow == name


@pytest.mark.parametrize("name", ["m", "M1", "9lives", "snake_case", "kebab-case", "x" * 101])
def test_good_flow_names(name: str) -> None:
    assert App("a", [Map(name=name, source=T1, sink=T2, fn=one)]).flow_names == (name,)


def test_not_a_flow_configuration() -> None:
    error = wiring_error(lambda: App("a", [object()]))  # type: ignore[list-item]
    assert error.field == "flows"


# --- graph -------------------------------------------------------------------------------


def test_a_cycle_of_two_flows() -> None:
    error = wiring_error(
        lambda: App(
            "a",
            [Map(name="A", source=T1, sink=T2, fn=one), Map(name="B", source=T2, sink=T1, fn=one)],
        )
    )
    assert error.flow in {"A", "B"}
    assert error.field == "sink"
    assert "cycle" in error.problem
    assert "A" in error.problem and "B" in error.problem


def test_a_self_loop() -> None:
    error = wiring_error(lambda: App("a", [Map(name="loop", source=T1, sink=T1, fn=one)]))
    assert (error.flow, error.field) == ("loop", "sink")
    assert "cycle" in error.problem


def test_a_cycle_through_a_stateful_re_key() -> None:
    error = wiring_error(
        lambda: App(
            "a",
            [
                StatefulMap(name="s", source=T1, sink=T2, fn=two, state_key=key_of),
                Map(name="back", source=T2, sink=T1, fn=one),
            ],
        )
    )
    assert "cycle" in error.problem


def test_steps_are_in_topological_order() -> None:
    # Listed downstream first, so the order must come from the graph, not the list.
    t4 = Topic("t4", key_format=STR, value_format=STR)
    t5 = Topic("t5", value_format=STR)
    app = App(
        "a",
        [
            Materialise(name="store", source=t5, table=Row, fn=lambda r: None),
            StatefulMap(name="count", source=t4, sink=t5, fn=two, state_key=key_of),
            Split(name="split", source=T3, sinks=(t4, Topic("side")), fn=pair),
            Map(name="second", source=T2, sink=T3, fn=one),
            Map(name="first", source=T1, sink=T2, fn=one),
        ],
    )
    names = [step.name for step in app.steps]
    assert sorted(names) == sorted(["first", "second", "split", "count.rekey", "count", "store"])
    position = {name: i for i, name in enumerate(names)}
    for upstream, downstream in [
        ("first", "second"),
        ("second", "split"),
        ("split", "count.rekey"),
        ("count.rekey", "count"),
        ("count", "store"),
    ]:
        assert position[upstream] < position[downstream], names
    # every step's sources are written only by steps before it
    written: set[str] = set()
    writers = {sink.name for step in app.steps for sink in step.sinks}
    for step in app.steps:
        for source in step.source_names:
            assert source in written or source not in writers, (step.name, source)
        written.update(sink.name for sink in step.sinks)


def test_select_keeps_topological_order() -> None:
    app = App(
        "a",
        [
            Map(name="second", source=T2, sink=T3, fn=one),
            Map(name="first", source=T1, sink=T2, fn=one),
        ],
    )
    assert [s.name for s in app.select()] == ["first", "second"]
    assert [s.name for s in app.select(["second", "first"])] == ["first", "second"]
    assert [s.name for s in app.select(["second"])] == ["second"]


def test_select_of_an_unknown_flow() -> None:
    app = App("a", [Map(name="m", source=T1, sink=T2, fn=one)])
    with pytest.raises(ConfigError, match="'x'"):
        app.select(["x"])
    with pytest.raises(ConfigError):
        app.select(["m", "x"])


# --- splits, merges ----------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 3])
def test_split_with_a_wrong_number_of_sinks(count: int) -> None:
    sinks = tuple(Topic(f"s{i}") for i in range(count))
    error = wiring_error(lambda: App("a", [Split(name="sp", source=T1, sinks=sinks, fn=pair)]))  # type: ignore[arg-type]
    assert (error.flow, error.field) == ("sp", "sinks")


@pytest.mark.parametrize("count", [1, 3])
def test_stateful_split_with_a_wrong_number_of_sinks(count: int) -> None:
    sinks = tuple(Topic(f"s{i}") for i in range(count))
    error = wiring_error(
        lambda: App("a", [StatefulSplit(name="ss", source=T1, sinks=sinks, fn=two)])  # type: ignore[arg-type]
    )
    assert (error.flow, error.field) == ("ss", "sinks")


def test_merge_without_sources() -> None:
    error = wiring_error(lambda: App("a", [Merge(name="mg", sources=(), sink=T1)]))
    assert (error.flow, error.field) == ("mg", "sources")


def test_join_without_sources() -> None:
    error = wiring_error(lambda: App("a", [Join(name="j", sources={}, sink=T1, fn=two)]))
    assert (error.flow, error.field) == ("j", "sources")


# --- tables ------------------------------------------------------------------------------


def test_materialise_dataclass_without_a_primary_key() -> None:
    error = wiring_error(
        lambda: App("a", [Materialise(name="mat", source=T1, table=RowWithoutKey, fn=one)])
    )
    assert (error.flow, error.field) == ("mat", "table")
    assert "primary key" in error.problem


def test_materialise_dataclass_without_a_tablename() -> None:
    error = wiring_error(
        lambda: App("a", [Materialise(name="mat", source=T1, table=RowWithoutName, fn=one)])
    )
    assert (error.flow, error.field) == ("mat", "table")
    assert "__tablename__" in error.problem


def test_materialise_table_that_is_neither() -> None:
    error = wiring_error(
        lambda: App("a", [Materialise(name="mat", source=T1, table={"id": str}, fn=one)])
    )
    assert (error.flow, error.field) == ("mat", "table")


def test_materialise_duck_typed_table() -> None:
    # A SQLAlchemy Table is recognised by its attributes only (the core never imports it).
    class Column:
        def __init__(self, name: str) -> None:
            self.name = name

    class PrimaryKey:
        columns = (Column("id"),)

    class FakeTable:
        name = "fake"
        columns = (Column("id"), Column("value"))
        primary_key = PrimaryKey()

    app = App("a", [Materialise(name="mat", source=T1, table=FakeTable(), fn=one)])
    assert app.materialised_tables() == {"mat": "fake"}


def test_two_stateful_flows_sharing_a_table() -> None:
    error = wiring_error(
        lambda: App(
            "a",
            [
                StatefulMap(name="s1", source=T1, sink=T2, fn=two, table="shared"),
                StatefulMap(name="s2", source=T1, sink=T3, fn=two, table="shared"),
            ],
        )
    )
    assert (error.flow, error.field) == ("s2", "table")
    assert "'shared'" in error.problem


def test_default_state_tables_that_collide_after_sanitising() -> None:
    error = wiring_error(
        lambda: App(
            "a",
            [
                StatefulMap(name="s-1", source=T1, sink=T2, fn=two),
                StatefulMap(name="s_1", source=T1, sink=T3, fn=two),
            ],
        )
    )
    assert error.field == "table"


def test_a_state_table_and_a_materialised_table_with_one_name() -> None:
    error = wiring_error(
        lambda: App(
            "a",
            [
                StatefulMap(name="s", source=T1, sink=T2, fn=two, table="rows"),
                Materialise(name="mat", source=T2, table=Row, fn=one),
            ],
        )
    )
    assert error.field == "table"


def test_default_table_names() -> None:
    app = App(
        "My-App",
        [
            StatefulMap(name="count-words", source=T1, sink=T2, fn=two),
            Materialise(name="mat", source=T2, table=Row, fn=one),
        ],
    )
    assert app.state_tables() == {"count-words": "my_app_count_words_state"}
    assert app.materialised_tables() == {"mat": "rows"}


# --- error policy ------------------------------------------------------------------------


def test_a_bad_on_error_value() -> None:
    error = wiring_error(
        lambda: App("a", [Map(name="m", source=T1, sink=T2, fn=one, on_error="ignore")])  # type: ignore[arg-type]
    )
    assert (error.flow, error.field) == ("m", "on_error")
    assert "'ignore'" in error.problem


def test_dead_letter_topics_default_to_source_dlq() -> None:
    app = App("a", [Merge(name="mg", sources=(T1, T2), sink=T3, fn=one)])
    (step,) = app.steps
    assert {s: t.name for s, t in step.dead_letters.items()} == {"t1": "t1.dlq", "t2": "t2.dlq"}
    assert {"t1.dlq", "t2.dlq"} <= set(app.topics)
    assert {"t1.dlq", "t2.dlq"} <= {t.name for t in step.sinks}


def test_a_named_dead_letter_topic_is_shared() -> None:
    app = App(
        "a", [Merge(name="mg", sources=(T1, T2), sink=T3, fn=one, dead_letter_topic="errors")]
    )
    (step,) = app.steps
    assert {t.name for t in step.dead_letters.values()} == {"errors"}
    assert [t.name for t in step.sinks].count("errors") == 1


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_no_dead_letter_topic_unless_dead_lettering(policy: Any) -> None:
    app = App("a", [Map(name="m", source=T1, sink=T2, fn=one, on_error=policy)])
    (step,) = app.steps
    assert step.dead_letters == {}
    assert "t1.dlq" not in app.topics


# --- what valid apps compile to ----------------------------------------------------------


def test_every_flow_type_compiles() -> None:
    keyed = Topic("keyed", key_format=STR, value_format=STR)
    app = App(
        "every",
        [
            Map(name="map", source=T1, sink=Topic("o-map"), fn=one),
            Filter(name="filter", source=T1, sink=Topic("o-filter"), predicate=bool),
            Split(name="split", source=T1, sinks=(Topic("o-s1"), Topic("o-s2")), fn=pair),
            Explode(name="explode", source=T1, sink=Topic("o-explode"), fn=many),
            Merge(name="merge", sources=(T1, T2), sink=Topic("o-merge")),
            Mirror(name="mirror", source=T1, sink=Topic("o-mirror")),
            StatefulMap(name="smap", source=keyed, sink=Topic("o-smap"), fn=two),
            StatefulSplit(
                name="ssplit", source=keyed, sinks=(Topic("o-ss1"), Topic("o-ss2")), fn=two
            ),
            StatefulExplode(name="sexplode", source=keyed, sink=Topic("o-sexplode"), fn=two),
            Join(name="join", sources={T1: key_of, T2: key_of}, sink=Topic("o-join"), fn=two),
            Materialise(name="mat", source=T3, table=Row, fn=one),
        ],
    )
    kinds = {step.name: type(step) for step in app.steps}
    assert kinds == {
        "map": StatelessStep,
        "filter": StatelessStep,
        "split": StatelessStep,
        "explode": StatelessStep,
        "merge": StatelessStep,
        "mirror": StatelessStep,
        "smap": StatefulStep,
        "ssplit": StatefulStep,
        "sexplode": StatefulStep,
        "join.rekey": RekeyStep,
        "join": StatefulStep,
        "mat": MaterialiseStep,
    }
    assert {step.group_id for step in app.steps} == {f"every.{name}" for name in kinds}
    assert all(step.exactly_once for step in app.steps if step.kind != "stateless")


def test_a_state_key_adds_an_intermediate_topic() -> None:
    app = App("shop", [StatefulMap(name="per-user", source=T1, sink=T2, fn=two, state_key=key_of)])
    rekey, stateful = app.steps
    assert isinstance(rekey, RekeyStep) and isinstance(stateful, StatefulStep)
    assert rekey.name == "per-user.rekey" and rekey.flow == "per-user"
    assert rekey.exactly_once
    intermediate = app.topics["shop.per-user.rekey"]
    assert rekey.sinks[0] is intermediate
    assert stateful.sources == (intermediate,)
    assert intermediate.key_format is STR


def test_flow_types_are_exported() -> None:
    from flows.wiring import FLOW_TYPES

    assert {t.__name__ for t in FLOW_TYPES} <= set(flows.__all__)


@pytest.mark.parametrize(
    "flow",
    [
        Map(name="m", source=T1, sink=T2, fn=one),
        StatefulMap(name="s", source=T1, sink=T2, fn=two, state_key=key_of),
    ],
    ids=["stateless", "re-keyed"],
)
def test_a_bad_app_name(flow: Any) -> None:
    with pytest.raises(FlowsError):
        App("has space!", [flow])
