"""The `flows` command line: help, list, describe, config, errors, produce/consume."""

from __future__ import annotations

import time

from tests.conftest import TopicFactory
from tests.helpers import flows_env, run_cli


def test_help_documents_every_command(bootstrap_servers: str, database_url: str) -> None:
    result = run_cli(["--help"], flows_env(bootstrap_servers, database_url))
    assert result.returncode == 0
    for command in (
        "run",
        "list",
        "describe",
        "config",
        "reset",
        "produce",
        "consume",
        "status",
        "dlq",
        "new",
    ):
        assert command in result.stdout
    run_help = run_cli(["run", "--help"], flows_env(bootstrap_servers, database_url))
    for option in ("--flow", "--until-idle", "--bootstrap-servers", "--database-url"):
        assert option in run_help.stdout


def test_list_and_describe(bootstrap_servers: str, database_url: str) -> None:
    env = flows_env(bootstrap_servers, database_url)
    listed = run_cli(["list"], env)
    assert "wordcount" in listed.stdout and "split, count, store" in listed.stdout
    described = run_cli(["describe", "wordcount"], env)
    assert "word_counts" in described.stdout and "wordcount_count_state" in described.stdout
    mermaid = run_cli(["describe", "wordcount", "--format", "mermaid"], env)
    assert mermaid.stdout.startswith("flowchart LR")
    assert "s_count" in mermaid.stdout


def test_config_masks_secrets(bootstrap_servers: str, database_url: str) -> None:
    env = flows_env(
        bootstrap_servers, "postgresql://u:hunter2@db:5432/x", FLOWS_KAFKA_SASL_PASSWORD="s3cret"
    )
    result = run_cli(["config", "wordcount"], env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "s3cret" not in result.stdout
    assert "u:***@db" in result.stdout


def test_a_bad_app_reference_is_a_configuration_error(
    bootstrap_servers: str, database_url: str
) -> None:
    result = run_cli(["run", "no-such-app"], flows_env(bootstrap_servers, database_url))
    assert result.returncode == 2
    assert "no app 'no-such-app'" in result.stderr and "wordcount" in result.stderr


def test_an_unreachable_broker_fails_fast_naming_the_address(
    bootstrap_servers: str, database_url: str
) -> None:
    env = flows_env("localhost:1", database_url, FLOWS_STARTUP_TIMEOUT="3")
    started = time.monotonic()
    result = run_cli(["run", "uppercase"], env, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "localhost:1" in result.stderr


def test_produce_then_consume(
    bootstrap_servers: str, database_url: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=1)
    env = flows_env(bootstrap_servers, database_url)
    produced = run_cli(["produce", topic, "--key", "k"], env, stdin="hello\nwörld\n")
    assert produced.returncode == 0, produced.stderr
    consumed = run_cli(["consume", topic, "--from-beginning", "--max", "2"], env)
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == ["0\t0\tk\thello", "0\t1\tk\twörld"]
