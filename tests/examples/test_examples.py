"""The examples, end to end against the real broker and database, as a user runs them."""

from __future__ import annotations

import subprocess

import sqlalchemy as sa

from tests.helpers import REPO, consume_all, flows_env, produce, run_cli
from tests.wordcount_check import check_output, expected_counts, table_counts, text_lines


def test_uppercase_reflects_every_line(bootstrap_servers: str, database_url: str) -> None:
    env = flows_env(bootstrap_servers, database_url)
    assert run_cli(["reset", "uppercase", "--yes"], env).returncode == 0
    lines = [f"line number {i} " + "x" * (i % 60) for i in range(2000)] + ["   "]
    produce(
        bootstrap_servers,
        "uppercase-input",
        ((f"k{i}".encode(), v.encode()) for i, v in enumerate(lines)),
    )
    done = run_cli(["run", "uppercase", "--until-idle", "3"], env)
    assert done.returncode == 0, done.stderr
    out = consume_all(bootstrap_servers, "uppercase-output", expected=2000)
    assert sorted((r.value or b"").decode() for r in out) == sorted(
        v.strip().upper() for v in lines[:-1]
    )
    long = consume_all(bootstrap_servers, "uppercase-long", expected=1)
    assert sorted((r.value or b"").decode() for r in long) == sorted(
        v for v in lines if len(v) > 40
    )


def test_wordcount_counts_exactly(
    bootstrap_servers: str, database_url: str, engine: sa.Engine
) -> None:
    env = flows_env(bootstrap_servers, database_url)
    assert run_cli(["reset", "wordcount", "--yes"], env).returncode == 0
    lines = text_lines(3000, seed=99)
    lines += (REPO / "examples/wordcount/sample.txt").read_text().splitlines()
    produce(bootstrap_servers, "word-count-input", ((None, line.encode()) for line in lines))
    # malformed input never stops the flow and never touches a count
    produce(bootstrap_servers, "word-count-input", [(None, b"\xff\xfe caf\xc3"), (None, None)])
    done = run_cli(["run", "wordcount", "--until-idle", "5"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_counts(lines)
    assert table_counts(engine) == expected
    check_output(
        consume_all(bootstrap_servers, "word-count-output", expected=sum(expected.values())),
        expected,
    )
    dead = consume_all(bootstrap_servers, "word-count-input.dlq", expected=2)
    assert len(dead) == 2
    assert {dict(d.headers)["flows.flow"] for d in dead} == {b"split"}


def test_make_demo_prints_the_top_words(
    bootstrap_servers: str, database_url: str, engine: sa.Engine
) -> None:
    env = flows_env(bootstrap_servers, database_url)
    demo = subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    text = (REPO / "examples/wordcount/sample.txt").read_text().splitlines()
    top = expected_counts(text).most_common(1)[0]
    assert f"{top[1]:>6}  {top[0]}" in demo.stdout
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM word_counts")).scalar() == len(
            expected_counts(text)
        )
