"""Materialised tables: a shape's SQLAlchemy ``Table``, or its dataclass fields mapped to
PostgreSQL columns by their type hints (:func:`column_type`)."""

from __future__ import annotations

import datetime
import decimal
import types
import typing
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows.errors import ConfigError
from flows.tables import TableShape

_SIMPLE_TYPES: dict[Any, Any] = {
    str: sa.Text,
    int: sa.BigInteger,
    float: sa.Double,
    bool: sa.Boolean,
    bytes: sa.LargeBinary,
    datetime.datetime: lambda: sa.TIMESTAMP(timezone=True),
    datetime.date: sa.Date,
    decimal.Decimal: sa.Numeric,
    uuid.UUID: sa.Uuid,
}


def column_type(hint: Any) -> tuple[Any, bool]:
    """The SQL type of a dataclass field's type hint, and whether the column is nullable.

    ``str`` Text, ``int`` BigInteger, ``float`` Double, ``bool`` Boolean, ``bytes`` BYTEA,
    ``datetime`` TIMESTAMPTZ, ``date`` Date, ``Decimal`` Numeric, ``UUID`` UUID, ``dict``,
    ``list`` and ``Any`` JSONB. ``X | None`` (and ``Any``) are nullable, the rest NOT NULL.
    Raises ``ValueError`` for any other hint.
    """
    nullable = False
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(hint))
        if len(members) != 1:
            raise ValueError(f"unions other than `X | None` have no column type: {hint!r}")
        hint = members[0]
        origin = typing.get_origin(hint)
    if hint is Any:
        return pg.JSONB(none_as_null=True), True
    if hint in (dict, list) or origin in (dict, list):
        return pg.JSONB(none_as_null=True), nullable
    if hint in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[hint](), nullable
    raise ValueError(f"no column type for {hint!r}")


def materialised_table(shape: TableShape, metadata: sa.MetaData, schema: str | None) -> sa.Table:
    """The table of ``shape`` in ``metadata`` (built, not created): its SQLAlchemy ``Table``
    copied into ``schema`` when one is given, or the table of its dataclass fields."""
    if isinstance(shape.source, sa.Table):
        if schema is not None:
            return shape.source.to_metadata(metadata, schema=schema)
        return shape.source.to_metadata(metadata)
    return dataclass_table(shape, metadata)


def dataclass_table(shape: TableShape, metadata: sa.MetaData) -> sa.Table:
    """The table of a dataclass ``shape`` in ``metadata`` (built, not created).

    Raises :class:`ConfigError` naming the table and column when a field has no column type.
    """
    if not shape.python_types:
        raise ConfigError(
            f"table {shape.name!r}: its shape has neither a SQLAlchemy Table nor field types"
        )
    columns = []
    for name, hint in shape.python_types:
        try:
            type_, nullable = column_type(hint)
        except ValueError as error:
            raise ConfigError(f"table {shape.name!r}, column {name!r}: {error}") from None
        primary = name in shape.primary_key
        columns.append(
            sa.Column(name, type_, primary_key=primary, nullable=nullable and not primary)
        )
    return sa.Table(shape.name, metadata, *columns)
