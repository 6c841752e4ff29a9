"""SQLAlchemy and psycopg errors translated to flows errors, at the edge of the adapter.

The original is kept as ``__cause__``. Translation by cause:

- serialization failures (40001) and deadlocks (40P01): :class:`TransientError`, the
  transaction lost a race and is worth running again;
- an undefined table (42P01): :class:`TableMissingError`, no worker created it yet or
  ``flows reset`` dropped it;
- lost, refused or timed-out connections: :class:`DatabaseUnavailableError` (also transient);
- anything else PostgreSQL refuses: :class:`StateError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from flows.errors import (
    DatabaseUnavailableError,
    FlowsError,
    StateError,
    TableMissingError,
    TransientError,
)

# SQLSTATEs that mean "this transaction lost a race; run it again".
_RETRYABLE_SQLSTATES = {
    "40001": "serialization failure",
    "40P01": "deadlock detected",
}
_UNDEFINED_TABLE = "42P01"


def _reason(error: BaseException) -> str:
    """The driver error's type and first line: never the SQL or its parameters."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def translate(error: sa.exc.SQLAlchemyError, doing: str) -> FlowsError:
    """The flows error for a SQLAlchemy/psycopg error met while ``doing`` something."""
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return TransientError(f"{doing}: {_RETRYABLE_SQLSTATES[sqlstate]} ({_reason(error)})")
    if sqlstate == _UNDEFINED_TABLE:
        return TableMissingError(f"{doing}: the table does not exist ({_reason(error)})")
    if isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError):
        return DatabaseUnavailableError(f"{doing}: PostgreSQL is unavailable ({_reason(error)})")
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return DatabaseUnavailableError(f"{doing}: the connection was lost ({_reason(error)})")
    return StateError(f"{doing}: PostgreSQL refused it ({_reason(error)})")


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """Raises the :func:`translate` of a driver error met in the block, from the original."""
    try:
        yield
    except (sa.exc.DBAPIError, sa.exc.TimeoutError) as error:
        raise translate(error, doing) from error
