"""Tables of an older shape brought to the current one, on a store's first use of them.

Run by the store in the transaction that creates the tables, so under the DDL advisory lock
(``statements.take_ddl_lock``): of several workers starting at once, one migrates and the
others then find nothing to do. Every step is idempotent.

The steps, oldest first:

1. windowed steps (the commit sequence and stream time of :class:`flows.ports.PartitionTime`):
   ``flows_offsets`` gains ``seq BIGINT NOT NULL DEFAULT 0`` and ``stream_time BIGINT``;
   ``flows_pending`` gains ``seq BIGINT NOT NULL DEFAULT 0`` and its primary key becomes
   ``(group_id, topic, partition, first_offset, seq)``. Existing rows get ``seq`` 0, which
   is what the steps that stored them (without windows) keep writing
   (:func:`migrate_bookkeeping`).
2. rows due by the wall clock (:attr:`flows.ports.WindowRow.wall`): each window table, when
   first ensured, gains ``wall BOOLEAN NOT NULL DEFAULT false`` (existing rows are windows,
   due by stream time: false), and its ``(partition, due)`` index, ``<table>_due``, is
   dropped; the caller then creates the ``(partition, wall, due)`` index
   (:func:`migrate_window_table`). Adding a column with a constant default rewrites nothing
   (PostgreSQL 11+); building the new index reads the table once, while writes wait.
3. SQL-readable state tables (:func:`migrate_state_table`, when a worker of the flow first
   ensures its table): a state table gains ``source_partition INTEGER`` and
   ``source_offset BIGINT`` (NULL in existing rows: no rewrite), and its ``key`` and
   ``value`` columns take the types the flow's formats call for
   (:class:`flows.ports.StateColumns`): ``bytea`` keys of a ``str`` or ``json`` key format
   become ``text COLLATE "C"`` (``convert_from(key, 'UTF8')``), ``bytea`` values of the
   ``json`` state format become ``jsonb`` (``convert_from(value, 'UTF8')::jsonb``), and back
   to ``bytea`` for a flow whose formats changed to bytes. Changing a type rewrites the
   table (and its primary key index) under an ACCESS EXCLUSIVE lock: commits of the table
   wait for it, once. When PostgreSQL refuses a conversion (a stored key with a NUL
   character, a value that is not standard JSON, such as ``NaN``), that column keeps its
   type, a warning says which rows to fix, and the store reads and writes the table as it
   is (the column strategies follow the catalog, not the formats); the next start tries
   again.

4. history tables (:func:`convert_history_table`), when a flow's formats or ``encrypt``
   changed since its history table was made: ``key``, and ``previous`` with ``value``,
   take the column types of the flow's states, converted as a state table's are (a flow
   that starts encrypting turns JSONB into BYTEA, then ``flows state rotate --plaintext``
   encrypts the old rows); a conversion PostgreSQL refuses leaves the columns as they are,
   with a warning.

The catalog is read first and ``ALTER TABLE`` runs only when something is missing: even a
no-op ``ALTER TABLE ... IF NOT EXISTS`` takes an ACCESS EXCLUSIVE lock, which would queue
every worker's commit behind a starting worker's migration.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import sqlalchemy as sa

from flows.ports import StateColumns
from runtimes.postgres.columns import column_of
from runtimes.postgres.statements import OFFSETS_TABLE, PENDING_TABLE

log = logging.getLogger("flows.postgres")

_COLUMNS = sa.text(
    "SELECT c.relname, a.attname FROM pg_attribute a"
    " JOIN pg_class c ON c.oid = a.attrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = coalesce(:schema, current_schema())"
    " AND c.relname IN (:offsets, :pending) AND a.attnum > 0 AND NOT a.attisdropped"
)
_PRIMARY_KEY = sa.text(
    "SELECT con.conname, array_agg(a.attname::text ORDER BY k.ord) FROM pg_constraint con"
    " JOIN pg_class c ON c.oid = con.conrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)"
    " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
    " WHERE n.nspname = coalesce(:schema, current_schema()) AND c.relname = :pending"
    " AND con.contype = 'p' GROUP BY con.conname"
)
PENDING_KEY = ["group_id", "topic", "partition", "first_offset", "seq"]
_WINDOW_COLUMNS = sa.text(
    "SELECT a.attname FROM pg_attribute a"
    " JOIN pg_class c ON c.oid = a.attrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = coalesce(:schema, current_schema()) AND c.relname = :table"
    " AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped"
)
_TYPES = sa.text(
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
    " JOIN pg_class c ON c.oid = a.attrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = coalesce(:schema, current_schema()) AND c.relname = :table"
    " AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped"
)
_INDEXES = sa.text(
    "SELECT i.relname FROM pg_index x"
    " JOIN pg_class i ON i.oid = x.indexrelid"
    " JOIN pg_class c ON c.oid = x.indrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = coalesce(:schema, current_schema()) AND c.relname = :table"
)


def migrate_bookkeeping(conn: sa.Connection, schema: str | None) -> list[str]:
    """Brings ``flows_offsets`` and ``flows_pending`` (which exist) to the current shape, in
    ``conn``'s transaction; returns the statements it ran (none when already current)."""
    preparer = conn.dialect.identifier_preparer
    names = {"schema": schema, "offsets": OFFSETS_TABLE, "pending": PENDING_TABLE}

    def qualified(table: str) -> str:
        quoted = preparer.quote(table)
        return quoted if schema is None else f"{preparer.quote_schema(schema)}.{quoted}"

    present = {(table, column) for table, column in conn.execute(_COLUMNS, names)}
    ran: list[str] = []
    offsets, pending = qualified(OFFSETS_TABLE), qualified(PENDING_TABLE)
    if (OFFSETS_TABLE, "seq") not in present or (OFFSETS_TABLE, "stream_time") not in present:
        ran.append(
            f"ALTER TABLE {offsets} ADD COLUMN IF NOT EXISTS seq BIGINT NOT NULL DEFAULT 0,"
            " ADD COLUMN IF NOT EXISTS stream_time BIGINT"
        )
    if (PENDING_TABLE, "seq") not in present:
        ran.append(f"ALTER TABLE {pending} ADD COLUMN IF NOT EXISTS seq BIGINT NOT NULL DEFAULT 0")
    key = conn.execute(_PRIMARY_KEY, names).one_or_none()
    if key is None or list(key[1]) != PENDING_KEY:
        drop = "" if key is None else f"DROP CONSTRAINT {preparer.quote(key[0])}, "
        ran.append(f"ALTER TABLE {pending} {drop}ADD PRIMARY KEY ({', '.join(PENDING_KEY)})")
    for statement in ran:
        conn.execute(sa.text(statement))
    return ran


