"""Settings: precedence (defaults < file < environment < flags), validation, masking."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from flows import StateKeys
from flows.errors import ConfigError
from runtimes.config import Settings, mask_url
from runtimes.registry.client import client_config


def test_defaults() -> None:
    settings = Settings.from_sources(environ={})
    assert settings.bootstrap_servers == "localhost:9092"
    assert settings.database_url == "postgresql://postgres:postgres@localhost:5432/flows"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "flows.toml"
    config.write_text(
        'bootstrap_servers = "file:9092"\nbatch_size = 10\nbatch_linger = 0.5\n'
        '[kafka]\n"security.protocol" = "SASL_SSL"\n"sasl.password" = "pw-file"\n'
    )
    env = {"FLOWS_BATCH_SIZE": "20", "FLOWS_KAFKA_SASL_USERNAME": "me"}
    settings = Settings.from_sources(
        environ=env, config_file=config, batch_linger=None, bootstrap_servers="flag:9092"
    )
    assert settings.bootstrap_servers == "flag:9092"  # flag beats file
    assert settings.batch_size == 20  # environment beats file
    assert settings.batch_linger == 0.5  # file beats default; a None flag is no flag
    kafka = dict(settings.kafka)
    assert kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.password": "pw-file",
        "sasl.username": "me",
    }
    assert settings.consumer_config("g")["security.protocol"] == "SASL_SSL"
    assert settings.producer_config()["sasl.username"] == "me"


def test_the_config_file_may_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "flows.toml"
    config.write_text("batch_size = 7\n")
    assert Settings.from_sources(environ={"FLOWS_CONFIG": str(config)}).batch_size == 7


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('batch_size = "many"\n', "batch_size='many' is not a valid int"),
        ("no_such_setting = 1\n", "unknown setting 'no_such_setting'"),
        ("batch_size = 0\n", "batch_size must be at least 1"),
        ("stateful_batch_size = 0\n", "stateful_batch_size must be at least 1"),
        ("malloc_arenas = -1\n", "malloc_arenas must be >= 0"),
        ("gc_threshold = -1\n", "gc_threshold must be >= 0"),
        ("this is not toml\n", "is not valid TOML"),
        ('auto_offset_reset = "middle"\n', "auto_offset_reset must be"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, source: str, message: str) -> None:
    config = tmp_path / "flows.toml"
    config.write_text(source)
    with pytest.raises(ConfigError, match=message):
        Settings.from_sources(environ={}, config_file=config)


def test_an_invalid_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FLOWS_BATCH_SIZE='x'"):
        Settings.from_sources(environ={"FLOWS_BATCH_SIZE": "x"})


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no configuration file"):
        Settings.from_sources(environ={}, config_file=tmp_path / "absent.toml")


def test_secrets_are_masked() -> None:
    settings = Settings.from_sources(
        environ={
            "FLOWS_DATABASE_URL": "postgresql://app:hunter2@db:5432/x",
            "FLOWS_KAFKA_SASL_PASSWORD": "s3cret",
            "FLOWS_KAFKA_SASL_JAAS_CONFIG": "user=a password=b",
        }
    )
    shown = repr(settings.masked())
    assert "hunter2" not in shown and "s3cret" not in shown and "password=b" not in shown
    assert "app:***@db" in shown
    assert mask_url("postgresql://db/x") == "postgresql://db/x"


def test_state_keys_are_parsed_once_checked_at_once_and_masked() -> None:
    text = StateKeys.generate("k2", "k1").to_setting()
    settings = Settings.from_sources(environ={"FLOWS_STATE_KEYS": text})
    keyring = settings.state_keyring
    assert keyring is not None and keyring.ids == ("k2", "k1")
    assert settings.state_keyring is keyring
    assert settings.masked()["state_keys"] == "***"
    for shown in (repr(settings.masked()), repr(settings), str(settings)):
        assert text.split(",")[0].split(":")[1] not in shown
    assert Settings.from_sources(environ={}).state_keyring is None
    with pytest.raises(ConfigError, match="'k1' is 3 bytes"):
        Settings.from_sources(environ={"FLOWS_STATE_KEYS": "k1:YWJj"})


def test_the_http_server_is_guarded_by_a_token_or_jwts() -> None:
    assert not Settings().http_guarded
    assert Settings(http_token="t").http_guarded
    assert Settings(http_jwt_secret="x" * 32).http_guarded
    assert Settings(http_jwt_jwks="/keys.json").http_guarded


def test_schema_registry_settings_reach_the_client_and_stay_masked() -> None:
    assert Settings().schema_registry_url == "http://localhost:8081/apis/ccompat/v7"
    settings = Settings.from_sources(
        environ={
            "FLOWS_SCHEMA_REGISTRY_URL": "https://sr.example:8081",
            "FLOWS_SCHEMA_REGISTRY_USER": "flows",
            "FLOWS_SCHEMA_REGISTRY_PASSWORD": "pa55word",
            "FLOWS_SCHEMA_REGISTRY_CA": "/etc/ca.pem",
            "FLOWS_SCHEMA_REGISTRY_CERT": "/etc/client.pem",
            "FLOWS_SCHEMA_REGISTRY_KEY": "/etc/client.key",
        }
    )
    config = client_config(settings)
    assert config["url"] == "https://sr.example:8081"
    assert config["basic.auth.user.info"] == "flows:pa55word"
    assert (config["ssl.ca.location"], config["ssl.certificate.location"]) == (
        "/etc/ca.pem",
        "/etc/client.pem",
    )
    assert config["ssl.key.location"] == "/etc/client.key"
    shown = settings.masked()
    assert shown["schema_registry_password"] == "***" and "pa55word" not in repr(shown)
    assert "pa55word" not in repr(settings)
    in_url = Settings(schema_registry_url="https://u:pw@sr:8081").masked()
    assert in_url["schema_registry_url"] == "https://u:***@sr:8081"
    assert "basic.auth.user.info" not in client_config(Settings())


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"schema_registry_user": "u"}, "go together"),
        ({"schema_registry_password": "p"}, "go together"),
        ({"schema_registry_key": "k.pem"}, "needs schema_registry_cert"),
        ({"schema_registry_url": "localhost:8081"}, "http://, https:// or mock://"),
    ],
)
def test_bad_schema_registry_settings(values: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings(**values)  # type: ignore[arg-type]


def test_transactional_producers_get_the_timeout_and_id() -> None:
    config = Settings.from_sources(environ={}).producer_config("app.flow.host")
    assert config["transactional.id"] == "app.flow.host"
    assert config["enable.idempotence"] is True
    assert config["partitioner"] == "murmur2_random"


def test_kafka_options_tune_memory_but_not_guarantees() -> None:
    settings = Settings.from_sources(
        environ={
            "FLOWS_KAFKA_QUEUED_MIN_MESSAGES": "500",
            "FLOWS_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES": "1000",
            "FLOWS_KAFKA_ISOLATION_LEVEL": "read_uncommitted",
            "FLOWS_KAFKA_ENABLE_IDEMPOTENCE": "false",
            "FLOWS_KAFKA_PARTITIONER": "random",
        }
    )
    consumer, producer = settings.consumer_config("g"), settings.producer_config("t")
    assert consumer["queued.min.messages"] == "500"
    assert producer["queue.buffering.max.messages"] == "1000"
    assert consumer["isolation.level"] == "read_committed"
    assert producer["enable.idempotence"] is True
    assert producer["partitioner"] == "murmur2_random"


def test_prefetch_is_bounded_by_default() -> None:
    consumer = Settings.from_sources(environ={}).consumer_config("g")
    # one fetch may not outgrow the queue bounds: records are ~350 bytes each in librdkafka
    assert consumer["queued.min.messages"] == 10_000
    assert consumer["max.partition.fetch.bytes"] <= 262_144
    assert consumer["fetch.queue.backoff.ms"] <= 10


def test_the_session_timeout_comes_from_its_setting_only() -> None:
    settings = Settings.from_sources(
        environ={"FLOWS_SESSION_TIMEOUT_MS": "12000", "FLOWS_KAFKA_SESSION_TIMEOUT_MS": "99000"}
    )
    assert settings.consumer_config("g")["session.timeout.ms"] == 12000


def _child(code: str, *args: str, **extra: str) -> list[str]:
    """What ``code`` prints in a fresh interpreter: for settings that are process-wide."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | extra
    child = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0, child.stderr
    return child.stdout.split()


