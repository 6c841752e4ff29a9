"""The materialise step: records mapped to rows of a table, the last row of a key wins."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flows.encoding import decode
from flows.errors import DecodeError, UserFunctionError
from flows.ports import StateStore
from flows.records import RawRecord, Record
from flows.steps.base import BatchResult, Step
from flows.tables import TableShape, row_as_dict


@dataclass(eq=False)
class MaterialiseStep(Step):
    """Maps records to rows; rows with one primary key collapse to the last in the batch."""

    call: Callable[[Record[Any, Any]], Any] | None = None
    shape: TableShape | None = None

    def prepare(self, store: StateStore) -> None:
        if self.shape is not None:
            store.ensure_rows_table(self.shape)

    def collect(self, records: Sequence[RawRecord]) -> BatchResult:
        result = BatchResult()
        call, shape = self.call, self.shape
        assert call is not None and shape is not None
        topics = {topic.name: topic for topic in self.sources}
        rows = result.rows
        columns = frozenset(shape.columns)
        primary_key = shape.primary_key
        #: per returned type: the field count of a dataclass whose fields are all columns
        #: (its rows need no per-row checks but the key's), else 0
        plain: dict[type, int] = {}
        for raw in records:
            try:
                record = decode(topics[raw.topic], raw)
                try:
                    returned = call(record)
                    if returned is None:
                        result.filtered += 1
                        continue
                    kind = type(returned)
                    size = plain.get(kind)
                    if size is None:
                        size = plain[kind] = _plain_row_size(kind, columns)
                    values = getattr(returned, "__dict__", None) if size else None
                    if values is not None and len(values) == size:
                        row = values.copy()
                        key = tuple([row[c] for c in primary_key])
                        if None in key:
                            raise ValueError(
                                f"the row {row!r:.200} lacks primary key "
                                f"{[c for c in primary_key if row[c] is None]}"
                            )
                        rows[key] = row
                        continue
                    single = isinstance(returned, Mapping) or (
                        dataclasses.is_dataclass(returned) and not isinstance(returned, type)
                    )
                    many = (returned,) if single else returned
                    batch = []
                    for item in many:
                        row = row_as_dict(item)
                        missing = [c for c in primary_key if row.get(c) is None]
                        if missing:
                            raise ValueError(f"the row {row!r:.200} lacks primary key {missing}")
                        if not row.keys() <= columns:
                            unknown = sorted(set(row) - columns)
                            raise ValueError(f"table {shape.name!r} has no column {unknown}")
                        batch.append(row)
                except Exception as error:
                    raise UserFunctionError(
                        self.flow, raw.topic, raw.partition, raw.offset, error
                    ) from error
            except (DecodeError, UserFunctionError) as error:
                self._fail(raw, error, result)
                continue
            for row in batch:
                rows[tuple(row[c] for c in primary_key)] = row
        return result


def _plain_row_size(kind: type, columns: frozenset[str]) -> int:
    """The number of fields of dataclass ``kind`` when every field is a column, else 0.

    Such rows are copied from the instance's ``__dict__`` (when it holds exactly the fields)
    without the per-row checks of :func:`row_as_dict`: the column check holds for the type.
    """
    if not dataclasses.is_dataclass(kind):
        return 0
    names = [f.name for f in dataclasses.fields(kind)]
    return len(names) if set(names) <= columns else 0


__all__ = ["MaterialiseStep"]