def old_due_indexes(table: str) -> tuple[str, ...]:
    """The due indexes window tables had before: ``(partition, due)`` (before ``wall``),
    then ``(partition, wall, due)`` over every row (before the partial indexes)."""
    return f"{table}_due", f"{table}_wall_due"


def migrate_window_table(conn: sa.Connection, table: str, schema: str | None) -> list[str]:
    """Brings the window table ``table``, when it exists, to the current shape but for the
    ``(partition, wall, due)`` indexes (the caller creates them next, in ``conn``'s transaction,
    which holds the DDL lock); returns the statements it ran (none when already current or
    when there is no such table)."""
    preparer = conn.dialect.identifier_preparer
    names = {"schema": schema, "table": table}

    def qualified(name: str) -> str:
        quoted = preparer.quote(name)
        return quoted if schema is None else f"{preparer.quote_schema(schema)}.{quoted}"

    columns = set(conn.execute(_WINDOW_COLUMNS, names).scalars())
    if not columns:
        return []  # not created yet: it will be, in the current shape
    ran: list[str] = []
    if "wall" not in columns:
        ran.append(
            f"ALTER TABLE {qualified(table)}"
            " ADD COLUMN IF NOT EXISTS wall BOOLEAN NOT NULL DEFAULT false"
        )
    indexes = set(conn.execute(_INDEXES, names).scalars())
    for old in old_due_indexes(table):
        if old in indexes:
            ran.append(f"DROP INDEX IF EXISTS {qualified(old)}")
    for statement in ran:
        conn.execute(sa.text(statement))
    return ran


@dataclasses.dataclass(frozen=True, slots=True)
class FoundState:
    """What the catalog says of a state table: how it keeps keys and values, and whether
    it has the version columns."""

    columns: StateColumns
    versioned: bool


def found_state_table(conn: sa.Connection, table: str, schema: str | None) -> FoundState | None:
    """The shape of the state table ``table`` as it exists (None: there is none)."""
    rows = conn.execute(_TYPES, {"schema": schema, "table": table}).all()
    types: dict[str, str] = {name: type_ for name, type_ in rows}
    if not types:
        return None
    key: Literal["bytes", "text"] = "text" if types.get("key") == "text" else "bytes"
    value: Literal["bytes", "json"] = "json" if types.get("value") == "jsonb" else "bytes"
    versioned = "source_partition" in types and "source_offset" in types
    return FoundState(StateColumns(key, value), versioned)