def test_malloc_arenas_are_capped_on_glibc_unless_the_environment_says() -> None:
    code = "from runtimes.process import limit_malloc_arenas as f; print(f(1), f(0))"
    glibc = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert _child(code) == [glibc, "False"]  # 0 keeps glibc's default
    assert _child(code, MALLOC_ARENA_MAX="4") == ["False", "False"]  # glibc's own switch wins


#: batches of records kept alive together, then dropped, as a worker does; prints the young
#: and the full collections they cost
_BATCHES = """
import gc, sys
from flows.records import RawRecord
from runtimes.process import tune_gc
print(tune_gc(int(sys.argv[1])), gc.get_threshold()[0], gc.get_freeze_count() > 0)
before = gc.get_stats()
for _ in range(20):
    batch = [RawRecord("t", 0, i, b"k", b"v") for i in range(10_000)]
    del batch
after = gc.get_stats()
print(*(after[g]["collections"] - before[g]["collections"] for g in (0, 2)))
"""


def test_gc_tuning_lets_a_batch_die_young() -> None:
    default, tuned = _child(_BATCHES, "0"), _child(_BATCHES, "50000")
    assert default[:3] == ["False", "700", "False"]  # 0 leaves Python's collector alone
    assert tuned[:3] == ["True", "50000", "True"]
    young, full = int(default[3]), int(default[4])
    assert young > 200 and full >= 1  # every batch promoted to the old generations
    assert int(tuned[3]) <= 5 and int(tuned[4]) == 0
