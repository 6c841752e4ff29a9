"""An event-time timer per key and a deduplication, over one topic, for the timer tests.

    TIMERS_APP=tim_1234 TIMERS_PARTITIONS=4 flows run tests.apps.timers_app:app

* ``timers`` (StatefulMap): a key's first record schedules the timer ``fire``
  ``TIMER_AFTER_MS`` of event time later; every record counts into the key's state and
  outputs nothing; ``on_timer`` outputs ``{"key", "count", "due"}`` (the count of the key's
  records applied before it fired) and schedules nothing, and as the key's state then
  exists, no later record schedules again: one output per key, ever.
* ``dedup`` (Deduplicate): the first record of each message id ``m`` within
  ``DEDUP_TTL_MS`` of event time passes.

A ``{"flush": true}`` record changes no state: it only moves stream time past every timer.
Names and numbers are in tests/apps/timers_spec.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flows import JSON, STR, App, Deduplicate, Record, StatefulMap, Timer, Topic, schedule_timer
from tests.apps.timers_spec import (
    DEDUP_TTL_MS,
    TIMER_AFTER_MS,
    app_name,
    fired_name,
    partitions,
    source_name,
    unique_name,
)


def count(record: Record[str, dict[str, Any]], state: Any) -> tuple[Any, Any]:
    if record.value.get("flush"):
        return None, state
    if state is None:
        schedule_timer("fire", after=timedelta(milliseconds=TIMER_AFTER_MS))
        state = {"count": 0}
    return None, {"count": state["count"] + 1}


def fire(key: str, state: Any, timer: Timer) -> tuple[Any, Any]:
    return {"key": key, "count": state["count"], "due": timer.due}, state


def build(name: str, partitions: int) -> App:
    def topic(topic_name: str) -> Topic:
        return Topic(topic_name, key_format=STR, value_format=JSON, partitions=partitions)

    events = topic(source_name(name))
    return App(
        name,
        [
            StatefulMap(
                name="timers",
                source=events,
                sink=topic(fired_name(name)),
                fn=count,
                on_timer=fire,
                timestamp=lambda r: r.value["ts"],
            ),
            Deduplicate(
                name="dedup",
                source=events,
                sink=topic(unique_name(name)),
                ttl=timedelta(milliseconds=DEDUP_TTL_MS),
                key=lambda r: r.value["m"],
                timestamp=lambda r: r.value["ts"],
            ),
        ],
    )


app = build(app_name(), partitions())
