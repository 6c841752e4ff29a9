"""Summarises a py-spy raw (collapsed stacks) profile: the functions that take the time.

``python -m bench.profile FILE [--top N] [--thread NAME]`` prints, per thread, the
functions with the most samples on top of the stack (self) and anywhere on it
(inclusive). Profiles come from ``python -m bench --profile DIR``.
"""

from __future__ import annotations

import argparse
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--thread", help="only threads whose name contains this")
    args = p.parse_args(argv)
    print(summarise(args.file, args.top, args.thread))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
