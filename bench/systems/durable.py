"""The honest ceiling of wordcount: flows' guarantees, hand-written (confluent-kafka + psycopg 3).

Two stages in one process, a thread each, as ``flows run`` runs ``examples/wordcount``:

* **split**: lines in, each word out keyed by itself to ``<BENCH_OUT>.words`` (so one
  partition holds each word), one Kafka transaction per batch holding its outputs and its
  input offsets (``send_offsets_to_transaction``): an exactly-once re-key.
* **count**: words in (``read_committed``), each word's running count out to ``BENCH_OUT``,
  the counts in PostgreSQL. One batch:

  1. fold the words per partition in offset order (the counts of owned partitions are
     cached; the missing ones come from one ``SELECT``); nothing changes in memory yet;
  2. one PostgreSQL transaction: upsert the changed counts; move each partition's
     watermark (the next offset whose effect is not in PostgreSQL) from the value read to
     the new one, requiring every row to match (a zombie that lost a partition finds its
     watermark moved and rolls back); store the batch's outputs as pending; delete the
     pending rows Kafka has committed;
  3. one Kafka transaction: the outputs and the new offsets with the group's metadata (a
     member of an older generation cannot commit);
  4. only then the cache, the watermarks and the known committed offsets change.

  On assignment, each partition's watermark ``W`` is read against Kafka's committed offset
  ``C`` (:func:`recovery`): no ``W`` yet, it starts at ``C`` (or the partition's start);
  ``C < W``, the pending outputs from ``C`` are produced again with the offsets ``W`` in
  one transaction (PostgreSQL committed those batches, Kafka did not: nothing is counted
  again, nothing is lost); ``C > W`` stops the process. The consumer then starts at ``W``,
  so applied records are never replayed. A failed Kafka transaction is aborted and ends
  the process (exit 1); the next start's recovery re-emits what PostgreSQL committed
  (flows does that in-process and goes on).

This is flows' stateful commit (``runtimes/postgres/commit.py``), minus the framework: no
codecs, no wiring, a table of ``(word, count)`` instead of encoded states, the pending
outputs as text lines (:func:`encode_outputs`). Batch sizes and the process's garbage
collector settings are flows' defaults (5,000 lines, 10,000 words; ``gc.freeze()`` and a
first threshold of 50,000), so the two differ in code, not in tuning.

Tables, named after ``BENCH_TABLE`` (``T``): ``T(word, count)``, ``T_offsets(partition,
next_offset)``, ``T_pending(partition, first_offset, next_offset, outputs)``. The count
stage's consumer group is ``<BENCH_GROUP>.count``; the split stage's is ``BENCH_GROUP``.

``BENCH_CASE=count`` (the keyspace case) runs the count stage alone over ``BENCH_IN``'s
keyed records, as the other systems' count does: the record key is the word, and each
output is ``"<count> <the input's value>"``.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

SPLIT_BATCH = 5_000
COUNT_BATCH = 10_000
WORD = re.compile(r"[^\W_]+")


class DatabaseBehindError(RuntimeError):
    """Kafka committed offsets past PostgreSQL's watermark: the database lost batches."""


def recovery(committed: int, watermark: int) -> int | None:
    """Where the pending outputs of a newly assigned partition are re-emitted from.

    ``committed`` is Kafka's committed offset (the partition's start when there is none),
    ``watermark`` PostgreSQL's. ``None``: nothing to re-emit (the two agree); an offset:
    re-emit the pending outputs of the batches from it (PostgreSQL committed them, their
    Kafka transaction did not). Raises :class:`DatabaseBehindError` when Kafka is ahead.
    """
    if committed == watermark:
        return None
    if committed < watermark:
        return committed
    raise DatabaseBehindError(
        f"Kafka's committed offset {committed} is past PostgreSQL's watermark {watermark}: "
        "the database was restored or reset behind Kafka's back; drop the run's tables "
        "and consumer groups to start again"
    )


