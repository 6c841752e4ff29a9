"""The shape of a materialised table, read from a SQLAlchemy ``Table`` or a dataclass.

The core never imports SQLAlchemy: a ``Table`` is recognised by duck typing (``name``,
``columns``, ``primary_key``), and the Postgres runtime turns a dataclass into a ``Table``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints


@dataclass(frozen=True, slots=True)
class TableShape:
    """Name, columns and primary key of a table, plus Python types for dataclass tables."""

    name: str
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    python_types: tuple[tuple[str, Any], ...] = ()
    source: Any = None


def table_shape(table: Any) -> TableShape:
    """The shape of ``table``; raises ``ValueError`` saying what is missing."""
    if dataclasses.is_dataclass(table) and isinstance(table, type):
        name = getattr(table, "__tablename__", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"dataclass {table.__name__} needs a __tablename__ string")
        fields = dataclasses.fields(table)
        keys = tuple(f.name for f in fields if f.metadata.get("primary_key"))
        if not keys:
            raise ValueError(
                f"dataclass {table.__name__} declares no primary key: mark its key fields "
                f'with field(metadata={{"primary_key": True}})'
            )
        hints = get_type_hints(table)
        return TableShape(
            name=name,
            columns=tuple(f.name for f in fields),
            primary_key=keys,
            python_types=tuple((f.name, hints.get(f.name, Any)) for f in fields),
            source=table,
        )
    if hasattr(table, "columns") and hasattr(table, "primary_key") and hasattr(table, "name"):
        keys = tuple(column.name for column in table.primary_key.columns)
        if not keys:
            raise ValueError(f"table {table.name!r} has no primary key")
        return TableShape(
            name=table.name,
            columns=tuple(column.name for column in table.columns),
            primary_key=keys,
            source=table,
        )
    raise ValueError(f"{table!r} is neither a SQLAlchemy Table nor a dataclass with a primary key")


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def row_as_dict(row: Any) -> dict[str, Any]:
    """A row returned by a materialise function, as a plain dict."""
    if isinstance(row, Mapping):
        return dict(row)
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        values = getattr(row, "__dict__", None)
        if values is not None and len(values) == len(_field_names(type(row))):
            return dict(values)
        return {name: getattr(row, name) for name in _field_names(type(row))}
    raise TypeError(f"a row must be a mapping or a dataclass instance, got {type(row).__name__}")
