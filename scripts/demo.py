"""The wordcount demo (`make demo`): count a text exactly-once, kill the worker halfway, and
show that the counts are still exact.

It resets the app, produces a few thousand generated lines, starts `flows run wordcount`,
shows the progress, SIGKILLs the worker halfway through and starts it again, then checks the
`word_counts` table against a count made here, independently, prints the top words and asks
the worker's HTTP server for one word's state. The worker's own log goes to a file, so the
terminal shows only what the demo has to say.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka import Producer

from runtimes.config import Settings

REPO = Path(__file__).resolve().parent.parent
FLOWS = str(REPO / ".venv" / "bin" / "flows")
LOG = REPO / ".cache" / "demo" / "worker.log"
WORD = re.compile(r"[^\W_]+")  # the app's own definition of a word (examples/wordcount)
LINES = int(os.environ.get("FLOWS_DEMO_LINES", "20000"))
PORT = int(os.environ.get("FLOWS_DEMO_HTTP_PORT", "8080"))


def say(text: str = "") -> None:
    print(text, flush=True)


def generated_text(lines: int, seed: int = 7) -> list[str]:
    """Lines of words drawn from the sample text's vocabulary, skewed like real text."""
    sample = (REPO / "examples" / "wordcount" / "sample.txt").read_text(encoding="utf-8")
    vocabulary = sorted(set(WORD.findall(sample.lower())))
    rng = random.Random(seed)
    rng.shuffle(vocabulary)  # which words are frequent: any, but the same every run
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(4, 12))) for _ in range(lines)]


def flows(*args: str) -> None:
    subprocess.run([FLOWS, *args], check=True, stdout=subprocess.DEVNULL, cwd=REPO)


def start_worker() -> subprocess.Popen[bytes]:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("ab") as log:
        return subprocess.Popen(
            # small batches: many commits, so the kill lands with work in flight
            [
                FLOWS,
                "run",
                "wordcount",
                "--http-port",
                str(PORT),
                "--instance-id",
                "demo",
                "--stateful-batch-size",
                "500",
                "--batch-size",
                "500",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def counted(engine: sa.Engine) -> int:
    """Word occurrences the table holds so far (0 before the table exists)."""
    with engine.connect() as connection:
        exists = connection.execute(sa.text("SELECT to_regclass('word_counts')")).scalar()
        if exists is None:
            return 0
        return int(
            connection.execute(
                sa.text("SELECT coalesce(sum(count), 0) FROM word_counts")
            ).scalar_one()
        )


def wait_for(engine: sa.Engine, target: int, total: int, worker: subprocess.Popen[bytes]) -> None:
    """Shows the progress until the table holds ``target`` occurrences: one line redrawn
    on a terminal, a line per quarter otherwise (a log, CI)."""
    interactive = sys.stdout.isatty()
    started, done = time.monotonic(), counted(engine)
    first, shown = done, 4 * done // total
    while done < target:
        if worker.poll() is not None:
            sys.exit(f"the worker stopped (exit {worker.returncode}); its log: {LOG}")
        time.sleep(0.2)
        done = counted(engine)
        rate = (done - first) / max(time.monotonic() - started, 1e-3)
        line = (
            f"  [{'#' * int(30 * done / total):<30}] {done:>7,}/{total:,} words  "
            f"{rate:>8,.0f} words/s  lag {total - done:>7,}"
        )
        if interactive:
            print(f"\r{line}", end="", flush=True)
        elif 4 * done // total > shown:
            shown = 4 * done // total
            say(line)
    if interactive:
        say()


def main() -> None:
    settings = Settings.from_sources()
    say("1. Reset the wordcount app (topics, consumer groups, tables)")
    flows("reset", "wordcount", "--yes")
    lines = generated_text(LINES)
    expected = collections.Counter(w for line in lines for w in WORD.findall(line.lower()))
    total = sum(expected.values())
    say(f"2. Produce {len(lines):,} lines ({total:,} words) to word-count-input")
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for line in lines:
        producer.produce("word-count-input", line.encode())
    producer.flush()

    engine = sa.create_engine(settings.sqlalchemy_url())
    say(f"3. Count them: `flows run wordcount` (its log: {LOG.relative_to(REPO)})")
    worker = start_worker()
    wait_for(engine, total // 2, total, worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    at = counted(engine)
    say(
        f"4. SIGKILL the worker (pid {worker.pid}) with {at:,} of {total:,} words counted, "
        f"and start it again\n   (the consumer group first waits out the dead worker's "
        f"session, about 10 s; then the restart re-emits what PostgreSQL committed and Kafka "
        f"did not, and goes on)"
    )
    mark = LOG.stat().st_size  # the restarted worker's lines start here
    worker = start_worker()
    try:
        wait_for(engine, total, total, worker)
        with LOG.open("rb") as log:
            log.seek(mark)
            reemitted = [line for line in log.read().decode().splitlines() if "re-emits" in line]
        for line in reemitted:  # what the kill left between the two commits
            say("   the restarted worker " + line.split(" count ", 1)[-1].split(":")[0])
        with engine.connect() as connection:
            found = connection.execute(sa.text("SELECT word, count FROM word_counts")).all()
            table: dict[str, int] = {str(w): int(c) for w, c in found}
        wrong = {w for w in expected.keys() | table.keys() if expected[w] != table.get(w)}
        if wrong:
            sys.exit(f"NOT exact: {len(wrong)} words differ, e.g. {sorted(wrong)[:5]}")
        say(
            f"5. Exact after a kill: {len(table):,} words, {total:,} occurrences, every count "
            f"equal to an independent count of the text"
        )
        say("\n   Top 10 words in the word_counts table:")
        for word, count in sorted(table.items(), key=lambda item: (-item[1], item[0]))[:10]:
            say(f"     {count:>6}  {word}")
        top = max(table, key=lambda w: (table[w], w))
        say(f"\n6. Ask the worker over HTTP: GET http://localhost:{PORT}/state/count/{top}")
        say(f"   {_state(top)}")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        engine.dispose()
    say(
        "\nNext:\n"
        "  flows status wordcount [--watch]        lag per partition, offsets, dead letters\n"
        "  flows dlq wordcount                     dead letters by flow and error; replay them\n"
        "  flows run pageviews                     windows, timers and expiry in event time\n"
        "  flows new myapp                         your own app, its test and its registration\n"
        "  flows describe wordcount --format mermaid\n"
        f"  http://localhost:{PORT}/metrics          Prometheus metrics while a worker runs"
    )


def _state(word: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(
                f"http://localhost:{PORT}/state/count/{word}", timeout=5
            ) as r:
                return json.dumps(json.loads(r.read()))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)  # the HTTP server is starting with the worker


if __name__ == "__main__":
    main()
