"""``flows run``, with a state store that kills or pauses the process at a chosen commit.

    python -m tests.faults.crashing_worker --kill-after N APP [flows run options]
    python -m tests.faults.crashing_worker --stop-before N APP [flows run options]

Run from the repository root. The app runs exactly as ``flows run`` runs it (``cmd_run``: the
same settings, logging and container), except that the container's ``store`` provider gives
a :class:`CrashingStore`. Only commits that carry state changes or pending outputs count (a
stateful step's batches; not a materialiser's rows, not a bare watermark move), and with
``--only-group GROUP`` only those of that consumer group (``<app>.<flow>``): an app of
several flows can then be killed after a chosen flow's commit, the others stopping wherever
they are.

* ``--kill-after N``: after the Nth such commit has committed in PostgreSQL, the process
  SIGKILLs itself. The worker calls the store's commit just before its Kafka transaction,
  so the kill falls exactly between the two commits: PostgreSQL holds the batch, its state
  and its pending outputs, and Kafka holds nothing of it.
* ``--stop-before N``: before the Nth such commit, the process SIGSTOPs itself, so it is
  paused holding a batch it has computed and not committed. Whoever sends SIGCONT wakes it
  straight into that commit.

Nothing in production code knows about this: the faults live in the test's store.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from dependency_injector import providers

from flows.errors import FencedError
from flows.ports import StateCommit
from runtimes import cli
from runtimes.config import Settings
from runtimes.container import Container
from runtimes.postgres import PostgresStateStore

log = logging.getLogger("flows.tests.crashing_worker")

#: the lines the fault tests wait on; each is logged before the signal it announces
KILLING = "crashing_worker: killing the process after database commit"
STOPPING = "crashing_worker: stopping the process before database commit"
RESUMED = "crashing_worker: resumed before database commit"
REFUSED = "crashing_worker: the database refused the commit"


class CrashingStore(PostgresStateStore):
    """A :class:`PostgresStateStore` whose Nth counted commit kills or pauses the process."""

    def __init__(
        self, url: str, *, kill_after: int = 0, stop_before: int = 0, only_group: str = ""
    ) -> None:
        super().__init__(url)
        self.kill_after = kill_after
        self.stop_before = stop_before
        self.only_group = only_group
        self.counted = 0
        self._count_lock = threading.Lock()  # several flows of one process share the store

    def commit(self, commit: StateCommit) -> None:
        if not (commit.states or commit.pending) or (
            self.only_group and commit.group != self.only_group
        ):
            super().commit(commit)
            return
        with self._count_lock:
            self.counted += 1
            number = self.counted
        partitions = ", ".join(f"{t}[{p}]" for t, p in sorted(commit.watermarks))
        if number == self.stop_before:
            log.warning("%s %d (%s)", STOPPING, number, partitions)
            # To this thread, not the process: a process-directed SIGSTOP is taken by the
            # main thread, which then stops the others, and this one went on into the
            # commit meanwhile and stopped inside it, holding its row locks (seen in CI:
            # the worker taking over waited on them until the test timed out). A signal
            # sent to the calling thread stops the process before this call returns.
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
            log.warning("%s %d", RESUMED, number)
        try:
            super().commit(commit)
        except FencedError as error:
            log.warning("%s %d: %s: %s", REFUSED, number, type(error).__name__, error)
            raise
        if number == self.kill_after:
            log.warning("%s %d (%s)", KILLING, number, partitions)
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.crashing_worker")
    fault = parser.add_mutually_exclusive_group(required=True)
    fault.add_argument("--kill-after", type=int, metavar="N", default=0)
    fault.add_argument("--stop-before", type=int, metavar="N", default=0)
    parser.add_argument("--only-group", metavar="GROUP", default="")
    args, run = parser.parse_known_args(argv)

    def store(settings: Settings) -> CrashingStore:
        return CrashingStore(
            settings.database_url,
            kill_after=args.kill_after,
            stop_before=args.stop_before,
            only_group=args.only_group,
        )

    # A class-level override: the container cmd_run builds gets this store, and every
    # provider that depends on ``store`` (the workers, the database runtime) receives it.
    Container.store.override(providers.Singleton(store, Container.settings))
    return cli.main(["run", *run])


if __name__ == "__main__":
    sys.exit(main())
