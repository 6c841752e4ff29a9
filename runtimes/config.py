"""Typed, frozen settings of a flows process, and the one translation to librdkafka keys.

Precedence: defaults, then the environment (``FLOWS_*``), then CLI flags. librdkafka
options pass through verbatim (``FLOWS_KAFKA_<OPTION>`` with ``_`` for ``.``, or
``--kafka option=value``) so SASL/SSL work against managed clusters. Secrets are never
printed: :meth:`Settings.masked` is what logs and ``flows config`` show.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from flows.errors import ConfigError

DEFAULT_BOOTSTRAP = "localhost:9092"
DEFAULT_DATABASE_URL = "postgresql://postgres:postgres@localhost:5432/flows"

_SECRET_KEYS = re.compile(r"(password|secret|token|sasl\.jaas|key\.pem|credentials)", re.I)


@dataclass(frozen=True)
class Settings:
    """Everything a process needs besides the app itself."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    database_url: str = DEFAULT_DATABASE_URL
    #: names this process in transactional ids; replicas of one flow need distinct ones
    instance_id: str = field(default_factory=socket.gethostname)
    batch_size: int = 2000
    #: how long a batch may wait to fill up (seconds)
    batch_linger: float = 0.1
    #: a crashed worker's open transaction is aborted by the broker after this long
    transaction_timeout_ms: int = 20000
    session_timeout_ms: int = 10000
    auto_offset_reset: str = "earliest"
    state_cache: bool = True
    #: per owned partition; the cache is dropped past this many keys
    state_cache_keys: int = 100_000
    until_idle: float | None = None
    shutdown_timeout: float = 30.0
    startup_timeout: float = 20.0
    http_port: int = 0
    log_format: str = "text"
    kafka: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.batch_linger < 0:
            raise ConfigError(f"batch_linger must be >= 0, got {self.batch_linger}")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(
                f"auto_offset_reset must be 'earliest' or 'latest', not {self.auto_offset_reset!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', not {self.log_format!r}")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", self.instance_id):
            raise ConfigError(
                f"instance_id {self.instance_id!r} may use letters, digits, '.', '_', '-' only"
            )

    @classmethod
    def from_sources(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Defaults, then ``FLOWS_*`` variables, then ``overrides`` that are not ``None``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"FLOWS_{f.name.upper()}")
            if raw is not None and f.name != "kafka":
                values[f.name] = _parse(f.name, str(f.type), raw)
        kafka = {
            key[len("FLOWS_KAFKA_") :].lower().replace("_", "."): value
            for key, value in environ.items()
            if key.startswith("FLOWS_KAFKA_")
        }
        extra = overrides.pop("kafka", None) or {}
        kafka.update(dict(extra))
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["kafka"] = tuple(sorted(kafka.items()))
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def masked(self) -> dict[str, Any]:
        """The settings with passwords, tokens and SASL secrets replaced by ``***``."""
        shown: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "database_url":
                value = mask_url(value)
            if f.name == "kafka":
                value = {k: ("***" if _SECRET_KEYS.search(k) else v) for k, v in value}
            shown[f.name] = value
        return shown

    # --- the one place where settings become librdkafka configuration ------------------

    def _common(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap_servers, **dict(self.kafka)}

    def consumer_config(self, group_id: str) -> dict[str, Any]:
        return {
            **self._common(),
            "group.id": group_id,
            "client.id": f"{group_id}.{self.instance_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.auto_offset_reset,
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(500, self.session_timeout_ms // 5),
            "max.poll.interval.ms": max(60000, self.session_timeout_ms),
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": 16384,
        }

    def producer_config(self, transactional_id: str | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {
            **self._common(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "batch.num.messages": 10000,
            "queue.buffering.max.kbytes": 262144,
        }
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
            config["transaction.timeout.ms"] = self.transaction_timeout_ms
        return config

    def admin_config(self) -> dict[str, Any]:
        return self._common()

    def sqlalchemy_url(self) -> str:
        return sqlalchemy_url(self.database_url)


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` URLs use psycopg 3 (SQLAlchemy's default would be psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _parse(name: str, kind: str, raw: str) -> Any:
    try:
        if "bool" in kind:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "float" in kind:
            return float(raw)
        if "int" in kind:
            return int(raw)
    except ValueError:
        raise ConfigError(f"FLOWS_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