def migrate_state_table(
    conn: sa.Connection, table: str, schema: str | None, wanted: StateColumns
) -> tuple[FoundState | None, list[str]]:
    """Brings the state table ``table``, when it exists, to the current shape with
    ``wanted`` columns as far as its rows allow (step 3), in ``conn``'s transaction, which
    must hold the DDL lock; returns its shape after that (None: no such table) and the
    statements that ran."""
    found = found_state_table(conn, table, schema)
    if found is None:
        return None, []
    preparer = conn.dialect.identifier_preparer
    quoted = preparer.quote(table)
    name = quoted if schema is None else f"{preparer.quote_schema(schema)}.{quoted}"
    ran: list[str] = []
    if not found.versioned:
        ran.append(
            f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS source_partition INTEGER,"
            " ADD COLUMN IF NOT EXISTS source_offset BIGINT"
        )
        conn.execute(sa.text(ran[-1]))
    changes: dict[str, str] = {}
    for column, have, want in (
        ("key", found.columns.key, wanted.key),
        ("value", found.columns.value, wanted.value),
    ):
        if have != want:
            target = column_of(want)
            collate = ' COLLATE "C"' if target.sql_name == "text" else ""
            source = column_of(have).sql_name
            changes[column] = (
                f"ALTER COLUMN {column} TYPE {target.sql_name}{collate}"
                f" USING {target.using(column, source)}"
            )
    converted: set[str] = set()

    def convert(columns: list[str], warn: bool) -> None:
        statement = f"ALTER TABLE {name} " + ", ".join(changes[c] for c in columns)
        try:
            with conn.begin_nested():
                conn.execute(sa.text(statement))
        except sa.exc.DBAPIError as error:
            if not _refused_data(error):
                raise
            if warn:
                reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
                log.warning(
                    "state table %s keeps its %s column as it is: PostgreSQL refused to "
                    "convert a stored row (%s), so flows reads and writes the table as it "
                    "is. Fix or delete the rows that do not convert (%s), then start a "
                    "worker to migrate it",
                    table,
                    columns[0],
                    reason,
                    _finding(name, columns[0]),
                )
            return
        ran.append(statement)
        converted.update(columns)

    if changes:
        # Both in one statement (one rewrite); when that fails, each alone, so that a value
        # that does not convert keeps no key from converting.
        convert(list(changes), warn=len(changes) == 1)
        if not converted and len(changes) > 1:
            for column in changes:
                convert([column], warn=True)
    return (
        FoundState(
            StateColumns(
                wanted.key if "key" in converted else found.columns.key,
                wanted.value if "value" in converted else found.columns.value,
            ),
            versioned=True,
        ),
        ran,
    )


def convert_history_table(
    conn: sa.Connection, table: str, schema: str | None, found: StateColumns, wanted: StateColumns
) -> StateColumns:
    """Brings the history table ``table``'s ``key``, ``previous`` and ``value`` columns from
    ``found`` to ``wanted`` (step 4), in ``conn``'s transaction, which holds the DDL lock;
    returns the columns it keeps after that (``found`` when PostgreSQL refused)."""
    if found == wanted:
        return found
    preparer = conn.dialect.identifier_preparer
    quoted = preparer.quote(table)
    name = quoted if schema is None else f"{preparer.quote_schema(schema)}.{quoted}"
    changes: list[str] = []
    for columns, have, want in (
        (("key",), found.key, wanted.key),
        (("previous", "value"), found.value, wanted.value),
    ):
        if have != want:
            target = column_of(want)
            collate = ' COLLATE "C"' if target.sql_name == "text" else ""
            source = column_of(have).sql_name
            changes += [
                f"ALTER COLUMN {column} TYPE {target.sql_name}{collate}"
                f" USING {target.using(column, source)}"
                for column in columns
            ]
    statement = f"ALTER TABLE {name} " + ", ".join(changes)
    try:
        with conn.begin_nested():
            conn.execute(sa.text(statement))
    except sa.exc.DBAPIError as error:
        if not _refused_data(error):
            raise
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        log.warning(
            "history table %s keeps its columns as they are: PostgreSQL refused to convert "
            "a stored row (%s); the flow's commits will fail until the rows that do not "
            "convert are fixed or deleted",
            table,
            reason,
        )
        return found
    return wanted


def _refused_data(error: sa.exc.DBAPIError) -> bool:
    """Whether PostgreSQL refused a row's data (SQLSTATE class 22: invalid text, JSON,
    encoding), as opposed to anything else going wrong."""
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
    return sqlstate.startswith("22")


def _finding(name: str, column: str) -> str:
    """A query that lists the rows whose ``column`` (``bytea``) does not convert."""
    if column == "key":
        return f"SELECT key FROM {name} WHERE position('\\x00'::bytea IN key) > 0"
    return f"SELECT key FROM {name} WHERE convert_from(value, 'UTF8') ~ '(NaN|Infinity|\\\\u0000)'"