def encode_outputs(outputs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A batch's ``(word, count)`` outputs as one value: ``word<TAB>count`` lines.

    A word (``[^\\W_]+``) holds no tab and no newline, a count only digits.
    """
    return b"\n".join([key + b"\t" + value for key, value in outputs])


def decode_outputs(blob: bytes) -> list[tuple[bytes, bytes]]:
    """The outputs :func:`encode_outputs` stored, in their order."""
    if not blob:
        return []
    pairs = []
    for line in blob.split(b"\n"):
        key, value = line.split(b"\t")
        pairs.append((key, value))
    return pairs


def fold(
    words: Iterable[str],
    known: Callable[[str], int],
    changed: dict[str, int],
    suffixes: Iterable[bytes] | None = None,
) -> list[tuple[bytes, bytes]]:
    """Counts ``words`` in order; returns one ``(word, running count)`` output per word.

    ``known`` gives a word's count before the batch; ``changed`` collects the new counts
    (and is read first, so repeated words count on). ``suffixes``, one per word, follow
    each count after a space (the count case's input values).
    """
    outputs = []
    ends = iter(suffixes) if suffixes is not None else None
    for word in words:
        total = changed.get(word)
        total = (known(word) if total is None else total) + 1
        changed[word] = total
        encoded = word.encode()
        value = str(total).encode()
        if ends is not None:
            value += b" " + next(ends)
        outputs.append((encoded, value))
    return outputs


class Settings:
    """The run's names, from the ``BENCH_*`` environment (see :mod:`bench.commands`)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.bootstrap = env["BENCH_BOOTSTRAP"]
        self.database_url = env["BENCH_DB_URL"]
        self.lines = env["BENCH_IN"]
        self.counts = env["BENCH_OUT"]
        #: the count case: keyed records in, the count stage alone
        self.keyed = env.get("BENCH_CASE") == "count"
        self.words = self.lines if self.keyed else f"{self.counts}.words"
        self.group = env["BENCH_GROUP"]
        self.table = env["BENCH_TABLE"]
        self.instance = env.get("BENCH_INSTANCE", "1")
        #: a test hook: the process dies (``os._exit``) after this many PostgreSQL commits of
        #: the count stage, before the last one's Kafka transaction: the moment the pending
        #: outputs are for (0: never)
        self.kill_after = int(env.get("BENCH_DURABLE_KILL_AFTER", "0"))

    def consumer(self, group: str) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 100,
            }
        )

    def producer(self, stage: str) -> Producer:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "batch.num.messages": 10000,
                "queue.buffering.max.kbytes": 262144,
                # the Java clients' partitioner, as flows configures it
                "partitioner": "murmur2_random",
                "transactional.id": f"{self.group}.{stage}.{self.instance}",
            }
        )
        producer.init_transactions(30)
        return producer


def consume(consumer: Consumer, size: int) -> list[Message]:
    """A batch of records; raises on a consume error (none is skipped silently)."""
    batch = consumer.consume(size, 0.1)
    for message in batch:
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(error)
    return [m for m in batch if m.error() is None]


def produce(producer: Producer, topic: str, outputs: Iterable[tuple[bytes, bytes]]) -> None:
    send = producer.produce
    for key, value in outputs:
        while True:
            try:
                send(topic, value, key)
                break
            except BufferError:  # the queue is full: let deliveries drain it
                producer.poll(0.05)
    producer.poll(0)


def transact(
    producer: Producer,
    consumer: Consumer,
    topic: str,
    outputs: Iterable[tuple[bytes, bytes]],
    offsets: list[TopicPartition],
) -> None:
    """One Kafka transaction: ``outputs`` to ``topic`` and the input ``offsets``; a failure
    aborts it and raises (the caller's process ends: recovery is on the next start)."""
    producer.begin_transaction()
    try:
        produce(producer, topic, outputs)
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
    except BaseException:
        producer.abort_transaction(30)
        raise


def split(s: Settings, stopping: threading.Event) -> None:
    """The split stage: an exactly-once re-key of every word to the words topic."""
    consumer, producer = s.consumer(s.group), s.producer("split")
    consumer.subscribe([s.lines])
    findall = WORD.findall
    try:
        while not stopping.is_set():
            batch = consume(consumer, SPLIT_BATCH)
            if not batch:
                continue
            outputs = []
            nexts: dict[int, int] = {}
            for m in batch:
                for word in findall(m.value().decode().lower()):  # type: ignore[union-attr]
                    encoded = word.encode()
                    outputs.append((encoded, encoded))
                nexts[m.partition()] = m.offset() + 1  # type: ignore[index,operator]
            offsets = [TopicPartition(s.lines, p, o) for p, o in nexts.items()]
            transact(producer, consumer, s.words, outputs, offsets)
    finally:
        consumer.close()


