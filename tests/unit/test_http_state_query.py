"""State queries over HTTP without services: ETags and 304s, and the JSON search of pages
(``runtimes/http/state_query.py``), on the in-memory store filled by the test driver."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from flows import JSON, STR, App, Record, StatefulMap, Topic, protobuf
from flows._proto.flows_envelope_pb2 import Envelope
from flows.testing import TestDriver
from runtimes.config import Settings
from runtimes.http import HttpApi, HttpRuntime, Response
from runtimes.metrics import PrometheusMetrics
from tests.unit.test_http_unit import FakeBroker

users = Topic("users", key_format=STR, value_format=JSON)
out = Topic("out", key_format=STR, value_format=JSON)
blobs = Topic("blobs", key_format=STR, value_format=STR)


def _profile(record: Record[str, Any], state: Any) -> tuple[None, Any]:
    return None, {**(state or {}), **record.value}


def _blob(record: Record[str, str], state: Any) -> tuple[None, Envelope]:
    return None, Envelope(source_topic=record.value)


APP = App(
    "q",
    [
        StatefulMap(name="profiles", source=users, sink=out, fn=_profile),
        StatefulMap(name="blob", source=blobs, sink=out, fn=_blob, state_format=protobuf(Envelope)),
    ],
)


@pytest.fixture
def driver() -> TestDriver:
    return TestDriver(APP)


def _api(driver: TestDriver) -> HttpApi:
    return HttpApi(
        APP, (), metrics=PrometheusMetrics(), broker=FakeBroker(), query_store=driver.store
    )


def _json(response: Response) -> Any:
    return json.loads(response.body)


def _etag(response: Response) -> str:
    [tag] = [value for name, value in response.headers if name == "ETag"]
    return tag


def test_a_state_carries_its_version_as_an_etag_and_304s_until_it_changes(
    driver: TestDriver,
) -> None:
    api = _api(driver)
    driver.pipe("users", {"plan": "free"}, key="ann")
    first = api.state("/state/profiles/ann", "")
    assert first.status == 200 and _json(first)["state"] == {"plan": "free"}
    tag = _etag(first)
    stored = driver.store.state("q_profiles_state", b"ann")
    assert stored is not None and tag == f'"{stored.version}"'
    for header in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        same = api.state("/state/profiles/ann", "", {"if-none-match": header})
        assert (same.status, same.body, _etag(same)) == (304, b"", tag), header
    assert api.state("/state/profiles/ann", "", {"if-none-match": '"0-999999"'}).status == 200
    driver.pipe("users", {"plan": "pro"}, key="ann")
    changed = api.state("/state/profiles/ann", "", {"if-none-match": tag})
    assert changed.status == 200 and _json(changed)["state"] == {"plan": "pro"}
    assert _etag(changed) != tag
    # another key's change leaves this one's version alone
    driver.pipe("users", {"plan": "free"}, key="bob")
    assert _etag(api.state("/state/profiles/ann", "")) == _etag(changed)


def test_a_missing_key_has_no_etag(driver: TestDriver) -> None:
    missing = _api(driver).state("/state/profiles/nobody", "", {"if-none-match": "*"})
    assert missing.status == 404
    assert not [name for name, _ in missing.headers if name == "ETag"]


def test_pages_carry_versions(driver: TestDriver) -> None:
    api = _api(driver)
    driver.pipe("users", {"plan": "free"}, key="ann")
    [item] = _json(api.state("/state/profiles", ""))["items"]
    assert f'"{item["version"]}"' == _etag(api.state("/state/profiles/ann", ""))


def _where(api: HttpApi, where: str, extra: str = "") -> Response:
    return api.state("/state/profiles", f"where={quote(where)}{extra}")


def test_where_filters_by_containment_and_pages(driver: TestDriver) -> None:
    api = _api(driver)
    for i in range(9):
        plan = "pro" if i % 2 else "free"
        driver.pipe("users", {"plan": plan, "n": i, "tags": ["a", f"t{i % 3}"]}, key=f"u{i}")
    seen: list[str] = []
    after = ""
    while True:
        page = _json(_where(api, '{"plan": "pro"}', f"&limit=2{after}"))
        assert len(page["items"]) <= 2
        seen += [item["key"] for item in page["items"]]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert seen == ["u1", "u3", "u5", "u7"]
    tagged = _json(_where(api, '{"tags": ["t0"], "plan": "free"}'))["items"]
    assert [item["key"] for item in tagged] == ["u0", "u6"]
    assert tagged[0]["state"] == {"plan": "free", "n": 0, "tags": ["a", "t0"]}
    prefixed = _json(_where(api, '{"plan": "free"}', "&prefix=u8"))["items"]
    assert [item["key"] for item in prefixed] == ["u8"]
    assert _json(_where(api, '{"plan": "gold"}')) == {"items": [], "next": None}
    unicode = _where(api, '{"name": "ü"}')
    assert unicode.status == 200


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("{plan: pro}", "where must be a JSON value"),
        ("", "where must be a JSON value"),
        ('{"mean": NaN}', "where must be a JSON value"),
        ('{"name": "a\\u0000"}', "U+0000"),
        ('"\\ud800"', "where must be a JSON value"),
    ],
)
def test_a_where_that_is_not_json_is_a_400_saying_what_to_fix(
    driver: TestDriver, where: str, says: str
) -> None:
    answer = _where(_api(driver), where)
    assert answer.status == 400
    assert says in _json(answer)["error"]


def test_a_where_that_is_not_utf8_is_a_400(driver: TestDriver) -> None:
    answer = _api(driver).state("/state/profiles", "where=%FF")
    assert answer.status == 400 and "JSON" in _json(answer)["error"]


def test_a_where_on_a_flow_whose_state_is_not_json_is_a_400(driver: TestDriver) -> None:
    driver.pipe("blobs", "x", key="k")
    api = _api(driver)
    answer = api.state("/state/blob", "where=%7B%7D")
    assert answer.status == 400
    assert "keeps its state as protobuf:flows.v1.Envelope, not JSON" in _json(answer)["error"]
    assert api.state("/state/blob", "").status == 200  # without where, it pages as before


@pytest.fixture
def served(driver: TestDriver) -> Iterator[tuple[str, int]]:
    runtime = HttpRuntime(Settings(http_host="127.0.0.1", http_port=0), _api(driver))
    runtime.start()
    try:
        yield runtime.address
    finally:
        runtime.stop()


def test_a_304_on_the_wire_has_no_body_and_keeps_the_etag(
    driver: TestDriver, served: tuple[str, int]
) -> None:
    driver.pipe("users", {"plan": "free"}, key="ann")

    def get(headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*served, timeout=10)
        try:
            connection.request("GET", "/state/profiles/ann", headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    status, headers, _ = get({})
    assert status == 200
    tag = headers["ETag"]
    status, headers, body = get({"If-None-Match": tag})
    assert (status, body, headers["ETag"]) == (304, b"", tag)
    assert "Content-Length" not in headers
