"""State queries of encrypted flows (no socket): served decrypted only when the server asks
for a credential, 503 without state keys, no search; answered from the driver's store."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest

from flows import JSON, STR, App, Record, StatefulMap, StateKeys, Topic, Tumbling, Window
from flows.testing import TestDriver
from runtimes.http import HttpApi, Response
from runtimes.metrics import PrometheusMetrics
from tests.unit.test_http_unit import FakeBroker

events = Topic("events", key_format=STR, value_format=JSON, partitions=1)
out = Topic("out", key_format=STR, value_format=JSON, partitions=1)
CARD = "4111-1111-1111-1111"


def keep(record: Record[str, Any], state: Any) -> tuple[Any, Any]:
    return None, record.value


APP = App(
    "q",
    [
        StatefulMap(name="cards", source=events, sink=out, fn=keep, encrypt=True),
        StatefulMap(name="plain", source=events, sink=out, fn=keep),
        StatefulMap(
            name="timed",
            source=events,
            sink=out,
            fn=keep,
            ttl=timedelta(hours=1),
            encrypt=True,
        ),
        Window(
            name="windows",
            source=events,
            sink=out,
            window=Tumbling(timedelta(minutes=1)),
            initial=list,
            fn=lambda record, acc: [*acc, record.value["card"]],
            timestamp=lambda r: r.value["ts"],
            encrypt=True,
        ),
    ],
)


@pytest.fixture
def driver() -> TestDriver:
    driver = TestDriver(APP, state_keys=StateKeys.generate("k1"))
    driver.pipe("events", {"card": CARD, "ts": 0}, key="ann")
    return driver


def _api(app: App, driver: TestDriver, guarded: bool) -> HttpApi:
    return HttpApi(
        app,
        (),
        metrics=PrometheusMetrics(),
        broker=FakeBroker(),
        query_store=driver.store,
        guarded=guarded,
    )


def _json(response: Response) -> Any:
    return json.loads(response.body)


def test_an_encrypted_state_is_served_decrypted_when_callers_must_authenticate(
    driver: TestDriver,
) -> None:
    api = _api(driver.app, driver, guarded=True)
    one = api.state("/state/cards/ann", "")
    assert one.status == 200 and _json(one)["state"] == {"card": CARD, "ts": 0}
    assert any(name == "ETag" for name, _ in one.headers)
    page = api.state("/state/cards", "limit=10")
    assert [item["state"]["card"] for item in _json(page)["items"]] == [CARD]
    assert _json(api.state("/state/timed/ann", ""))["state"] == {"card": CARD, "ts": 0}
    assert [w["value"] for w in _json(api.state("/state/windows/ann", ""))["windows"]] == [[CARD]]


def test_an_open_server_refuses_encrypted_states_and_says_how_to_guard_them(
    driver: TestDriver, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "flows.http"):
        api = _api(driver.app, driver, guarded=False)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3 and all("FLOWS_HTTP_TOKEN" in line for line in warned)
    for path, query in (
        ("/state/cards/ann", ""),
        ("/state/cards", ""),
        ("/state/timed/ann", ""),
        ("/state/windows/ann", ""),
    ):
        refused = api.state(path, query)
        assert refused.status == 403, path
        assert CARD.encode() not in refused.body
        assert "authenticated callers only" in _json(refused)["error"]
    assert api.state("/state/plain/ann", "").status == 200  # what is not encrypted stays open


def test_without_state_keys_the_server_answers_503(driver: TestDriver) -> None:
    api = _api(APP, driver, guarded=True)  # the app as declared: no cipher
    answer = api.state("/state/cards/ann", "")
    assert answer.status == 503 and "FLOWS_STATE_KEYS" in _json(answer)["error"]
    assert api.state("/state/plain/ann", "").status == 200


def test_an_encrypted_state_cannot_be_searched(driver: TestDriver) -> None:
    answer = _api(driver.app, driver, guarded=True).state("/state/cards", "where=%7B%7D")
    assert answer.status == 400 and "encrypts its state" in _json(answer)["error"]


def test_the_token_alone_guards_by_default(driver: TestDriver) -> None:
    api = HttpApi(
        driver.app,
        (),
        metrics=PrometheusMetrics(),
        broker=FakeBroker(),
        query_store=driver.store,
        token="t0ken",
    )
    assert api.guarded and api.state("/state/cards/ann", "").status == 200
