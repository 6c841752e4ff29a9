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

The catalog is read first and ``ALTER TABLE`` runs only when something is missing: even a
no-op ``ALTER TABLE ... IF NOT EXISTS`` takes an ACCESS EXCLUSIVE lock, which would queue
every worker's commit behind a starting worker's migration.
"""

from __future__ import annotations

import sqlalchemy as sa

from runtimes.postgres.statements import OFFSETS_TABLE, PENDING_TABLE

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
