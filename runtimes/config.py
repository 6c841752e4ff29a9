"""Typed, frozen settings of a flows process, and the one translation to librdkafka keys.

Precedence: defaults, then the environment (``FLOWS_*``), then CLI flags. librdkafka
options pass through verbatim (``FLOWS_KAFKA_<OPTION>`` with ``_`` for ``.``, or
``--kafka option=value``) so SASL/SSL work against managed clusters. Secrets are never
printed: :meth:`Settings.masked` is what logs and ``flows config`` show.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from flows.encryption import StateKeys
from flows.engine import EngineConfig
from flows.errors import ConfigError

DEFAULT_BOOTSTRAP = "localhost:9092"
DEFAULT_DATABASE_URL = "postgresql://postgres:postgres@localhost:5432/flows"
#: the registry `make services` starts: Apicurio Registry's Confluent-compatible API
DEFAULT_SCHEMA_REGISTRY_URL = "http://localhost:8081/apis/ccompat/v7"

_BOOLEANS = {"true": True, "false": False}

KAFKA_LOG = logging.getLogger("flows.kafka")
_SECRET_KEYS = re.compile(
    r"(password|secret|token|sasl\.jaas|key\.pem|credentials|state_keys)", re.I
)


@dataclass(frozen=True)
class Settings:
    """Everything a process needs besides the app itself."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    database_url: str = DEFAULT_DATABASE_URL
    #: the Schema Registry of apps with registry formats (Confluent's REST API; a
    #: ``mock://`` URL is an in-memory registry of this process only)
    schema_registry_url: str = DEFAULT_SCHEMA_REGISTRY_URL
    #: basic auth of the registry (both or neither)
    schema_registry_user: str | None = None
    schema_registry_password: str | None = field(default=None, repr=False)
    #: TLS: a CA file (or directory) to trust, a client certificate and its key (PEM files)
    schema_registry_ca: str | None = None
    schema_registry_cert: str | None = None
    schema_registry_key: str | None = None
    #: names this process in transactional ids; replicas of one flow need distinct ones
    instance_id: str = field(default_factory=socket.gethostname)
    #: records per batch of stateless and materialise steps
    batch_size: int = 5000
    #: records per batch of stateful steps: each batch costs a PostgreSQL and a Kafka
    #: transaction, and repeated keys collapse into one state write, so bigger batches cost
    #: less per record (wordcount, measured: 10,000 about 10 % faster than 5,000; 20,000 not
    #: clearly faster, and past 150 MB of peak RSS with a materialise flow beside)
    stateful_batch_size: int = 10_000
    #: how long a batch may wait for more records while the broker holds more for it, and
    #: how long an empty poll waits for a first record (seconds); a batch with nothing more
    #: coming goes at once
    batch_linger: float = 0.1
    #: a crashed worker's open transaction is aborted by the broker after this long
    transaction_timeout_ms: int = 20000
    #: records per partition and kilobytes per consumer fetched ahead: throughput against
    #: memory (librdkafka keeps a few hundred bytes per fetched record besides its payload)
    prefetch_messages: int = 10_000
    prefetch_kbytes: int = 65_536
    #: retries of a batch after a transient failure (a flow may set its own)
    retry_attempts: int = 30
    retry_seconds: float = 300.0
    #: bound of each transactional call (send offsets, commit, abort), in seconds
    transaction_op_timeout: float = 15.0
    session_timeout_ms: int = 10000
    auto_offset_reset: str = "earliest"
    #: caps glibc's malloc arenas of a ``flows run`` process (0: glibc's default, 8 per
    #: core): fewer arenas keep less memory for librdkafka's threads, see
    #: ``limit_malloc_arenas``; not the default, as its cost in throughput is not settled
    malloc_arenas: int = 0
    #: allocations between two young-generation garbage collections of a ``flows run``
    #: process (Python's default: 700); see ``tune_gc``. 0 keeps Python's defaults
    gc_threshold: int = 50_000
    state_cache: bool = True
    #: per owned partition; the cache is dropped past this many keys
    state_cache_keys: int = 100_000
    until_idle: float | None = None
    #: worker processes of ``flows run`` under one supervisor (runtimes/supervisor.py)
    processes: int = 1
    shutdown_timeout: float = 30.0
    startup_timeout: float = 20.0
    #: the HTTP server (health, readiness, metrics, state queries, ingest); 0: no server
    http_port: int = 8080
    http_host: str = "0.0.0.0"
    #: when set, state queries and ingest routes need ``Authorization: Bearer <token>``
    http_token: str | None = field(default=None, repr=False)
    #: bearer JWTs (runtimes/http/auth.py): HS256 with this secret (32 bytes or more) and/or
    #: RS256 with the JWKS at this path or http(s) URL; ``aud``/``iss`` checked when set;
    #: the claim naming the flows a token opens
    http_jwt_secret: str | None = field(default=None, repr=False)
    http_jwt_jwks: str | None = None
    http_jwt_audience: str | None = None
    http_jwt_issuer: str | None = None
    http_jwt_claim: str = "flows"
    #: the keys of flows with ``encrypt=True``: ``id:base64-of-32-bytes`` entries separated
    #: by commas; the first encrypts, all decrypt (flows/encryption.py)
    state_keys: str | None = field(default=None, repr=False)
    #: requests handled at once, and accepted connections waiting for a thread; past both,
    #: a connection is answered 503 with ``Retry-After`` at once (runtimes/http/pool.py)
    http_threads: int = 16
    http_queue: int = 128
    #: connections the kernel completes and holds before the server accepts them (a burst
    #: past the backlog sees dropped handshakes and resets; Linux caps it at somaxconn)
    http_backlog: int = 1024
    #: long-lived answers (streams of changes) open at once, each in a thread of its own
    http_streams: int = 100
    #: changes waiting to be sent to one subscriber of ``/state/<flow>/changes``; a
    #: subscriber that falls further behind is dropped (it resumes with Last-Event-ID)
    http_changes_buffer: int = 10_000
    #: seconds between keep-alive comments on a quiet stream of changes
    http_keepalive: float = 5.0
    #: seconds a client has to send its request line and headers, then its body, in all
    #: (not per read: a client that trickles bytes is cut off too); 408 past them
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    #: seconds an answer's write may block on a client that does not read
    http_write_timeout: float = 30.0
    #: the request line and headers, in bytes and in header fields; 431 past them
    http_max_header_bytes: int = 16_384
    http_max_headers: int = 100
    log_format: str = "text"
    kafka: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.malloc_arenas < 0:
            raise ConfigError(
                f"malloc_arenas must be >= 0 (0: glibc's default), got {self.malloc_arenas}"
            )
        if self.gc_threshold < 0:
            raise ConfigError(
                f"gc_threshold must be >= 0 (0: Python's default), got {self.gc_threshold}"
            )
        for name in ("batch_size", "stateful_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.processes < 1:
            raise ConfigError(f"processes must be at least 1, got {self.processes}")
        if self.batch_linger < 0:
            raise ConfigError(f"batch_linger must be >= 0, got {self.batch_linger}")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(
                f"auto_offset_reset must be 'earliest' or 'latest', not {self.auto_offset_reset!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', not {self.log_format!r}")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"http_port must be 0 (no server) to 65535, got {self.http_port}")
        for name in (
            "http_threads",
            "http_queue",
            "http_backlog",
            "http_streams",
            "http_changes_buffer",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "http_header_timeout",
            "http_body_timeout",
            "http_write_timeout",
            "http_keepalive",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be more than 0 seconds, got {getattr(self, name)}")
        if not 1 <= self.http_max_headers <= 100:  # http.server refuses more than 100
            raise ConfigError(f"http_max_headers must be 1 to 100, got {self.http_max_headers}")
        if self.http_max_header_bytes < 256:
            raise ConfigError(
                f"http_max_header_bytes must be at least 256, got {self.http_max_header_bytes}"
            )
        if self.http_token is not None and not self.http_token.strip():
            raise ConfigError("http_token is empty: unset FLOWS_HTTP_TOKEN to serve without one")
        if self.state_keys is not None:
            self.state_keyring  # noqa: B018 (parsed once, so a malformed entry fails here)
        if (self.schema_registry_user is None) != (self.schema_registry_password is None):
            raise ConfigError(
                "schema_registry_user and schema_registry_password go together: set both "
                "(FLOWS_SCHEMA_REGISTRY_USER, FLOWS_SCHEMA_REGISTRY_PASSWORD) or neither"
            )
        if self.schema_registry_key is not None and self.schema_registry_cert is None:
            raise ConfigError(
                "schema_registry_key needs schema_registry_cert (the client certificate)"
            )
        if not self.schema_registry_url.startswith(("http://", "https://", "mock://")):
            raise ConfigError(
                f"schema_registry_url must be an http://, https:// or mock:// URL, not "
                f"{mask_url(self.schema_registry_url)!r}"
            )
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", self.instance_id):
            raise ConfigError(
                f"instance_id {self.instance_id!r} may use letters, digits, '.', '_', '-' only"
            )

    @classmethod
    def from_sources(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults, then ``config_file`` (TOML), then ``FLOWS_*`` variables, then
        ``overrides`` that are not ``None``. A value of the wrong type, or an unknown key
        in the file, fails with a :class:`ConfigError` naming it."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        kafka: dict[str, str] = {}
        known = {f.name: str(f.type) for f in fields(cls)}
        if config_file is None and environ.get("FLOWS_CONFIG"):
            config_file = environ["FLOWS_CONFIG"]
        if config_file is not None:
            for name, value in _read_toml(config_file).items():
                if name == "kafka":
                    if not isinstance(value, dict):
                        raise ConfigError(f"{config_file}: [kafka] must be a table")
                    kafka.update({str(k): str(v) for k, v in value.items()})
                elif name not in known:
                    raise ConfigError(
                        f"{config_file}: unknown setting {name!r}; known: "
                        f"{', '.join(sorted(known))}"
                    )
                else:
                    values[name] = _parse(name, known[name], str(value), f"{config_file}: {name}")
        for name, kind in known.items():
            raw = environ.get(f"FLOWS_{name.upper()}")
            if raw is not None and name != "kafka":
                values[name] = _parse(name, kind, raw, f"FLOWS_{name.upper()}")
        kafka.update(
            {
                key[len("FLOWS_KAFKA_") :].lower().replace("_", "."): value
                for key, value in environ.items()
                if key.startswith("FLOWS_KAFKA_")
            }
        )
        extra = overrides.pop("kafka", None) or {}
        kafka.update(dict(extra))
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["kafka"] = tuple(sorted(kafka.items()))
        return cls(**values)

    @cached_property
    def state_keyring(self) -> StateKeys | None:
        """The parsed :attr:`state_keys` (None when unset); :class:`ConfigError` for a
        malformed entry, naming it but never a secret."""
        if self.state_keys is None:
            return None
        return StateKeys.parse(self.state_keys)

    @property
    def http_guarded(self) -> bool:
        """Whether the HTTP server asks callers of its guarded endpoints for a credential
        (a static token, or JWTs)."""
        return any(
            value is not None
            for value in (self.http_token, self.http_jwt_secret, self.http_jwt_jwks)
        )

    def masked(self) -> dict[str, Any]:
        """The settings with passwords (the database's, the Schema Registry's, in URLs
        too), tokens, SASL secrets and state keys replaced by ``***``."""
        shown: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("database_url", "schema_registry_url"):
                value = mask_url(value)
            if f.name == "kafka":
                value = {k: ("***" if _SECRET_KEYS.search(k) else v) for k, v in value}
            elif value is not None and _SECRET_KEYS.search(f.name):  # tokens, state keys
                value = "***"
            shown[f.name] = value
        return shown

    # --- the one place where settings become librdkafka configuration ------------------

    def _common(self) -> dict[str, Any]:
        # options from files and the environment are text; confluent-kafka's own options
        # (delivery.report.only.error, ...) want real booleans
        passthrough = {k: _BOOLEANS.get(v.lower(), v) for k, v in self.kafka}
        # librdkafka's own log lines go through Python logging (logger "flows.kafka", each
        # naming its client: the client id carries the flow's group), not straight to stderr
        return {"bootstrap.servers": self.bootstrap_servers, "logger": KAFKA_LOG, **passthrough}

    # Tuning comes first and the user's options after it, so ``--kafka`` can change it; the
    # options flows' guarantees rest on come last, so nothing overrides them.

    def consumer_config(self, group_id: str) -> dict[str, Any]:
        return {
            "fetch.wait.max.ms": 100,
            # Prefetch keeps consume() from waiting on the network. librdkafka bounds it by
            # records per partition and by payload kilobytes, but one fetch response can hold
            # far more records: with 1 MB fetches of lz4-compressed words, the wordcount
            # benchmark held 140 MB of librdkafka's per-record bookkeeping (heaptrack).
            # Small fetches bound that.
            "queued.min.messages": self.prefetch_messages,
            "queued.max.messages.kbytes": self.prefetch_kbytes,
            "max.partition.fetch.bytes": 65536,
            # A partition whose queue is full is fetched again after this long: librdkafka's
            # default (1 s) halved wordcount's throughput once the queue was bounded.
            "fetch.queue.backoff.ms": 5,
            **self._common(),
            "group.id": group_id,
            "client.id": f"{group_id}.{self.instance_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.auto_offset_reset,
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            # from session_timeout_ms, which the idle and settled checks also read
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(500, self.session_timeout_ms // 5),
            "max.poll.interval.ms": max(60000, self.session_timeout_ms),
        }

    def producer_config(self, transactional_id: str | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {
            "linger.ms": 5,
            "compression.type": "lz4",
            "batch.num.messages": 10000,
            # a batch in flight, not a backlog: produce() waits for deliveries when the queue
            # is full, and an explode batch of 50,000 outputs no longer sits here whole
            "queue.buffering.max.messages": 20000,
            "queue.buffering.max.kbytes": 32768,
            # A transaction begun while the broker still writes the previous one's markers
            # is answered CONCURRENT_TRANSACTIONS and retried after this backoff (growing to
            # retry.backoff.max.ms): librdkafka's 100 ms made every exactly-once batch wait
            # ~100 ms in send_offsets_to_transaction (measured; the Java producer retries
            # this case after 20 ms for the same reason).
            "retry.backoff.ms": 10,
            **self._common(),
            "enable.idempotence": True,
            "acks": "all",
            # Java clients' partitioner: keys land where other clients (and joins) expect them
            "partitioner": "murmur2_random",
            # failed deliveries still reach the callback; successes cost nothing
            "delivery.report.only.error": True,
        }
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
            config["transaction.timeout.ms"] = self.transaction_timeout_ms
        return config

    def engine_config(self) -> EngineConfig:
        """What the worker loop reads of these settings."""
        return EngineConfig(
            instance_id=self.instance_id,
            batch_size=self.batch_size,
            stateful_batch_size=self.stateful_batch_size,
            batch_linger=self.batch_linger,
            auto_offset_reset=self.auto_offset_reset,
            state_cache=self.state_cache,
            state_cache_keys=self.state_cache_keys,
            retry_attempts=self.retry_attempts,
            retry_seconds=self.retry_seconds,
        )

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


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"no configuration file at {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error


def _parse(name: str, kind: str, raw: str, where: str = "") -> Any:
    where = where or name
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
        raise ConfigError(f"{where}={raw!r} is not a valid {kind}") from None
    return raw
