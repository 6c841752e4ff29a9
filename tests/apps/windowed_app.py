"""Three windowed flows over one topic of timestamped JSON events, for the window tests.

    WINDOWED_APP=win_1234 WINDOWED_PARTITIONS=4 flows run tests.apps.windowed_app:app

Each record's value is ``{"ts": <epoch ms>, "n": <int>, ...}``, keyed by a user id (STR).
From the same events: events per key per second (tumbling, 200 ms grace), the sum of ``n``
per key over 2 s every 500 ms (hopping), and events per key per session of activity (300 ms
gap, no ``merge``). Names and numbers are in tests/apps/windowed_spec.py.
"""

from __future__ import annotations

from datetime import timedelta

from flows import JSON, STR, App, Hopping, Session, Topic, Tumbling, Window
from tests.apps.windowed_spec import (
    CLOSE_AFTER_IDLE,
    HOPPING_GRACE_MS,
    HOPPING_HOP_MS,
    HOPPING_SIZE_MS,
    SESSION_GAP_MS,
    SESSION_GRACE_MS,
    TUMBLING_GRACE_MS,
    TUMBLING_SIZE_MS,
    app_name,
    partitions,
    sink_name,
    source_name,
)

ms = timedelta(milliseconds=1)


def build(name: str, partitions: int) -> App:
    events = Topic(source_name(name), key_format=STR, value_format=JSON, partitions=partitions)

    def sink(flow: str) -> Topic:
        return Topic(
            sink_name(name, flow), key_format=STR, value_format=JSON, partitions=partitions
        )

    return App(
        name,
        [
            Window(
                name="tumbling",
                source=events,
                sink=sink("tumbling"),
                window=Tumbling(TUMBLING_SIZE_MS * ms),
                timestamp=lambda r: r.value["ts"],
                grace=TUMBLING_GRACE_MS * ms,
                initial=lambda: 0,
                fn=lambda record, acc: acc + 1,
                close_after_idle=CLOSE_AFTER_IDLE,
            ),
            Window(
                name="hopping",
                source=events,
                sink=sink("hopping"),
                window=Hopping(HOPPING_SIZE_MS * ms, HOPPING_HOP_MS * ms),
                timestamp=lambda r: r.value["ts"],
                grace=HOPPING_GRACE_MS * ms,
                initial=lambda: 0,
                fn=lambda record, acc: acc + record.value["n"],
                close_after_idle=CLOSE_AFTER_IDLE,
            ),
            Window(
                name="session",
                source=events,
                sink=sink("session"),
                window=Session(SESSION_GAP_MS * ms),
                timestamp=lambda r: r.value["ts"],
                grace=SESSION_GRACE_MS * ms,
                initial=lambda: 0,
                fn=lambda record, acc: acc + 1,  # no merge: a merged session refolds its records
                close_after_idle=CLOSE_AFTER_IDLE,
            ),
        ],
    )


app = build(app_name(), partitions())
