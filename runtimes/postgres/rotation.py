"""Every stored value of an encrypted flow rewritten under the first state key, in batches
(``flows state rotate``).

The table is read in primary-key order, ``batch`` rows at a time (keyset paging: each page
starts after the last key of the one before, so the scan costs no more per page as it
goes). Each row goes through ``reseal`` (:meth:`flows.steps.sealing.Sealing.reseal`, pure:
decrypt with whichever key the value names, encrypt with the first); the rows it changed are
written back by one ``UPDATE`` per page, each only where the value is still the one read.
So a worker that changes a state meanwhile wins (its value is encrypted with its own first
key), nothing it wrote is overwritten, and the row is counted as ``changed``; running the
command again takes what is left. Versions and ``updated_at`` stay: the state is the same.

State tables are keyed by ``key``; window-shaped tables (flows with timers or a TTL,
windowed flows) by ``(partition, key, start)``. History tables (:func:`rotate_history`) by
``id``; their rows never change once written (retention only deletes them), so each page's
``previous`` and ``value`` are written back by id, with nothing to lose to a worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from runtimes.postgres.errors import translated

__all__ = ["Rotation", "rotate_history", "rotate_values"]

#: ``reseal(key, start, value)``: the value encrypted with the first key, None when it is
Reseal = Callable[[bytes, int, bytes], bytes | None]


@dataclasses.dataclass(slots=True)
class Rotation:
    """What a rotation did: rows read, rewritten, already under the first key, and changed
    by a worker between the read and the write (left to it)."""

    scanned: int = 0
    rewritten: int = 0
    current: int = 0
    changed: int = 0


def rotate_values(
    engine: sa.Engine,
    schema: str | None,
    table: str,
    windowed: bool,
    reseal: Reseal,
    batch: int = 1000,
) -> Rotation:
    """Rewrites every value of ``table`` that ``reseal`` changes; see the module docstring."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    preparer = engine.dialect.identifier_preparer
    name = preparer.quote(table)
    if schema is not None:
        name = f"{preparer.quote_schema(schema)}.{name}"
    columns = "partition, key, start" if windowed else "key"
    first = sa.text(f"SELECT {columns}, value FROM {name} ORDER BY {columns} LIMIT :n")
    after = "(partition, key, start) > (:p, :k, :s)" if windowed else "key > :k"
    rest = sa.text(f"SELECT {columns}, value FROM {name} WHERE {after} ORDER BY {columns} LIMIT :n")
    done = Rotation()
    last: dict[str, Any] | None = None
    while True:
        with translated(f"reading the values of {table!r}"), engine.connect() as conn:
            if last is None:
                rows = conn.execute(first, {"n": batch}).all()
            else:
                rows = conn.execute(rest, {**last, "n": batch}).all()
        if not rows:
            return done
        updates: list[tuple[Any, ...]] = []
        for row in rows:
            *ids, value = row
            key = ids[-2] if windowed else ids[0]
            start = int(ids[-1]) if windowed else 0
            key_bytes = key.encode("utf-8") if isinstance(key, str) else bytes(key)
            old = bytes(value)
            new = reseal(key_bytes, start, old)
            if new is None:
                done.current += 1
            else:
                updates.append((*ids, old, new))
        done.scanned += len(rows)
        if updates:
            written = _write(engine, name, table, windowed, updates)
            done.rewritten += written
            done.changed += len(updates) - written
        *ids, _ = rows[-1]
        last = {"p": ids[0], "k": ids[1], "s": ids[2]} if windowed else {"k": ids[0]}


def rotate_history(
    engine: sa.Engine, schema: str | None, table: str, reseal: Reseal, batch: int = 1000
) -> Rotation:
    """Rewrites the ``previous`` and ``value`` of every row of the history table ``table``
    that ``reseal`` changes (each with its row's key, ``start`` 0: a state's context), a
    page of ``batch`` rows at a time in id order. ``scanned`` counts rows, the others
    values (a row holds two, but for a first change or a deletion)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    preparer = engine.dialect.identifier_preparer
    name = preparer.quote(table)
    if schema is not None:
        name = f"{preparer.quote_schema(schema)}.{name}"
    page = sa.text(
        f"SELECT id, key, previous, value FROM {name} WHERE id > :after ORDER BY id LIMIT :n"
    )
    update = sa.text(
        f"UPDATE {name} AS t SET previous = coalesce(u.previous, t.previous),"
        " value = coalesce(u.value, t.value) FROM unnest(CAST(:ids AS bigint[]),"
        " CAST(:previous AS bytea[]), CAST(:values AS bytea[])) AS u(id, previous, value)"
        " WHERE t.id = u.id"
    )
    done, after = Rotation(), 0
    while True:
        with translated(f"reading the values of {table!r}"), engine.connect() as conn:
            rows = conn.execute(page, {"after": after, "n": batch}).all()
        if not rows:
            return done
        ids: list[int] = []
        previous: list[bytes | None] = []
        values: list[bytes | None] = []
        for id_, key, *stored in rows:
            key_bytes = key.encode("utf-8") if isinstance(key, str) else bytes(key)
            new: list[bytes | None] = []
            for old in stored:
                resealed = None if old is None else reseal(key_bytes, 0, bytes(old))
                if old is not None:
                    done.current += resealed is None
                    done.rewritten += resealed is not None
                new.append(resealed)
            if new != [None, None]:
                ids.append(int(id_))
                previous.append(new[0])
                values.append(new[1])
        done.scanned += len(rows)
        if ids:
            with translated(f"rewriting values of {table!r}"), engine.begin() as conn:
                conn.execute(update, {"ids": ids, "previous": previous, "values": values})
        after = int(rows[-1][0])


def _write(
    engine: sa.Engine, name: str, table: str, windowed: bool, updates: list[tuple[Any, ...]]
) -> int:
    """One ``UPDATE`` for a page: each row's new value where its value is still the old
    one; returns how many rows it changed."""
    columns = list(zip(*updates, strict=True))
    keys = "text[]" if isinstance(updates[0][-3], str) else "bytea[]"  # TEXT or BYTEA keys
    if windowed:
        statement = sa.text(
            f"UPDATE {name} AS t SET value = u.new FROM unnest(CAST(:ps AS integer[]),"
            f" CAST(:ks AS {keys}), CAST(:ss AS bigint[]), CAST(:olds AS bytea[]),"
            " CAST(:news AS bytea[])) AS u(p, k, s, old, new)"
            " WHERE t.partition = u.p AND t.key = u.k AND t.start = u.s AND t.value = u.old"
        )
        params = dict(zip(("ps", "ks", "ss", "olds", "news"), map(list, columns), strict=True))
    else:
        statement = sa.text(
            f"UPDATE {name} AS t SET value = u.new FROM unnest(CAST(:ks AS {keys}),"
            " CAST(:olds AS bytea[]), CAST(:news AS bytea[])) AS u(k, old, new)"
            " WHERE t.key = u.k AND t.value = u.old"
        )
        params = dict(zip(("ks", "olds", "news"), map(list, columns), strict=True))
    with translated(f"rewriting values of {table!r}"), engine.begin() as conn:
        return int(conn.execute(statement, params).rowcount)
