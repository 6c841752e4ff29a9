"""What tests/apps/timers_app.py and the tests that check it agree on: names and numbers.

Kept apart from the app, as tests/apps/windowed_spec.py is, so that a test reads them
without building the app. The names come from the environment (``TIMERS_APP``,
``TIMERS_PARTITIONS``), so every test has its own app, consumer groups ``<app>.<flow>``,
tables and topics:

* source ``<app>.events``: values ``{"ts": <epoch ms>, "m": <message id>, "i": <int>}``,
  keyed by a user id (STR); a value with ``"flush": true`` only moves stream time;
* ``<app>.fired``: the timers flow's outputs, one per key, ``{"key", "count", "due"}``;
* ``<app>.unique``: the dedup flow's outputs, the records that pass, unchanged.
"""

from __future__ import annotations

import os

APP_VARIABLE = "TIMERS_APP"
PARTITIONS_VARIABLE = "TIMERS_PARTITIONS"

#: a key's timer falls due this long (event time) after the key's first record
TIMER_AFTER_MS = 1_000
#: the dedup flow passes the first record of each message id within this long
DEDUP_TTL_MS = 2_000

#: the flows, each a consumer group ``<app>.<flow>``
FLOWS = ("timers", "dedup")


def app_name() -> str:
    return os.environ.get(APP_VARIABLE, "timers")


def partitions() -> int:
    return int(os.environ.get(PARTITIONS_VARIABLE, "3"))


def source_name(app: str) -> str:
    return f"{app}.events"


def fired_name(app: str) -> str:
    return f"{app}.fired"


def unique_name(app: str) -> str:
    return f"{app}.unique"


def dead_letter_name(app: str) -> str:
    return f"{source_name(app)}.dlq"
