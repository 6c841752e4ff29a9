"""``flows status`` rendering and JSON, from figures made by hand (no services)."""

from __future__ import annotations

import io
import json

from rich.console import Console

from runtimes.commands.status_figures import AppStatus, FlowStatus, Member, PartitionFigures
from runtimes.commands.status_view import render


def _status() -> AppStatus:
    count = FlowStatus(
        flow="count",
        step="count",
        kind="stateful",
        group="app.count",
        group_state="stable",
        members=(Member("app.count.host-1", "/10.0.0.1", ("words[0]", "words[1]")),),
        partitions=(
            PartitionFigures("words", 0, high=120, committed=100, lag=20, watermark=110),
            PartitionFigures("words", 1, high=50, committed=50, lag=0, watermark=40),
            PartitionFigures("words", 2, high=9, committed=9, lag=0, watermark=9),
        ),
        keeps_watermarks=True,
        state_table="app_count_state",
        state_rows=1234,
        dead_letters={"words.dlq": 3},
    )
    split = FlowStatus(
        flow="split",
        step="split",
        kind="stateless",
        group="app.split",
        group_state="missing",
        members=(),
        partitions=(PartitionFigures("lines", -1, None, None, None),),
        keeps_watermarks=False,
        dead_letters={"lines.dlq": None},
    )
    return AppStatus("app", 0.0, (split, count))


def test_flags_compare_kafkas_commit_with_the_database_watermark() -> None:
    [owed, behind, agreed] = _status().flows[1].partitions
    assert owed.flag == "outputs owed"  # C 100 < W 110
    assert behind.flag == "database behind"  # C 50 > W 40
    assert agreed.flag == ""
    assert PartitionFigures("t", 0, 5, None, 5, watermark=3).flag == "outputs owed"


def test_render_shows_each_flow_its_partitions_and_what_is_missing() -> None:
    out = io.StringIO()
    Console(file=out, width=120).print(render(_status()))
    text = out.getvalue()
    assert "split (stateless) group app.split: missing, 0 members, lag -" in text
    assert "lines (missing)" in text and "dead letters lines.dlq: missing" in text
    assert "count (stateful) group app.count: stable, 1 member, lag 20" in text
    assert "member app.count.host-1 on /10.0.0.1: words[0], words[1]" in text
    assert "table app_count_state: 1234 rows" in text
    assert "dead letters words.dlq: 3" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if "words[" in line}
    assert rows["words[0]"] == ["100", "120", "20", "110", "outputs", "owed"]
    assert rows["words[1]"] == ["50", "50", "0", "40", "database", "behind"]
    assert rows["words[2]"] == ["9", "9", "0", "9"]


def test_json_is_one_document_with_lag_and_flags() -> None:
    document = json.loads(json.dumps(_status().to_json()))
    count = document["flows"][1]
    assert count["lag"] == 20 and document["flows"][0]["lag"] is None
    assert [p["flag"] for p in count["partitions"]] == ["outputs owed", "database behind", ""]
    assert count["members"][0]["partitions"] == ["words[0]", "words[1]"]
