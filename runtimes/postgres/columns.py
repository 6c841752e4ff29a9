"""State tables' key and value columns: how the port's bytes travel to each column type.

The port carries keys and values as bytes; a state table keeps them as ``bytea``, ``text``
(keys) or ``jsonb`` (values), as the flow's :class:`flows.ports.StateColumns` says. A
:class:`Column` is the strategy of one such column, chosen once per table
(``state_tables.py``), so no statement asks per batch what kind of column it writes:

- :data:`BYTEA`: bytes as they are (``bytes`` keys and values, protobuf, a user's format;
  the encrypted values of a later step would be bytes too);
- :data:`TEXT`: UTF-8 text without NUL (``str`` and ``json`` keys), ``COLLATE "C"`` so
  that the table orders and pages keys bytewise, as Python compares ``bytes``;
- :data:`JSONB`: one JSON value each (``json`` states).

Many items travel as one text parameter, expanded by PostgreSQL into one row per item
(:meth:`Column.each`), so each statement has one plan whatever the batch size:

- ``bytea``: ``x<hex>`` items joined by commas (:func:`statements.pack`);
- ``text``: the same, checked first in one call (the items joined by commas decode as UTF-8
  exactly when each does) and decoded by PostgreSQL (``convert_from``): three times
  faster in Python than a JSON array of strings (measured);
- ``jsonb``: the values, which are JSON already, joined into one JSON array: no parsing or
  encoding in Python, and PostgreSQL parses each value once. psycopg's ``Jsonb`` dumper
  would take Python objects (a decode per value first) and dump a ``jsonb[]`` element by
  element: 1.5 times slower for 1,500 states (measured), before the decoding.

Reading, ``jsonb`` is cast to ``text`` in the query: psycopg would parse ``jsonb`` into
Python objects, which would have to be encoded again for the step to decode them (loads
2.6 times slower, measured).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from runtimes.postgres.statements import pack, packed, unhex

__all__ = ["BYTEA", "JSONB", "TEXT", "Column", "column_of"]


class Column(Protocol):
    """One kind of key or value column of a state table."""

    #: the column's type in PostgreSQL (``format_type``) and the value of StateColumns
    sql_name: str
    kind: str

    def sql_type(self) -> sa.types.TypeEngine[Any]:
        """The column's SQLAlchemy type."""
        ...

    def dump(self, items: Sequence[bytes]) -> str:
        """``items`` as one text parameter for :meth:`each`; ``ValueError`` for an item
        that the column cannot hold."""
        ...

    def dump_held(self, items: Sequence[bytes]) -> str | None:
        """:meth:`dump` of the ``items`` the column can hold (lookups skip the others: they
        are not stored); None when it holds none of them."""
        ...

    def each(self, name: str) -> Any:
        """A set-returning SQL expression: one row per item of the parameter ``name``."""
        ...

    def one(self, item: bytes) -> Any:
        """``item`` as a parameter compared with the column; ``ValueError`` when it cannot
        be stored in it."""
        ...

    def read(self, column: Any) -> Any:
        """The SQL expression that selects ``column`` for :attr:`to_bytes`."""
        ...

    @property
    def to_bytes(self) -> Callable[[Any], bytes]:
        """What the driver returns for :meth:`read`, back to the port's bytes."""
        ...

    def using(self, column: str, source: str) -> str:
        """The ``USING`` expression converting ``column`` of SQL type ``source`` to this
        type (``ALTER COLUMN ... TYPE``); may fail on rows that do not fit."""
        ...


class _Bytea:
    sql_name = "bytea"
    kind = "bytes"

    def sql_type(self) -> sa.types.TypeEngine[Any]:
        return sa.LargeBinary()

    def dump(self, items: Sequence[bytes]) -> str:
        return pack(items)

    def dump_held(self, items: Sequence[bytes]) -> str | None:
        return pack(items) if items else None

    def each(self, name: str) -> Any:
        return unhex(sa.func.unnest(packed(name)))

    def one(self, item: bytes) -> Any:
        return item

    def read(self, column: Any) -> Any:
        return column

    @property
    def to_bytes(self) -> Callable[[Any], bytes]:
        return bytes

    def using(self, column: str, source: str) -> str:
        if source == "jsonb":
            return f"convert_to({column}::text, 'UTF8')"
        return f"convert_to({column}, 'UTF8')"


class _Text:
    sql_name = "text"
    kind = "text"

    def sql_type(self) -> sa.types.TypeEngine[Any]:
        return sa.Text(collation="C")

    def dump(self, items: Sequence[bytes]) -> str:
        # A comma is no UTF-8 continuation byte, so the joined items decode exactly when
        # each does: one check in C for the batch.
        joined = b",".join(items)
        joined.decode("utf-8")  # UnicodeDecodeError is a ValueError
        if b"\x00" in joined:
            raise ValueError("a key holds a NUL character, which PostgreSQL text cannot")
        return pack(items)

    def dump_held(self, items: Sequence[bytes]) -> str | None:
        try:
            return self.dump(items) if items else None
        except ValueError:
            held = [item for item in items if _is_text(item)]
            return pack(held) if held else None

    def each(self, name: str) -> Any:
        return sa.func.convert_from(unhex(sa.func.unnest(packed(name))), "UTF8", type_=sa.Text)

    def one(self, item: bytes) -> Any:
        if not _is_text(item):
            raise ValueError(f"{item!r} is not UTF-8 text without NUL")
        return item.decode("utf-8")

    def read(self, column: Any) -> Any:
        return column

    @property
    def to_bytes(self) -> Callable[[Any], bytes]:
        return str.encode

    def using(self, column: str, source: str) -> str:
        return f"convert_from({column}, 'UTF8')"


class _Jsonb:
    sql_name = "jsonb"
    kind = "json"

    def sql_type(self) -> sa.types.TypeEngine[Any]:
        return pg.JSONB()

    def dump(self, items: Sequence[bytes]) -> str:
        # Each item is one JSON value (the port's promise for these columns): joined, they
        # are one array, and a stray top-level comma would add an element, so a key without
        # a value and a NOT NULL violation, never a silent shift.
        return (b"[" + b",".join(items) + b"]").decode("utf-8")

    def dump_held(self, items: Sequence[bytes]) -> str | None:
        return self.dump(items) if items else None

    def each(self, name: str) -> Any:
        return sa.func.jsonb_array_elements(
            sa.cast(sa.bindparam(name, type_=sa.Text), pg.JSONB), type_=pg.JSONB
        )

    def one(self, item: bytes) -> Any:
        return item.decode("utf-8")

    def read(self, column: Any) -> Any:
        return sa.cast(column, sa.Text)

    @property
    def to_bytes(self) -> Callable[[Any], bytes]:
        return str.encode

    def using(self, column: str, source: str) -> str:
        return f"convert_from({column}, 'UTF8')::jsonb"


def _is_text(item: bytes) -> bool:
    if b"\x00" in item:
        return False
    try:
        item.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


BYTEA: Column = _Bytea()
TEXT: Column = _Text()
JSONB: Column = _Jsonb()


def column_of(kind: str) -> Column:
    """The column that keeps ``StateColumns`` kind ``kind`` (``bytes``, ``text``, ``json``)."""
    return {"bytes": BYTEA, "text": TEXT, "json": JSONB}[kind]
