"""Page views: per-user views per minute, browsing sessions, and two alerts kept by timers.

Input: ``pageviews``, key = the user, value ``{"user", "page", "ts"}`` (``ts`` in ms since
the epoch, the event time). The contract (checked by tests):

* ``views-per-minute``: per user and minute (tumbling, 10 s of grace), one final record
  ``{"start", "end", "value": <views>}`` when the minute closes; a view more than 10 s
  after its minute closed is late and goes to ``pageviews.dlq`` (``LateRecord``);
* ``sessions``: per user, a session ends after 30 minutes without a view; one record per
  session ``{"user", "start", "end", "views", "pages"}`` (distinct pages, sorted);
* ``alerts``: a view of an ``/error`` page alerts at most once per user per minute (the
  alerts are muted by an event-time timer), and a ``/cart/add`` with no ``/checkout`` in
  the next 30 minutes of event time alerts ``{"user", "alert": "abandoned-cart"}``.

Quiet streams still close their last minute and session (``close_after_idle``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flows import (
    JSON,
    STR,
    App,
    Record,
    Session,
    StatefulMap,
    Timer,
    Topic,
    Tumbling,
    Window,
    cancel_timer,
    schedule_timer,
)

views = Topic("pageviews", key_format=STR, value_format=JSON)
per_minute = Topic("views-per-minute", key_format=STR, value_format=JSON)
sessions = Topic("sessions", key_format=STR, value_format=JSON)
alerts = Topic("alerts", key_format=STR, value_format=JSON)

#: how long an idle partition waits before its stream time follows the wall clock
IDLE = timedelta(seconds=5)


def event_time(record: Record[str, dict[str, Any]]) -> int:
    return int(record.value["ts"])


def visit(record: Record[str, dict[str, Any]], acc: dict[str, Any]) -> dict[str, Any]:
    pages = sorted({*acc["pages"], record.value["page"]})
    return {"views": acc["views"] + 1, "pages": pages}


def merge_sessions(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {
        "views": first["views"] + second["views"],
        "pages": sorted({*first["pages"], *second["pages"]}),
    }


def session_result(user: str, start: int, end: int, acc: dict[str, Any]) -> dict[str, Any]:
    return {"user": user, "start": start, "end": end, **acc}


def watch(record: Record[str, dict[str, Any]], state: Any) -> tuple[Any, Any]:
    """Error pages alert unless muted; carts wait 30 minutes for a checkout."""
    page, state = record.value["page"], state or {"muted": False}
    if page == "/cart/add":
        schedule_timer("abandoned-cart", after=timedelta(minutes=30))
    elif page == "/checkout":
        cancel_timer("abandoned-cart")
    elif page.startswith("/error") and not state["muted"]:
        schedule_timer("unmute", after=timedelta(minutes=1))
        alert = {"user": record.key, "alert": "errors", "page": page, "ts": record.value["ts"]}
        return alert, {"muted": True}
    return None, state


def on_timer(user: str, state: Any, timer: Timer) -> tuple[Any, Any]:
    if timer.name == "unmute":
        return None, {"muted": False}
    return {"user": user, "alert": "abandoned-cart", "ts": timer.due}, state


app = App(
    "pageviews",
    [
        Window(
            name="views-per-minute",
            source=views,
            sink=per_minute,
            window=Tumbling(timedelta(minutes=1)),
            timestamp=event_time,
            grace=timedelta(seconds=10),
            initial=lambda: 0,
            fn=lambda record, acc: acc + 1,
            emit="final",
            close_after_idle=IDLE,
        ),
        Window(
            name="sessions",
            source=views,
            sink=sessions,
            window=Session(timedelta(minutes=30)),
            timestamp=event_time,
            initial=lambda: {"views": 0, "pages": []},
            fn=visit,
            merge=merge_sessions,
            result=session_result,
            close_after_idle=IDLE,
        ),
        StatefulMap(
            name="alerts",
            source=views,
            sink=alerts,
            fn=watch,
            on_timer=on_timer,
            timestamp=event_time,
            ttl=timedelta(days=1),
            state_format=JSON,
        ),
    ],
    topics=[views, per_minute, sessions, alerts],
    description="views per minute, sessions and alerts, in event time",
)
