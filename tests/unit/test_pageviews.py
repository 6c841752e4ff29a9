"""The pageviews example through the test driver: its contract (examples/pageviews/app.py)."""

from __future__ import annotations

from datetime import timedelta

from examples.pageviews.app import app
from flows.testing import TestDriver

MINUTE = 60_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (60 * MINUTE)  # an hour boundary


def view(driver: TestDriver, user: str, page: str, at: int) -> None:
    driver.pipe("pageviews", {"user": user, "page": page, "ts": T0 + at}, key=user)


def test_views_per_minute_are_final_and_late_views_dead_letter() -> None:
    driver = TestDriver(app)
    for at in (0, 20_000, 59_000, 61_000):
        view(driver, "ann", "/home", at)
    assert driver.read("views-per-minute") == []
    view(driver, "ann", "/home", 70_000)  # a minute and ten seconds of grace: the first closes
    (first,) = driver.read("views-per-minute")
    assert first.key == "ann"
    assert first.value == {"start": T0, "end": T0 + MINUTE, "value": 3}
    view(driver, "ann", "/late", 30_000)
    assert [r.header("flows.error.type") for r in driver.read("pageviews.dlq")] == [b"LateRecord"]


def test_sessions_end_after_thirty_quiet_minutes_and_quiet_streams_close() -> None:
    driver = TestDriver(app)
    view(driver, "bob", "/a", 0)
    view(driver, "bob", "/b", 10 * MINUTE)
    view(driver, "bob", "/a", 35 * MINUTE)  # within 30 minutes of the last view: same session
    assert driver.read("sessions") == []
    view(driver, "bob", "/c", 66 * MINUTE)  # past 35 + 30: the first session closes
    (first,) = driver.read("sessions")
    assert first.value == {
        "user": "bob",
        "start": T0,
        "end": T0 + 35 * MINUTE,
        "views": 3,
        "pages": ["/a", "/b"],
    }
    # nothing more arrives: once the partition is quiet, its stream time follows the clock
    driver.advance(timedelta(minutes=29))
    assert driver.read("sessions") == []
    driver.advance(timedelta(minutes=2))
    assert [r.value["views"] for r in driver.read("sessions")] == [1]


def test_error_alerts_are_rate_limited_and_abandoned_carts_alert() -> None:
    driver = TestDriver(app)
    for at in (0, 10_000, 50_000):  # three errors within a minute: one alert
        view(driver, "cid", "/error/500", at)
    view(driver, "cid", "/error/500", 61_000)  # muted until 60,000: alerts again
    view(driver, "cid", "/cart/add", 62_000)
    view(driver, "dan", "/cart/add", 62_000)
    view(driver, "dan", "/checkout", 70_000)
    view(driver, "cid", "/home", 93 * MINUTE)  # stream time passes both carts' deadlines
    alerts = [(r.key, r.value["alert"]) for r in driver.read("alerts")]
    assert alerts == [("cid", "errors"), ("cid", "errors"), ("cid", "abandoned-cart")]
