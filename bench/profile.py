"""Summarises a py-spy raw (collapsed stacks) profile: the functions that take the time.

``python -m bench.profile FILE [--top N] [--thread NAME]`` prints, per thread, the
functions with the most samples on top of the stack (self) and anywhere on it
(inclusive). Profiles come from ``python -m bench --profile DIR``.

``python -m bench.profile --save bench/results/profiles.json FILE...`` keeps, per profile,
what each busy thread spends its samples on by :data:`CATEGORIES` (PostgreSQL, the Kafka
client, formats, the flow's own functions, the engine): the report's "what bounds it" for a
target not met. A sample counts for the category of the frame nearest its top (the
leaf) that has one, so a JSON decode the engine calls is "formats", a psycopg wait inside
a commit "PostgreSQL"; work in librdkafka's C code shows as the Python call into it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.envs import REPO

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", f"{REPO}/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['fn']} ({path})"


def summarise(path: Path, top: int = 25, thread: str | None = None) -> str:
    by_thread: dict[str, tuple[Counter[str], Counter[str], list[int]]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        name = frames[0] if frames[0].startswith(("thread", "process")) else "all"
        if name.startswith("process"):
            frames = frames[1:]
            name = frames[0] if frames and frames[0].startswith("thread") else "all"
        if thread and thread not in name:
            continue
        calls = [_short(f) for f in frames[1:]] if name != "all" else [_short(f) for f in frames]
        if not calls:
            continue
        own, inclusive, total = by_thread.setdefault(name, (Counter(), Counter(), [0]))
        n = int(count_text)
        total[0] += n
        own[calls[-1]] += n
        for fn in set(calls):
            inclusive[fn] += n
    out = []
    for name, (own, inclusive, total) in sorted(by_thread.items(), key=lambda t: -t[1][2][0]):
        out.append(f"== {name}: {total[0]} samples")
        out.append("  self:")
        out += [f"    {n / total[0]:6.1%}  {fn}" for fn, n in own.most_common(top)]
        out.append("  inclusive:")
        out += [f"    {n / total[0]:6.1%}  {fn}" for fn, n in inclusive.most_common(top)]
    return "\n".join(out)


#: (category, path fragments of its frames), matched in this order
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PostgreSQL", ("psycopg", "sqlalchemy", "runtimes/postgres/")),
    ("Kafka client", ("confluent_kafka", "runtimes/kafka/")),
    ("formats", ("json", "flows/encoding.py", "flows/formats", "google/protobuf", "fastavro")),
    ("the flow's functions", ("bench/systems/", "examples/")),
    ("engine", ("flows/", "runtimes/")),
)
OTHER = "other"
#: threads that run no flow: with ``--idle`` they are sampled all the time, waiting
IGNORED_THREADS = ("MainThread",)
#: threads with fewer samples than this share of the busiest are left out of a breakdown
MIN_THREAD_SHARE = 0.05


def _category(calls: Sequence[str]) -> str:
    for frame in reversed(calls):
        for name, fragments in CATEGORIES:
            if any(f in frame for f in fragments):
                return name
    return OTHER


def breakdown(path: Path) -> dict[str, dict[str, float]]:
    """Per busy thread: ``samples`` and the share of them in each category (leaf first)."""
    by_thread: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("process"):
            frames = frames[1:]
        name = "all"
        if frames and frames[0].startswith("thread"):
            name = frames[0].partition(": ")[2] or frames[0]
            frames = frames[1:]
        if frames and name not in IGNORED_THREADS:
            by_thread.setdefault(name, Counter())[_category([_short(f) for f in frames])] += int(
                count_text
            )
    busiest = max((sum(c.values()) for c in by_thread.values()), default=0)
    found: dict[str, dict[str, float]] = {}
    for name, counts in sorted(by_thread.items(), key=lambda t: -sum(t[1].values())):
        total = sum(counts.values())
        if total < MIN_THREAD_SHARE * busiest:
            continue
        found[name] = {"samples": float(total)} | {
            category: round(counts[category] / total, 3)
            for category in [c for c, _ in CATEGORIES] + [OTHER]
        }
    return found


def top_leaves(path: Path, top: int = 4) -> dict[str, list[tuple[str, float]]]:
    """Per thread, the ``top`` functions with the most samples on top of the stack, with
    their share of the thread's samples: which call in a category the time goes to."""
    by_thread: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";") if stack and count_text.isdigit() else []
        frames = frames[1:] if frames and frames[0].startswith("process") else frames
        if len(frames) > 1 and frames[0].startswith("thread"):
            name = frames[0].partition(": ")[2] or frames[0]
            leaf = _short(frames[-1]).split(" (")[0]
            by_thread.setdefault(name, Counter())[leaf] += int(count_text)
    return {
        name: [(fn, round(n / sum(c.values()), 3)) for fn, n in c.most_common(top)]
        for name, c in by_thread.items()
        if sum(c.values())
    }


def save(paths: Sequence[Path], into: Path) -> dict[str, object]:
    """Adds the breakdown of each profile (named by its file: ``<case>-<variant>-flows``)
    to the JSON file ``into``, replacing an earlier one of the same name."""
    saved: dict[str, object] = json.loads(into.read_text()) if into.exists() else {}
    for path in paths:
        saved[path.stem] = {
            "profiled_at": datetime.datetime.fromtimestamp(
                path.stat().st_mtime, datetime.UTC
            ).isoformat(timespec="seconds"),
            "threads": breakdown(path),
            "top": top_leaves(path),
        }
    into.parent.mkdir(parents=True, exist_ok=True)
    into.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("file", type=Path, nargs="+")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--thread", help="only threads whose name contains this")
    p.add_argument(
        "--save",
        type=Path,
        metavar="JSON",
        help="add each profile's breakdown by category to this file (the report reads "
        "bench/results/profiles.json) instead of printing its functions",
    )
    args = p.parse_args(argv)
    if args.save is not None:
        saved = save(args.file, args.save)
        for path in args.file:
            print(f"{path.stem}: {json.dumps(saved[path.stem])}")
        return 0
    for path in args.file:
        print(summarise(path, args.top, args.thread))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