class Counter:
    """The count stage: counts in PostgreSQL, outputs and offsets in Kafka transactions."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        t = s.table
        # autocommit: each transaction() block is one transaction, a lone SELECT none
        self.db = psycopg.connect(s.database_url, autocommit=True)
        with self.db.transaction():
            self.db.execute(
                f'CREATE TABLE IF NOT EXISTS "{t}" (word TEXT PRIMARY KEY, count BIGINT NOT NULL)'
            )
            self.db.execute(
                f'CREATE TABLE IF NOT EXISTS "{t}_offsets" (partition INT PRIMARY KEY, '
                "next_offset BIGINT NOT NULL)"
            )
            self.db.execute(
                f'CREATE TABLE IF NOT EXISTS "{t}_pending" (partition INT, first_offset BIGINT, '
                "next_offset BIGINT NOT NULL, outputs BYTEA NOT NULL, "
                "PRIMARY KEY (partition, first_offset))"
            )
        self.load = f'SELECT word, count FROM "{t}" WHERE word = ANY(%s)'
        self.upsert = (
            f'INSERT INTO "{t}" (word, count) SELECT * FROM unnest(%s::text[], %s::bigint[]) '
            "ON CONFLICT (word) DO UPDATE SET count = EXCLUDED.count"
        )
        self.move = (
            f'UPDATE "{t}_offsets" o SET next_offset = m.new FROM unnest(%s::int[], '
            "%s::bigint[], %s::bigint[]) AS m(partition, read, new) "
            "WHERE o.partition = m.partition AND o.next_offset = m.read"
        )
        self.store = (
            f'INSERT INTO "{t}_pending" (partition, first_offset, next_offset, outputs) '
            "SELECT * FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::bytea[])"
        )
        self.forget = (
            f'DELETE FROM "{t}_pending" p USING unnest(%s::int[], %s::bigint[]) '
            "AS c(partition, committed) WHERE p.partition = c.partition "
            "AND p.next_offset <= c.committed"
        )
        self.consumer = s.consumer(f"{s.group}.count")
        self.producer = s.producer("count")
        #: per owned partition: the counts known (a cache of PostgreSQL's rows)
        self.cache: dict[int, dict[str, int]] = {}
        #: per owned partition: PostgreSQL's watermark as this process last wrote or read it
        self.watermarks: dict[int, int] = {}
        #: per owned partition: the offset Kafka has committed (pending rows up to it go)
        self.committed: dict[int, int] = {}
        self.commits = 0

    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Recovery (see the module docstring), then the consumer starts at each ``W``."""
        s = self.s
        parts = sorted(tp.partition for tp in partitions)
        found = consumer.committed([TopicPartition(s.words, p) for p in parts], timeout=30)
        kafka: dict[int, int] = {}
        for tp in found:
            offset = tp.offset
            if offset < 0:  # nothing committed yet: the partition's start
                offset = consumer.get_watermark_offsets(tp, timeout=30)[0]
            kafka[tp.partition] = offset
        t = s.table
        with self.db.transaction():
            self.db.cursor().executemany(
                f'INSERT INTO "{t}_offsets" (partition, next_offset) VALUES (%s, %s) '
                "ON CONFLICT DO NOTHING",
                [(p, kafka[p]) for p in parts],
            )
            rows = self.db.execute(
                f'SELECT partition, next_offset FROM "{t}_offsets" WHERE partition = ANY(%s)',
                (parts,),
            ).fetchall()
        watermarks = {int(p): int(w) for p, w in rows}
        again: list[tuple[bytes, bytes]] = []
        for p in parts:
            start = recovery(kafka[p], watermarks[p])
            if start is not None:
                for (blob,) in self.db.execute(
                    f'SELECT outputs FROM "{t}_pending" WHERE partition = %s AND '
                    "first_offset >= %s ORDER BY first_offset",
                    (p, start),
                ):
                    again.extend(decode_outputs(bytes(blob)))
        late = [p for p in parts if kafka[p] < watermarks[p]]
        if late:
            offsets = [TopicPartition(s.words, p, watermarks[p]) for p in late]
            transact(self.producer, consumer, s.counts, again, offsets)
            print(f"durable: re-emitted {len(again)} pending outputs of {late}", flush=True)
        for p in parts:
            self.cache[p], self.watermarks[p], self.committed[p] = {}, watermarks[p], watermarks[p]
        consumer.assign([TopicPartition(s.words, p, watermarks[p]) for p in parts])

    def revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.cache.pop(tp.partition, None)
            self.watermarks.pop(tp.partition, None)
            self.committed.pop(tp.partition, None)

    def batch(self, messages: list[Message]) -> None:
        """Folds, commits to PostgreSQL, then to Kafka, then updates memory (in that order)."""
        words: dict[int, list[str]] = {}
        values: dict[int, list[bytes]] = {}
        keyed = self.s.keyed
        firsts: dict[int, int] = {}
        nexts: dict[int, int] = {}
        for m in messages:
            p, offset = m.partition(), m.offset()
            assert p is not None and offset is not None
            if offset < self.watermarks.get(p, sys.maxsize):
                continue  # applied already (or not ours): a replay is skipped
            if keyed:
                words.setdefault(p, []).append(m.key().decode())  # type: ignore[union-attr]
                values.setdefault(p, []).append(m.value() or b"")
            else:
                words.setdefault(p, []).append(m.value().decode())  # type: ignore[union-attr]
            firsts.setdefault(p, offset)
            nexts[p] = offset + 1
        if not words:
            return
        missing = {w: p for p, ws in words.items() for w in ws if w not in self.cache[p]}
        if missing:
            for word, count in self.db.execute(self.load, (list(missing),)):
                self.cache[missing.pop(word)][word] = count
            for word, p in missing.items():
                self.cache[p][word] = 0
        changed: dict[int, dict[str, int]] = {}
        outputs: list[tuple[bytes, bytes]] = []
        pending: list[bytes] = []
        parts = sorted(words)
        for p in parts:
            mine = fold(
                words[p],
                self.cache[p].__getitem__,
                changed.setdefault(p, {}),
                values[p] if keyed else None,
            )
            outputs.extend(mine)
            pending.append(encode_outputs(mine))
        upsert = {w: n for counts in changed.values() for w, n in counts.items()}
        done = [p for p in self.committed if p in self.watermarks]
        with self.db.transaction(), self.db.cursor() as cur:
            cur.execute(self.upsert, (list(upsert), list(upsert.values())))
            cur.execute(
                self.move,
                (parts, [self.watermarks[p] for p in parts], [nexts[p] for p in parts]),
            )
            if cur.rowcount != len(parts):
                raise RuntimeError(
                    f"the watermarks of partitions {parts} moved: another worker owns some "
                    "of them, so this batch is not committed"
                )
            cur.execute(
                self.store,
                (parts, [firsts[p] for p in parts], [nexts[p] for p in parts], pending),
            )
            cur.execute(self.forget, (done, [self.committed[p] for p in done]))
        self.commits += 1
        if self.commits == self.s.kill_after:
            print(f"durable: killed after PostgreSQL commit {self.commits}", flush=True)
            os._exit(9)
        offsets = [TopicPartition(self.s.words, p, nexts[p]) for p in parts]
        transact(self.producer, self.consumer, self.s.counts, outputs, offsets)
        for p in parts:
            self.cache[p].update(changed[p])
            self.watermarks[p] = self.committed[p] = nexts[p]

    def run(self, stopping: threading.Event) -> None:
        self.consumer.subscribe(
            [self.s.words], on_assign=self.assigned, on_revoke=self.revoked, on_lost=self.revoked
        )
        try:
            while not stopping.is_set():
                batch = consume(self.consumer, COUNT_BATCH)
                if batch:
                    self.batch(batch)
        finally:
            self.consumer.close()
            self.db.close()


def main() -> int:
    stopping = threading.Event()
    failed: list[str] = []

    def stop(_signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if os.environ.get("BENCH_CASE") not in ("wordcount", "count"):
        print(f"durable: wordcount and count only, not {os.environ.get('BENCH_CASE')!r}")
        return 2
    s = Settings(dict(os.environ))
    counter = Counter(s)

    def guarded(name: str, body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except BaseException:
                failed.append(name)
                traceback.print_exc()
                stopping.set()

        return threading.Thread(target=run, name=name)

    threads = [guarded("count", lambda: counter.run(stopping))]
    if not s.keyed:
        threads.append(guarded("split", lambda: split(s, stopping)))
    # as `flows run` does (runtimes/process.py tune_gc): what exists now is never scanned,
    # and most batches die young
    gc.freeze()
    gc.set_threshold(50_000, *gc.get_threshold()[1:])
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(0.2)
    if failed:
        print(f"durable: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
