"""Encryption at rest against the real broker and database: an app with ``encrypt=True`` run
by `flows run` leaves no state in the clear in its table, serves its states decrypted over
``/state`` to authenticated callers, and goes through a key rotation (restart with a new key
first, ``flows state rotate``, the old key dropped); a process without the key that wrote a
value stops with an error naming the flow and the key id."""

from __future__ import annotations

import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
import sqlalchemy as sa

from flows import StateKeys
from tests.conftest import UniqueFn
from tests.helpers import flows_env, kill, run_cli, start_cli, wait_until, write_app
from tests.integration.test_http import call, free_port, post_json

pytestmark = pytest.mark.integration

APP = """
from flows import JSON, STR, App, Ingest, Message, StatefulMap, Topic

payments = Topic("{payments}", key_format=STR, value_format=JSON, partitions=3)
totals = Topic("{totals}", key_format=STR, value_format=JSON, partitions=3)


def accept(record):
    return Message(record.value, key=record.value["user"])


def total(record, state):
    state = state or {{"card": record.value["card"], "total": 0}}
    state = {{**state, "total": state["total"] + record.value["amount"]}}
    return state["total"], state


app = App("{name}", [
    Ingest(name="pay", path="/payments", sink=payments, fn=accept),
    StatefulMap(name="totals", source=payments, sink=totals, fn=total, encrypt=True),
])
"""

USERS = ["u1", "u2", "u3", "u4"]


def card(user: str) -> str:
    """A value that must never be in the table in the clear."""
    return f"4111-0000-{user}-secret"


@dataclass
class Deployment:
    """The app's file and environment; :meth:`start` runs it with some state keys."""

    path: Path
    name: str
    table: str
    env: dict[str, str]
    tmp: Path
    token: str
    runs: int = 0

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, keys: str) -> tuple[Popen[bytes], str, Path]:
        self.runs += 1
        port = free_port()
        log = self.tmp / f"run-{self.runs}.log"
        env = {**self.env, "FLOWS_STATE_KEYS": keys}
        process = start_cli(
            ["run", str(self.path), "--http-port", str(port), "--http-host", "127.0.0.1"],
            env,
            log,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(base) or process.poll() is not None, 90, "the app to be ready")
        assert process.poll() is None, log.read_text()
        return process, base, log

    def stop(self, process: Popen[bytes], log: Path, *secrets: str) -> None:
        kill(process, signal.SIGTERM)
        text = log.read_text()
        assert process.returncode == 0, text
        for secret in (self.token, *secrets):
            assert secret not in text


def _ready(base: str) -> bool:
    try:
        return call(f"{base}/readyz").status == 200
    except OSError:
        return False


@pytest.fixture
def deployment(
    tmp_path: Path,
    unique: UniqueFn,
    bootstrap_servers: str,
    database_url: str,
    engine: sa.Engine,
) -> Iterator[Deployment]:
    name = unique("enc")
    source = APP.format(payments=unique("payments"), totals=unique("totals"), name=name)
    token = f"token-{uuid.uuid4().hex}"
    env = flows_env(bootstrap_servers, database_url, FLOWS_HTTP_TOKEN=token)
    table = re.sub(r"[^a-z0-9_]", "_", name.lower()) + "_totals_state"
    yield Deployment(write_app(tmp_path / "app.py", source), name, table, env, tmp_path, token)
    with engine.begin() as conn:  # its ciphertext is of no use to anyone after the test
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def _pay(base: str, token: str, user: str, amount: int) -> None:
    answer = post_json(
        f"{base}/payments",
        {"user": user, "card": card(user), "amount": amount},
        {"Authorization": f"Bearer {token}"},
    )
    assert answer.status == 202, answer.body


def _state(d: Deployment, base: str, user: str) -> Any:
    answer = call(f"{base}/state/totals/{user}", headers=d.auth)
    return answer.json()["state"] if answer.status == 200 else None


def _sql(engine: sa.Engine, statement: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(statement), params).all())


def _key_ids(engine: sa.Engine, table: str) -> dict[str, str]:
    """Each row's key id, read from the encryption header with SQL: version byte 1, the
    id's length, the id."""
    rows = _sql(
        engine,
        f"SELECT key, get_byte(value, 0),"
        f" convert_from(substring(value FROM 3 FOR get_byte(value, 1)), 'UTF8') FROM {table}",
    )
    assert {version for _, version, _ in rows} == {1}
    return {key: key_id for key, _, key_id in rows}


