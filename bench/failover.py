"""The failover case: a worker holding N keys of state is SIGKILLed; how soon does a
replacement produce again?

One run per state size N (the variant) and system, every system running the same count
(``BENCH_CASE=count``: a running count per record key, out as ``"<count> <value>"``):

1. **Build**: the system counts the size's input topic, one record per key, until its
   consumer group's committed offsets reach the topic's end. The topic is produced once
   per size and read by every system in turn; the fresh records earlier systems' phases
   appended are counted too (the expected counts follow them).
2. **Kill and replace**, twice (:data:`PHASES`). The worker gets SIGKILL; ``fresh`` records
   go to the input, each a key drawn from the N (so its state matters) with the phase's
   marker as value; the bench waits until the broker has dropped the dead member (its
   session timeout, :data:`SESSION_TIMEOUT_MS` for every system: failure detection is one
   Kafka setting, the same for all, and outside the figures); then a replacement starts.
   ``same-host`` keeps the killed worker's local state directory; ``new-host`` starts with
   none, as a rescheduled container without a volume: Quix Streams and Kafka Streams
   restore their changelogs into RocksDB, flows' state is in PostgreSQL either way.
3. **Figures**, from the replacement's process start (``Popen``): ``joined_s`` (its group
   stable with partitions assigned), ``first_output_s`` (the first output of a fresh
   record visible to a read_committed consumer) and ``caught_up_s`` (all of them visible:
   everything produced so far consumed). Each new output is checked (:class:`Watch`): the
   phase's marker, each key once, the count the input implies; a system that lost state or
   repeated an output fails the run.

The kills happen while the worker is idle (its offsets committed): what is measured is the
cost of state, not of an aborted transaction's timeout.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, TopicPartition

from bench import data
from bench.broker import produce
from bench.measure import Child

if TYPE_CHECKING:
    from bench.harness import Harness, Prepared, Result

#: every system's consumer session timeout in this case (the broker's minimum by default)
SESSION_TIMEOUT_MS = 6000
#: the replacements, in order: local state kept, then none
PHASES = ("same-host", "new-host")
#: how long the broker may take to drop a killed member (its session, then a rebalance)
DROP_TIMEOUT_S = 60.0


@dataclass
class Watch:
    """The new outputs of one phase as a read_committed consumer sees them, checked.

    ``expected`` maps each fresh record's key to the output value it must give (its count,
    a space, the phase's marker); a key seen twice, a key not expected or a wrong value is a
    problem. Times are ``time.monotonic()`` values.
    """

    expected: dict[bytes, bytes]
    seen: int = 0
    first_at: float | None = None
    last_at: float | None = None
    wrong: int = 0
    problems: list[str] = field(default_factory=list)
    _left: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._left = set(self.expected)

    def take(self, key: bytes | None, value: bytes, at: float) -> None:
        """One output read at ``at``."""
        self.seen += 1
        if self.first_at is None:
            self.first_at = at
        self.last_at = at
        want = self.expected.get(key or b"")
        if want is None or key not in self._left or value != want:
            self.wrong += 1
            if len(self.problems) < 3:
                why = (
                    "not a fresh key"
                    if want is None
                    else ("a repeat" if key not in self._left else f"expected {want!r}")
                )
                self.problems.append(f"{key!r}: {value!r} ({why})")
        self._left.discard(key or b"")

    @property
    def done(self) -> bool:
        """Every expected output read (or more outputs than expected: a failure)."""
        return not self._left or self.seen >= len(self.expected) + 1


def expected_outputs(
    keys: list[int], appended: Counter[bytes], marker: bytes
) -> dict[bytes, bytes]:
    """What the fresh records of ``keys`` must give: 1 (the build's record) plus every
    record of the key appended so far (``appended`` already counts these), and the marker."""
    found = {}
    for index in keys:
        key = data.key_name(index).encode()
        found[key] = b"%d %s" % (1 + appended[key], marker)
    return found


def follow(
    bootstrap: str, topic: str, starts: dict[int, int], watch: Watch, stop: threading.Event
) -> None:
    """Feeds ``watch`` every committed output of ``topic`` past ``starts`` until ``stop``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-failover-watch",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    try:
        while not stop.is_set():
            for message in consumer.consume(1000, 0.05):
                if message.error() is None:
                    watch.take(message.key(), message.value() or b"", time.monotonic())
    finally:
        consumer.close()


def run(h: Harness, result: Result, log: Path) -> None:
    """The failover run of ``result.system`` at ``result.variant`` keys of state."""
    keys = int(result.variant)
    prepared = h.prepare(result.case, variant=result.variant)
    result.input_records = prepared.records
    child, group, _ = h.start(result, log, prepared.topic, None)
    sink = h.names(result)[1]
    figures: dict[str, Any] = {"keys": keys, "fresh": h.o.failover_fresh, "phases": []}
    result.failover = figures
    peaks: list[float] = []
    try:
        began = time.monotonic()
        if not _caught_up(h, result, child, group, prepared, "building the state"):
            return
        figures["build_s"] = round(time.monotonic() - began, 2)
        figures["build_peak_rss_mb"] = round(child.peak_rss_mb(), 1) or None
        for phase_name in PHASES:
            starts = h.broker.partition_ends(sink)
            child.kill()
            peaks.append(child.peak_rss_mb())
            phase = _fresh(h, prepared, keys)
            if not _dropped(h, result, group):
                return
            if phase_name == "new-host":  # a new host: no local state at all
                shutil.rmtree(h.state_dir(result), ignore_errors=True)
            child, measured = _replace(h, result, log, prepared, sink, starts, phase)
            measured["phase"] = phase_name
            figures["phases"].append(measured)
            if result.status != "ok":
                return
        result.outputs_expected = result.outputs_seen = keys + 2 * h.o.failover_fresh
    finally:
        end = child.stop()
        peaks.append(child.peak_rss_mb())
        result.exit_code = end.code
        result.peak_rss_mb = round(max(peaks), 1) or None
    if result.status != "ok" and not result.error:
        result.error = child.tail()


def _fresh(h: Harness, prepared: Prepared, keys: int) -> dict[str, Any]:
    """Appends one phase's fresh records to the input; returns what they must give."""
    prepared.phases += 1
    marker = b"f%d" % prepared.phases
    chosen = data.fresh_keys(h.o.seed, prepared.phases, h.o.failover_fresh, keys)
    records = [(data.key_name(i).encode(), marker) for i in chosen]
    produce(h.o.bootstrap, prepared.topic, records)
    prepared.appended.update(key for key, _ in records)
    return {"marker": marker, "expected": expected_outputs(chosen, prepared.appended, marker)}


def _caught_up(
    h: Harness, result: Result, child: Child, group: str, prepared: Prepared, doing: str
) -> bool:
    """Waits until ``group`` has committed every input record; fails ``result`` if not."""
    total = prepared.records + sum(prepared.appended.values())
    deadline = time.monotonic() + h.o.timeout
    while h.broker.group_offsets(group, prepared.topic) < total:
        if child.poll() is not None or time.monotonic() > deadline:
            result.status = "failed" if child.poll() is not None else "timeout"
            result.error = f"{doing}: not caught up ({total:,} records):\n{child.tail()}"
            return False
        time.sleep(0.2)
    return True


def _dropped(h: Harness, result: Result, group: str) -> bool:
    """Waits until the broker has dropped the killed member of ``group``."""
    deadline = time.monotonic() + DROP_TIMEOUT_S
    while h.broker.group_members(group) != 0:
        if time.monotonic() > deadline:
            result.status = "failed"
            result.error = f"the broker kept the killed member of {group} past {DROP_TIMEOUT_S} s"
            return False
        time.sleep(0.2)
    return True


def _replace(
    h: Harness,
    result: Result,
    log: Path,
    prepared: Prepared,
    sink: str,
    starts: dict[int, int],
    phase: dict[str, Any],
) -> tuple[Child, dict[str, Any]]:
    """Starts a replacement and times it until every fresh output is committed."""
    watch = Watch(phase["expected"])
    stop = threading.Event()
    reader = threading.Thread(
        target=follow, args=(h.o.bootstrap, sink, starts, watch, stop), daemon=True
    )
    reader.start()
    try:
        child, group, _ = h.start(result, log, prepared.topic, None)
    except BaseException:
        stop.set()
        raise
    measured: dict[str, Any] = {}
    deadline = child.started + h.o.timeout
    try:
        while not watch.done:
            now = time.monotonic()
            if "joined_s" not in measured and h.broker.group_active(group):
                measured["joined_s"] = round(time.monotonic() - child.started, 3)
            if child.poll() is not None or now > deadline:
                result.status = "failed" if child.poll() is not None else "timeout"
                result.error = (
                    f"the replacement did not catch up ({watch.seen:,} of "
                    f"{len(watch.expected):,} fresh outputs):\n{child.tail()}"
                )
                break
            time.sleep(0.02)
    except BaseException:
        child.stop()
        raise
    finally:
        stop.set()
        reader.join(10)
    if watch.first_at is not None:
        measured["first_output_s"] = round(watch.first_at - child.started, 3)
    if watch.done and watch.last_at is not None:
        measured["caught_up_s"] = round(watch.last_at - child.started, 3)
    measured["peak_rss_mb"] = round(child.peak_rss_mb(), 1) or None
    if watch.wrong and result.status == "ok":
        result.status = "failed"
        result.error = (
            f"{watch.wrong:,} wrong fresh outputs of {watch.seen:,}, for example "
            + "; ".join(watch.problems)
        )
    return child, measured
