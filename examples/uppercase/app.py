"""A stateless example: shout every line, drop the empty ones, tee the long ones.

``uppercase-input`` (UTF-8 lines) → ``uppercase-output`` (the line upper-cased, key and
headers kept); lines longer than 40 characters also go to ``uppercase-long``.
"""

from __future__ import annotations

from flows import STR, App, Filter, Map, Record, Topic

source = Topic("uppercase-input", key_format=STR, value_format=STR, partitions=3)
shouted = Topic("uppercase-output", key_format=STR, value_format=STR, partitions=3)
long_lines = Topic("uppercase-long", key_format=STR, value_format=STR, partitions=3)


def shout(record: Record[str | None, str]) -> str | None:
    line = record.value.strip()
    return line.upper() if line else None


def is_long(record: Record[str | None, str]) -> bool:
    return len(record.value) > 40


app = App(
    "uppercase",
    [
        Map(name="shout", source=source, sink=shouted, fn=shout),
        Filter(name="long", source=source, sink=long_lines, predicate=is_long),
    ],
    description="stateless: upper-case every line, keep the long ones aside",
)