def _no_plaintext(engine: sa.Engine, table: str) -> None:
    """No value holds a card or a field name, as bytes (the column is BYTEA)."""
    for needle in [*(card(u) for u in USERS), "total", "card"]:
        found = _sql(
            engine,
            f"SELECT key FROM {table} WHERE position(convert_to(:n, 'UTF8') IN value) > 0",
            n=needle,
        )
        assert found == [], needle


def test_encrypted_states_at_rest_over_http_and_through_a_key_rotation(
    deployment: Deployment, engine: sa.Engine
) -> None:
    d = deployment
    k1, k2 = StateKeys.generate("k1"), StateKeys.generate("k2")
    first, both, second = k1.to_setting(), f"{k2.to_setting()},{k1.to_setting()}", k2.to_setting()

    # 1. encrypted at rest, decrypted over HTTP for callers with the token
    process, base, log = d.start(first)
    for user in USERS:
        _pay(base, d.token, user, 10)
    _pay(base, d.token, "u1", 5)
    expected = {u: {"card": card(u), "total": 15 if u == "u1" else 10} for u in USERS}
    wait_until(lambda: all(_state(d, base, u) == expected[u] for u in USERS), 60, "the totals")
    assert _sql(
        engine,
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_name = :t AND column_name = 'value'",
        t=d.table,
    ) == [("bytea",)]
    _no_plaintext(engine, d.table)
    assert _key_ids(engine, d.table) == dict.fromkeys(USERS, "k1")
    page = call(f"{base}/state/totals?limit=10", headers=d.auth).json()
    assert {i["key"]: i["state"] for i in page["items"]} == expected
    assert call(f"{base}/state/totals/u1").status == 401
    searched = call(f"{base}/state/totals?where=%7B%7D", headers=d.auth)
    assert searched.status == 400 and "encrypts" in searched.json()["error"]
    d.stop(process, log, k1.to_setting().split(":")[1])

    # 2. restarted with a new key first: old values read, changed ones rewritten with it
    process, base, log = d.start(both)
    assert all(_state(d, base, u) == expected[u] for u in USERS)
    _pay(base, d.token, "u1", 1)
    _pay(base, d.token, "u2", 1)
    expected["u1"]["total"], expected["u2"]["total"] = 16, 11
    wait_until(
        lambda: _state(d, base, "u1") == expected["u1"] and _state(d, base, "u2") == expected["u2"],
        60,
        "the new totals",
    )
    assert _key_ids(engine, d.table) == {"u1": "k2", "u2": "k2", "u3": "k1", "u4": "k1"}
    _no_plaintext(engine, d.table)
    d.stop(process, log)

    # 3. `flows state rotate` rewrites what is left, keeping each row's version
    versions = dict(_sql(engine, f"SELECT key, source_offset FROM {d.table}"))
    rotated = run_cli(
        ["state", "rotate", str(d.path), "totals", "--batch", "3"],
        {**d.env, "FLOWS_STATE_KEYS": both},
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "4 values, 2 rewritten with key 'k2', 2 already under it" in rotated.stdout
    assert _key_ids(engine, d.table) == dict.fromkeys(USERS, "k2")
    assert dict(_sql(engine, f"SELECT key, source_offset FROM {d.table}")) == versions
    _no_plaintext(engine, d.table)

    # 4. the old key dropped: every value still reads
    process, base, log = d.start(second)
    assert all(_state(d, base, u) == expected[u] for u in USERS)
    _pay(base, d.token, "u3", 1)
    wait_until(lambda: _state(d, base, "u3") == {"card": card("u3"), "total": 11}, 60, "u3")
    d.stop(process, log)

    # 5. a process without the key that wrote the values stops, naming flow and key id
    process, base, log = d.start(first)
    _pay(base, d.token, "u4", 1)
    wait_until(lambda: process.poll() is not None, 90, "the flow to stop")
    text = log.read_text()
    assert process.returncode == 1, text
    assert "flow 'totals': the stored state of key b'u4'" in text
    assert "encrypted with key id 'k2'" in text and "FLOWS_STATE_KEYS" in text
    assert "dead-letter" not in text.lower()
    assert _key_ids(engine, d.table)["u4"] == "k2"  # nothing was overwritten
