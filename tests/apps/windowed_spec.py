"""What tests/apps/windowed_app.py and the tests that check it agree on: names and numbers.

Kept apart from the app so that a test can read them without building the app (a test
module that fails to import stops the whole pytest session, not just its own tests).

The names come from the environment, so that every test has its own app (and so its own
consumer groups ``<app>.<flow>`` and state tables) and topics:

* source ``<app>.events`` (``WINDOWED_PARTITIONS`` partitions, default 3);
* sinks ``<app>.tumbling``, ``<app>.hopping``, ``<app>.session``, as many partitions;
* dead letters ``<app>.events.dlq`` (the default ``<source>.dlq``, shared by the three flows;
  each dead-letter record names its flow in the ``flows.flow`` header).

The windows' parameters are in plain milliseconds, as the independent simulation
(tests/window_simulation.py) takes them.
"""

from __future__ import annotations

import os
from datetime import timedelta

APP_VARIABLE = "WINDOWED_APP"
PARTITIONS_VARIABLE = "WINDOWED_PARTITIONS"

TUMBLING_SIZE_MS, TUMBLING_GRACE_MS = 1_000, 200
HOPPING_SIZE_MS, HOPPING_HOP_MS, HOPPING_GRACE_MS = 2_000, 500, 300
SESSION_GAP_MS, SESSION_GRACE_MS = 300, 100
CLOSE_AFTER_IDLE = timedelta(seconds=1)

#: the flows, each writing to the sink ``<app>.<flow>``
FLOWS = ("tumbling", "hopping", "session")


def app_name() -> str:
    return os.environ.get(APP_VARIABLE, "windowed")


def partitions() -> int:
    return int(os.environ.get(PARTITIONS_VARIABLE, "3"))


def source_name(app: str) -> str:
    return f"{app}.events"


def sink_name(app: str, flow: str) -> str:
    return f"{app}.{flow}"


def dead_letter_name(app: str) -> str:
    return f"{source_name(app)}.dlq"
