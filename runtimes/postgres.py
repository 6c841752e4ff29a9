"""The PostgreSQL state store: per-key state, offset watermarks and pending outputs.

:class:`PostgresStateStore` implements :class:`flows.ports.StateStore` with SQLAlchemy Core
over psycopg 3. The in-memory :class:`flows.testing.InMemoryStateStore` follows the same
contract; ``tests/contract/test_state_store.py`` runs one suite against both.

Tables (in ``schema`` when one is given; everything is created when missing)::

    <state table>   key BYTEA PRIMARY KEY, value BYTEA NOT NULL, updated_at TIMESTAMPTZ
    flows_offsets   (group_id, topic, partition) PRIMARY KEY, next_offset BIGINT
    flows_pending   (group_id, topic, partition, first_offset) PRIMARY KEY,
                    next_offset BIGINT, outputs BYTEA (an ``OutputColumns`` protobuf)
    <materialised>  from a ``TableShape``: a SQLAlchemy ``Table`` as declared, or the
                    fields of a dataclass mapped to columns (see ``_column_type``)

``flows_offsets.next_offset`` is the *watermark*: the first input offset of the partition
whose effect is not yet in PostgreSQL. Every commit moves it with a conditional ``UPDATE``
(``... AND next_offset = :read``) in the same transaction as the state it protects, so a
worker that lost its partition (a zombie) cannot write: its ``read`` is stale, the update
matches no row, and the whole transaction rolls back with :class:`FencedError`.

Performance: one statement per kind of change per batch. States, pending batches and their
deletions are sent as arrays and expanded with ``unnest`` (one statement, one plan, whatever
the batch size); materialised rows go as multi-row ``VALUES`` (SQLAlchemy's
"insertmanyvalues"). Statements are built once per table and reused, so SQLAlchemy compiles
each once and psycopg prepares it server-side after a few executions.

Driver errors are translated here (the originals are kept as ``__cause__``): lost or refused
connections become :class:`DatabaseUnavailableError`, serialization failures and deadlocks
:class:`TransientError` (both worth retrying), anything else PostgreSQL refuses
:class:`StateError`.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import threading
import types
import typing
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from flows._proto import flows_envelope_pb2 as pb
from flows.errors import (
    ConfigError,
    DatabaseUnavailableError,
    FlowsError,
    StateError,
    TransientError,
    WatermarkMovedError,
)
from flows.ports import PendingBatch, StateCommit
from flows.records import RawMessage
from flows.tables import TableShape

OFFSETS_TABLE = "flows_offsets"
PENDING_TABLE = "flows_pending"

# SQLSTATEs that mean "this transaction lost a race; run it again".
_RETRYABLE_SQLSTATES = {
    "40001": "serialization failure",
    "40P01": "deadlock detected",
}

# Serialises DDL across processes: concurrent ``CREATE ... IF NOT EXISTS`` of one name can
# still fail on a unique index of the catalog, so creators take this advisory lock first.
_DDL_LOCK_KEY = 0x666C6F7773  # "flows"


def pack(items: Iterable[bytes]) -> str:
    """Many byte strings as one text parameter: ``x<hex>`` items joined by commas.

    psycopg dumps a ``bytea[]`` parameter element by element in Python (about 3.5 µs each,
    measured); one text parameter, split and decoded by PostgreSQL, costs a seventh of that.
    The ``x`` keeps an empty item distinct from no item.
    """
    return ",".join(["x" + item.hex() for item in items])


def _packed(name: str) -> Any:
    """The ``text[]`` items of a :func:`pack` parameter."""
    return sa.func.string_to_array(sa.bindparam(name, type_=sa.Text), ",")


def _unhex(item: Any) -> Any:
    """One :func:`pack` item back as ``bytea``."""
    return sa.func.decode(sa.func.substr(item, 2), "hex", type_=sa.LargeBinary)


#: scalar column types that both bulk paths below carry unchanged
_SCALAR_TYPES = (
    sa.Text,
    sa.String,
    sa.Integer,
    sa.BigInteger,
    sa.SmallInteger,
    sa.Float,
    sa.Double,
    sa.Boolean,
)
#: column types that come out of ``jsonb_to_recordset`` as they went in (the JSON upsert path)
_JSON_TYPES = (*_SCALAR_TYPES, sa.JSON)


def _on_conflict(
    insert: pg.Insert, table: sa.Table, shape: TableShape, columns: Sequence[str]
) -> pg.Insert:
    """``insert`` as an upsert: the non-key ``columns`` take the new values on conflict."""
    pk_columns = [table.c[c] for c in shape.primary_key]
    others = {c: insert.excluded[c] for c in columns if c not in shape.primary_key}
    if not others:
        return insert.on_conflict_do_nothing(index_elements=pk_columns)
    return insert.on_conflict_do_update(index_elements=pk_columns, set_=others)


def _json_rows(rows: Sequence[dict[str, Any]]) -> str | None:
    """The rows as one JSON array, or ``None`` when a value is not plain JSON (a float NaN,
    a Decimal, a date): those rows take the array path."""
    try:
        return json.dumps(rows, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


#: column types whose arrays psycopg sends as they are (the unnest upsert path)
_UNNEST_TYPES = (*_SCALAR_TYPES, sa.Numeric, sa.LargeBinary, sa.DateTime, sa.Date, sa.Uuid)


def psycopg_url(url: str) -> str:
    """The same URL naming SQLAlchemy's psycopg (3) driver; its default is psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# --- outputs as protobuf -------------------------------------------------------------------


def encode_outputs(outputs: Sequence[RawMessage]) -> bytes:
    """The ``OutputColumns`` of ``outputs``: ``None`` keys, values and timestamps survive.

    Column by column, because a stateful batch stores every output it produces: filling one
    ``Output`` message per output cost more than the rest of the commit (measured).
    """
    columns = pb.OutputColumns()
    topics = [m.topic for m in outputs]
    distinct = list(dict.fromkeys(topics))
    columns.topics.extend(distinct)
    if len(distinct) > 1:
        index = {topic: i for i, topic in enumerate(distinct)}
        columns.topic_index.extend([index[t] for t in topics])
    _bytes_column([m.key for m in outputs], columns.null_keys, columns.keys)
    _bytes_column([m.value for m in outputs], columns.null_values, columns.values)
    columns.timestamps.extend([-1 if m.timestamp is None else m.timestamp for m in outputs])
    if any(m.headers for m in outputs):
        columns.header_counts.extend([len(m.headers) for m in outputs])
        for m in outputs:
            for name, value in m.headers:
                columns.headers.add(key=name, value=value)
    return columns.SerializeToString()


def _bytes_column(items: list[bytes | None], nulls: Any, column: Any) -> None:
    if None in items:
        nulls.extend([i for i, item in enumerate(items) if item is None])
    column.extend([b"" if item is None else item for item in items])


def decode_outputs(data: bytes) -> tuple[RawMessage, ...]:
    """The inverse of :func:`encode_outputs`; reads an ``OutputBatch`` of earlier versions."""
    columns = pb.OutputColumns.FromString(data)
    if not columns.topics:
        return _decode_output_batch(data)
    topics = list(columns.topics)
    topic_of = [topics[i] for i in columns.topic_index] if columns.topic_index else None
    keys: list[bytes | None] = list(columns.keys)
    values: list[bytes | None] = list(columns.values)
    for i in columns.null_keys:
        keys[i] = None
    for i in columns.null_values:
        values[i] = None
    headers: list[tuple[tuple[str, bytes], ...]] = []
    if columns.header_counts:
        flat = [(h.key, h.value) for h in columns.headers]
        at = 0
        for count in columns.header_counts:
            headers.append(tuple(flat[at : at + count]))
            at += count
    return tuple(
        RawMessage(
            topic_of[i] if topic_of is not None else topics[0],
            keys[i],
            values[i],
            headers[i] if headers else (),
            None if timestamp == -1 else timestamp,
        )
        for i, timestamp in enumerate(columns.timestamps)
    )


def _decode_output_batch(data: bytes) -> tuple[RawMessage, ...]:
    """Outputs stored as an ``OutputBatch`` (one ``Output`` each) before ``OutputColumns``."""
    batch = pb.OutputBatch.FromString(data)
    return tuple(
        RawMessage(
            topic=out.topic,
            key=out.key if out.HasField("key") else None,
            value=out.value if out.HasField("value") else None,
            headers=tuple((h.key, h.value) for h in out.headers),
            timestamp=out.timestamp if out.HasField("timestamp") else None,
        )
        for out in batch.outputs
    )


# --- error translation ---------------------------------------------------------------------


def _reason(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def translate(error: sa.exc.SQLAlchemyError, doing: str) -> FlowsError:
    """The flows error for a SQLAlchemy/psycopg error met while ``doing`` something."""
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return TransientError(f"{doing}: {_RETRYABLE_SQLSTATES[sqlstate]} ({_reason(error)})")
    if isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError):
        return DatabaseUnavailableError(f"{doing}: PostgreSQL is unavailable ({_reason(error)})")
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return DatabaseUnavailableError(f"{doing}: the connection was lost ({_reason(error)})")
    return StateError(f"{doing}: PostgreSQL refused it ({_reason(error)})")


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    try:
        yield
    except (sa.exc.DBAPIError, sa.exc.TimeoutError) as error:
        raise translate(error, doing) from error


# --- materialised tables from dataclasses ---------------------------------------------------

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


def _column_type(hint: Any) -> tuple[Any, bool]:
    """The SQL type of a dataclass field's type hint, and whether the column is nullable.

    ``str`` Text, ``int`` BigInteger, ``float`` Double, ``bool`` Boolean, ``bytes`` BYTEA,
    ``datetime`` TIMESTAMPTZ, ``date`` Date, ``Decimal`` Numeric, ``UUID`` UUID, ``dict``,
    ``list`` and ``Any`` JSONB. ``X | None`` (and ``Any``) are nullable, the rest NOT NULL.
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


def _dataclass_table(shape: TableShape, metadata: sa.MetaData) -> sa.Table:
    if not shape.python_types:
        raise ConfigError(
            f"table {shape.name!r}: its shape has neither a SQLAlchemy Table nor field types"
        )
    columns = []
    for name, hint in shape.python_types:
        try:
            type_, nullable = _column_type(hint)
        except ValueError as error:
            raise ConfigError(f"table {shape.name!r}, column {name!r}: {error}") from None
        primary = name in shape.primary_key
        columns.append(
            sa.Column(name, type_, primary_key=primary, nullable=nullable and not primary)
        )
    return sa.Table(shape.name, metadata, *columns)


# --- the store -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _StateTable:
    """A state table and the statements on it, built once."""

    table: sa.Table
    upsert: sa.Executable
    delete: sa.Executable
    load: sa.Executable
    get: sa.Executable


class PostgresStateStore:
    """Per-key state, watermarks and pending outputs in PostgreSQL (thread-safe).

    Tables are created by :meth:`ensure_table` / :meth:`ensure_rows_table`, and the two
    bookkeeping tables (``flows_offsets``, ``flows_pending``) on first use. Every other
    method expects its table to exist. Call :meth:`close` to release the connections.
    """

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 2) -> None:
        if pool_size < 1:
            raise ConfigError(f"pool_size must be at least 1, got {pool_size}")
        self.schema = schema
        self._engine = sa.create_engine(
            psycopg_url(url),
            pool_size=pool_size,
            pool_pre_ping=True,
            connect_args={"application_name": "flows"},
        )
        self._metadata = sa.MetaData(schema=schema)
        self._lock = threading.Lock()
        self._infrastructure_ready = False
        self._states: dict[str, _StateTable] = {}
        self._row_tables: dict[str, sa.Table] = {}
        self._row_upserts: dict[tuple[str, frozenset[str]], sa.Executable] = {}
        self._row_unnests: dict[tuple[str, frozenset[str]], sa.Executable | None] = {}
        self._row_jsons: dict[tuple[str, frozenset[str]], sa.Executable | None] = {}

        md = self._metadata
        self._offsets = offsets = sa.Table(
            OFFSETS_TABLE,
            md,
            sa.Column("group_id", sa.Text, primary_key=True),
            sa.Column("topic", sa.Text, primary_key=True),
            sa.Column("partition", sa.Integer, primary_key=True),
            sa.Column("next_offset", sa.BigInteger, nullable=False),
        )
        self._pending = pending = sa.Table(
            PENDING_TABLE,
            md,
            sa.Column("group_id", sa.Text, primary_key=True),
            sa.Column("topic", sa.Text, primary_key=True),
            sa.Column("partition", sa.Integer, primary_key=True),
            sa.Column("first_offset", sa.BigInteger, primary_key=True),
            sa.Column("next_offset", sa.BigInteger, nullable=False),
            sa.Column("outputs", sa.LargeBinary, nullable=False),
        )
        group = sa.bindparam("b_group", type_=sa.Text)
        topic = sa.bindparam("b_topic", type_=sa.Text)
        partition = sa.bindparam("b_partition", type_=sa.Integer)
        this_partition = sa.and_(
            offsets.c.group_id == group, offsets.c.topic == topic, offsets.c.partition == partition
        )

        watermark_insert = pg.insert(offsets).values(
            group_id=group, topic=topic, partition=partition, next_offset=sa.bindparam("b_start")
        )
        self._watermark_insert = watermark_insert.on_conflict_do_nothing(
            index_elements=list(offsets.primary_key.columns)
        ).returning(offsets.c.next_offset)
        self._watermark_select = sa.select(offsets.c.next_offset).where(this_partition)
        self._watermark_update = (
            sa.update(offsets)
            .where(this_partition, offsets.c.next_offset == sa.bindparam("b_read"))
            .values(next_offset=sa.bindparam("b_new"))
        )

        # (topic, partition, offset) triples, passed as three arrays.
        committed = (
            sa.func.unnest(
                sa.bindparam("topics", type_=pg.ARRAY(sa.Text)),
                sa.bindparam("partitions", type_=pg.ARRAY(sa.Integer)),
                sa.bindparam("offsets", type_=pg.ARRAY(sa.BigInteger)),
            )
            .table_valued("topic", "partition", "committed")
            .render_derived(name="c")
        )
        self._pending_forget = sa.delete(pending).where(
            pending.c.group_id == group,
            pending.c.topic == committed.c.topic,
            pending.c.partition == committed.c.partition,
            pending.c.next_offset <= committed.c.committed,
        )
        batches = (
            sa.func.unnest(
                sa.bindparam("topics", type_=pg.ARRAY(sa.Text)),
                sa.bindparam("partitions", type_=pg.ARRAY(sa.Integer)),
                sa.bindparam("firsts", type_=pg.ARRAY(sa.BigInteger)),
                sa.bindparam("nexts", type_=pg.ARRAY(sa.BigInteger)),
                _packed("b_outputs"),
            )
            .table_valued("topic", "partition", "first_offset", "next_offset", "outputs")
            .render_derived(name="b")
        )
        pending_insert = pg.insert(pending).from_select(
            ["group_id", "topic", "partition", "first_offset", "next_offset", "outputs"],
            sa.select(
                group,
                batches.c.topic,
                batches.c.partition,
                batches.c.first_offset,
                batches.c.next_offset,
                _unhex(batches.c.outputs),
            ),
        )
        # A range stored again (only after `flows reset`) replaces the old one, as in memory.
        self._pending_insert = pending_insert.on_conflict_do_update(
            index_elements=list(pending.primary_key.columns),
            set_={
                "next_offset": pending_insert.excluded.next_offset,
                "outputs": pending_insert.excluded.outputs,
            },
        )
        self._pending_select = (
            sa.select(pending.c.first_offset, pending.c.next_offset, pending.c.outputs)
            .where(
                pending.c.group_id == group,
                pending.c.topic == topic,
                pending.c.partition == partition,
                pending.c.first_offset >= sa.bindparam("b_from"),
            )
            .order_by(pending.c.first_offset)
        )

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (its pool is this store's)."""
        return self._engine

    def __repr__(self) -> str:
        url = self._engine.url.render_as_string(hide_password=True)
        return f"PostgresStateStore({url!r}, schema={self.schema!r})"

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Closes every pooled connection."""
        self._engine.dispose()

    def ping(self) -> None:
        """``SELECT 1``; raises :class:`DatabaseUnavailableError` if PostgreSQL does not answer."""
        with _translated("pinging PostgreSQL"), self._engine.connect() as conn:
            conn.execute(sa.select(sa.literal(1)))

    # --- tables ----------------------------------------------------------------------------

    def _create(self, tables: Sequence[sa.Table], doing: str) -> None:
        """Creates the schema and ``tables`` (with their indexes) when missing."""
        with _translated(doing), self._engine.begin() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DDL_LOCK_KEY)))
            if self.schema is not None:
                conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
            for table in tables:
                if table.schema is not None and table.schema != self.schema:
                    conn.execute(sa.schema.CreateSchema(table.schema, if_not_exists=True))
                conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
                for index in table.indexes:
                    conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))

    def _ensure_infrastructure(self) -> None:
        if self._infrastructure_ready:
            return
        with self._lock:
            if not self._infrastructure_ready:
                self._create(
                    [self._offsets, self._pending], f"creating {OFFSETS_TABLE} and {PENDING_TABLE}"
                )
                self._infrastructure_ready = True

    def _state(self, name: str) -> _StateTable:
        """The state table ``name`` and its statements (built, not created, on first use)."""
        found = self._states.get(name)
        if found is not None:
            return found
        with self._lock:
            found = self._states.get(name)
            if found is not None:
                return found
            table = sa.Table(
                name,
                self._metadata,
                sa.Column("key", sa.LargeBinary, primary_key=True),
                sa.Column("value", sa.LargeBinary, nullable=False),
                sa.Column(
                    "updated_at",
                    sa.TIMESTAMP(timezone=True),
                    nullable=False,
                    server_default=sa.func.now(),
                ),
            )
            changed = (
                sa.func.unnest(_packed("keys"), _packed("values"))
                .table_valued("key", "value")
                .render_derived(name="v")
            )
            upsert = pg.insert(table).from_select(
                ["key", "value"], sa.select(_unhex(changed.c.key), _unhex(changed.c.value))
            )
            listed = sa.func.unnest(_packed("keys")).table_valued("key").render_derived(name="k")
            keys = sa.select(_unhex(listed.c.key)).scalar_subquery()
            found = self._states[name] = _StateTable(
                table=table,
                upsert=upsert.on_conflict_do_update(
                    index_elements=[table.c.key],
                    set_={"value": upsert.excluded.value, "updated_at": sa.func.now()},
                ),
                delete=sa.delete(table).where(table.c.key == sa.any_(sa.func.array(keys))),
                load=sa.select(table.c.key, table.c.value).where(
                    table.c.key == sa.any_(sa.func.array(keys))
                ),
                get=sa.select(table.c.value).where(table.c.key == sa.bindparam("key")),
            )
            return found

    def _rows_table(self, shape: TableShape) -> sa.Table:
        """The materialised table of ``shape`` in our metadata (built, not created)."""
        found = self._row_tables.get(shape.name)
        if found is not None:
            return found
        with self._lock:
            found = self._row_tables.get(shape.name)
            if found is not None:
                return found
            if isinstance(shape.source, sa.Table):
                if self.schema is not None:
                    found = shape.source.to_metadata(self._metadata, schema=self.schema)
                else:
                    found = shape.source.to_metadata(self._metadata)
            else:
                found = _dataclass_table(shape, self._metadata)
            self._row_tables[shape.name] = found
            return found

    def ensure_table(self, table: str) -> None:
        """Creates the state table ``table`` (and the bookkeeping tables) when missing."""
        self._ensure_infrastructure()
        self._create([self._state(table).table], f"creating state table {table!r}")

    def ensure_rows_table(self, shape: TableShape) -> None:
        """Creates the materialised table of ``shape`` (and the bookkeeping tables)."""
        self._ensure_infrastructure()
        self._create([self._rows_table(shape)], f"creating table {shape.name!r}")

    def drop_tables(self, names: Iterable[str]) -> None:
        """Drops the state or materialised tables ``names`` (those that exist), and forgets
        every table object and statement this store built for them."""
        names = list(names)
        with self._lock:
            for name in names:
                self._states.pop(name, None)
                self._row_tables.pop(name, None)
                key = name if self.schema is None else f"{self.schema}.{name}"
                if key in self._metadata.tables:
                    self._metadata.remove(self._metadata.tables[key])
            # Every statement built on a dropped table goes with it: a table created again
            # under the name may have other columns or types.
            for cache in (self._row_upserts, self._row_unnests, self._row_jsons):
                for cached in [k for k in cache if k[0] in names]:
                    del cache[cached]
        with _translated(f"dropping tables {names}"), self._engine.begin() as conn:
            for name in names:
                doomed = sa.Table(name, sa.MetaData(schema=self.schema))
                conn.execute(sa.schema.DropTable(doomed, if_exists=True))

    def forget_groups(self, groups: Iterable[str]) -> None:
        """Deletes the watermarks and pending outputs of ``groups``."""
        groups = list(groups)
        self._ensure_infrastructure()
        names = sa.bindparam("groups", type_=pg.ARRAY(sa.Text))
        with _translated(f"forgetting groups {groups}"), self._engine.begin() as conn:
            for table in (self._offsets, self._pending):
                conn.execute(
                    sa.delete(table).where(table.c.group_id == sa.any_(names)), {"groups": groups}
                )

    # --- watermarks ------------------------------------------------------------------------

    def watermark(self, group: str, topic: str, partition: int, start: int) -> int:
        """The stored watermark; stores ``start`` when there is none and returns it.

        Two statements (insert if absent, then read) rather than one: under READ COMMITTED
        the ``SELECT`` takes a new snapshot, so it sees a row another worker inserted
        concurrently, which a single statement's snapshot might not.
        """
        self._ensure_infrastructure()
        params = {"b_group": group, "b_topic": topic, "b_partition": partition, "b_start": start}
        with (
            _translated(f"reading the watermark of {topic}[{partition}]"),
            self._engine.begin() as conn,
        ):
            inserted = conn.execute(self._watermark_insert, params).scalar_one_or_none()
            if inserted is not None:
                return int(inserted)
            return int(conn.execute(self._watermark_select, params).scalar_one())

    # --- state -----------------------------------------------------------------------------

    def load(self, table: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored states of ``keys`` (one ``SELECT ... = ANY``); absent keys are left out."""
        if not keys:
            return {}
        statement = self._state(table).load
        with (
            _translated(f"loading {len(keys)} states of {table!r}"),
            self._engine.connect() as conn,
        ):
            found = conn.execute(statement, {"keys": pack(keys)}).all()
        return {bytes(key): bytes(value) for key, value in found}

    def get(self, table: str, key: bytes) -> bytes | None:
        """One state, for queries."""
        statement = self._state(table).get
        with _translated(f"reading a state of {table!r}"), self._engine.connect() as conn:
            value = conn.execute(statement, {"key": key}).scalar_one_or_none()
        return None if value is None else bytes(value)

    def scan(
        self, table: str, prefix: bytes, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` states whose key starts with ``prefix`` and sorts after ``after``.

        In key order (bytewise, as Python compares ``bytes``), for paging: pass the last key
        of a page as ``after`` to get the next.
        """
        if limit <= 0:
            return []
        state = self._state(table).table
        conditions = [state.c.key >= prefix]
        upper = _prefix_end(prefix)
        if upper is not None:
            conditions.append(state.c.key < upper)
        if after is not None:
            conditions.append(state.c.key > after)
        statement = (
            sa.select(state.c.key, state.c.value)
            .where(*conditions)
            .order_by(state.c.key)
            .limit(limit)
        )
        with _translated(f"scanning {table!r}"), self._engine.connect() as conn:
            found = conn.execute(statement).all()
        return [(bytes(key), bytes(value)) for key, value in found]

    def rows(self, table_name: str) -> list[dict[str, Any]]:
        """Every row of a materialised table, ordered by primary key (for tests)."""
        table = self._row_tables.get(table_name)
        with _translated(f"reading table {table_name!r}"), self._engine.connect() as conn:
            if table is None:
                try:
                    table = sa.Table(
                        table_name, sa.MetaData(schema=self.schema), autoload_with=conn
                    )
                except sa.exc.NoSuchTableError:
                    raise KeyError(f"no table {table_name!r}") from None
            order = [
                c.collate("C") if isinstance(c.type, sa.String) else c
                for c in table.primary_key.columns
            ]
            found = conn.execute(sa.select(table).order_by(*order)).mappings().all()
        return [dict(row) for row in found]

    # --- commit ----------------------------------------------------------------------------

    def commit(self, commit: StateCommit) -> None:
        """Applies ``commit`` in ONE transaction, in this order:

        a. **Watermarks**: for each input partition, in (topic, partition) order,
           ``UPDATE flows_offsets SET next_offset = :new WHERE group_id, topic, partition
           AND next_offset = :read``; every one must match exactly one row, else the
           transaction rolls back and :class:`FencedError` names the partition, the
           expected and the stored watermark. First, so that a fenced worker (a zombie)
           stops before writing anything, and so that two committers of one partition
           queue on its watermark row before touching any state; the fixed order keeps
           committers of several partitions from deadlocking on each other.
        b. **States**: one ``INSERT ... SELECT FROM unnest(keys, values) ON CONFLICT (key)
           DO UPDATE`` for the new values, one ``DELETE ... WHERE key = ANY(:keys)`` for
           ``None`` values.
        c. **Materialised rows**: collapsed per primary key (later fields win), then one
           multi-row ``INSERT ... ON CONFLICT (pk) DO UPDATE`` of the columns the rows
           carry (one statement per distinct set of columns; normally one).
        d. **Forget** pending batches Kafka has committed: ``next_offset <= committed`` per
           partition of ``kafka_committed``. Kafka's committed offset never passes the
           watermark read in (a), so this cannot touch the batch stored in (e).
        e. **Pending outputs** of this batch, one row per input partition (batches without
           outputs are skipped: there is nothing to re-emit).

        READ COMMITTED is enough. The only read that decides anything is the conditional
        ``UPDATE`` in (a); PostgreSQL evaluates it against the latest committed version of
        the row, and a second updater that waited on the first's row lock re-checks
        ``next_offset = :read`` against the first's result and matches nothing. The states
        written in (b) were computed from values loaded earlier, outside this transaction;
        they are right because only the holder of a partition's watermark writes the keys
        of that partition, and the holder's commit fails in (a) once anybody moved it.
        """
        self._ensure_infrastructure()
        state = self._state(commit.table) if commit.table is not None and commit.states else None
        rows_table = (
            self._rows_table(commit.shape) if commit.shape is not None and commit.rows else None
        )
        doing = f"committing a batch of group {commit.group!r}"
        with _translated(doing), self._engine.begin() as conn:
            self._move_watermarks(conn, commit)
            if state is not None:
                self._write_states(conn, state, commit)
            if rows_table is not None and commit.shape is not None:
                self._write_rows(conn, rows_table, commit.shape, commit.rows)
            if commit.kafka_committed:
                committed = sorted(commit.kafka_committed.items())
                conn.execute(
                    self._pending_forget,
                    {
                        "b_group": commit.group,
                        "topics": [t for (t, _), _ in committed],
                        "partitions": [p for (_, p), _ in committed],
                        "offsets": [c for _, c in committed],
                    },
                )
            self._write_pending(conn, commit.group, commit.pending)

    def _move_watermarks(self, conn: sa.Connection, commit: StateCommit) -> None:
        if not commit.watermarks:
            return
        moves = sorted(commit.watermarks.items())
        params = [
            {"b_group": commit.group, "b_topic": t, "b_partition": p, "b_read": read, "b_new": new}
            for (t, p), (read, new) in moves
        ]
        # One UPDATE per partition, pipelined by psycopg; the row counts add up, and each
        # UPDATE can match at most one row (the primary key), so the sum tells it all.
        moved = conn.execute(self._watermark_update, params).rowcount
        if moved == len(params):
            return
        stale: list[str] = []
        for (topic, partition), (read, _) in moves:
            stored = conn.execute(
                self._watermark_select,
                {"b_group": commit.group, "b_topic": topic, "b_partition": partition},
            ).scalar_one_or_none()
            if stored != read:
                found = "no watermark" if stored is None else f"watermark {stored}"
                stale.append(f"{topic}[{partition}] has {found}, expected {read}")
        raise WatermarkMovedError(
            f"group {commit.group!r}: {'; '.join(stale) or 'a watermark moved'}; another "
            f"worker owns the partition, so this batch is not committed"
        )

    @staticmethod
    def _write_states(conn: sa.Connection, state: _StateTable, commit: StateCommit) -> None:
        upserted = sorted((k, v) for k, v in commit.states.items() if v is not None)
        deleted = sorted(k for k, v in commit.states.items() if v is None)
        if upserted:
            conn.execute(
                state.upsert,
                {"keys": pack(k for k, _ in upserted), "values": pack(v for _, v in upserted)},
            )
        if deleted:
            conn.execute(state.delete, {"keys": pack(deleted)})

    def _write_rows(
        self,
        conn: sa.Connection,
        table: sa.Table,
        shape: TableShape,
        rows: Sequence[dict[str, Any]],
    ) -> None:
        collapsed: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            try:
                pk = tuple(row[c] for c in shape.primary_key)
            except KeyError as missing:
                raise StateError(
                    f"a row for table {shape.name!r} lacks primary key column {missing}"
                ) from None
            collapsed[pk] = {**collapsed.get(pk, {}), **row}
        by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in collapsed.values():
            by_columns.setdefault(frozenset(row), []).append(row)
        for columns, same in by_columns.items():
            unknown = columns - set(table.c.keys())
            if unknown:
                raise StateError(
                    f"rows for table {shape.name!r} have columns it lacks: {sorted(unknown)}"
                )
            by_json = self._row_upsert_json(table, shape, columns)
            encoded = _json_rows(same) if by_json is not None else None
            unnest = self._row_upsert_unnest(table, shape, columns)
            if by_json is not None and encoded is not None:
                conn.execute(by_json, {"rows": encoded})
            elif unnest is not None:
                ordered = sorted(columns)
                conn.execute(
                    unnest, {f"a_{i}": [row[c] for row in same] for i, c in enumerate(ordered)}
                )
            else:
                conn.execute(self._row_upsert(table, shape, columns), same)

    def _row_upsert_json(
        self, table: sa.Table, shape: TableShape, columns: frozenset[str]
    ) -> sa.Executable | None:
        """One ``INSERT ... SELECT FROM jsonb_to_recordset(rows) ON CONFLICT``, when every
        column is text, a number, a boolean or JSON: the rows travel as one JSON text that
        the C encoder writes, instead of arrays that psycopg dumps element by element in
        Python. ``None`` when a column's type does not come out of JSON as it is."""
        cache_key = (shape.name, columns)
        if cache_key in self._row_jsons:
            return self._row_jsons[cache_key]
        ordered = sorted(columns)
        found: sa.Executable | None = None
        if all(isinstance(table.c[c].type, _JSON_TYPES) for c in ordered):
            rows = (
                sa.func.jsonb_to_recordset(sa.cast(sa.bindparam("rows", type_=sa.Text), pg.JSONB))
                .table_valued(*[sa.column(c, table.c[c].type) for c in ordered])
                .render_derived(name="r", with_types=True)
            )
            insert = pg.insert(table).from_select(ordered, sa.select(*[rows.c[c] for c in ordered]))
            found = _on_conflict(insert, table, shape, ordered)
        self._row_jsons[cache_key] = found
        return found

    def _row_upsert_unnest(
        self, table: sa.Table, shape: TableShape, columns: frozenset[str]
    ) -> sa.Executable | None:
        """One ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT`` for the rows, when every
        column has a plain scalar type (no JSON, no arrays): a single statement whatever the
        batch size, with no per-row work in SQLAlchemy. ``None`` otherwise."""
        cache_key = (shape.name, columns)
        if cache_key in self._row_unnests:
            return self._row_unnests[cache_key]
        ordered = sorted(columns)
        plain = all(isinstance(table.c[c].type, _UNNEST_TYPES) for c in ordered)
        found: sa.Executable | None = None
        if plain:
            source = (
                sa.func.unnest(
                    *[
                        sa.bindparam(f"a_{i}", type_=pg.ARRAY(table.c[c].type))
                        for i, c in enumerate(ordered)
                    ]
                )
                .table_valued(*[f"c{i}" for i in range(len(ordered))])
                .render_derived(name="r")
            )
            insert = pg.insert(table).from_select(
                ordered, sa.select(*[source.c[f"c{i}"] for i in range(len(ordered))])
            )
            found = _on_conflict(insert, table, shape, ordered)
        self._row_unnests[cache_key] = found
        return found

    def _row_upsert(
        self, table: sa.Table, shape: TableShape, columns: frozenset[str]
    ) -> sa.Executable:
        cache_key = (shape.name, columns)
        found = self._row_upserts.get(cache_key)
        if found is not None:
            return found
        statement = _on_conflict(pg.insert(table), table, shape, sorted(columns))
        # RETURNING makes SQLAlchemy send the rows as multi-row VALUES ("insertmanyvalues",
        # 1000 rows a statement) instead of one INSERT per row.
        found = statement.returning(table.c[shape.primary_key[0]])
        self._row_upserts[cache_key] = found
        return found

    def _write_pending(
        self, conn: sa.Connection, group: str, batches: Sequence[PendingBatch]
    ) -> None:
        unique: dict[tuple[str, int, int], PendingBatch] = {}
        for batch in batches:
            if batch.outputs:
                unique[(batch.topic, batch.partition, batch.first_offset)] = batch
        if not unique:
            return
        ordered = [unique[k] for k in sorted(unique)]
        conn.execute(
            self._pending_insert,
            {
                "b_group": group,
                "topics": [b.topic for b in ordered],
                "partitions": [b.partition for b in ordered],
                "firsts": [b.first_offset for b in ordered],
                "nexts": [b.next_offset for b in ordered],
                "b_outputs": pack(encode_outputs(b.outputs) for b in ordered),
            },
        )

    # --- pending outputs -------------------------------------------------------------------

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int
    ) -> list[PendingBatch]:
        """Pending batches with ``first_offset >= from_offset``, in offset order."""
        self._ensure_infrastructure()
        params = {
            "b_group": group,
            "b_topic": topic,
            "b_partition": partition,
            "b_from": from_offset,
        }
        with (
            _translated(f"reading pending outputs of {topic}[{partition}]"),
            self._engine.connect() as conn,
        ):
            found = conn.execute(self._pending_select, params).all()
        return [
            PendingBatch(
                topic, partition, int(first), int(next_offset), decode_outputs(bytes(outputs))
            )
            for first, next_offset, outputs in found
        ]


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


__all__ = [
    "OFFSETS_TABLE",
    "PENDING_TABLE",
    "PostgresStateStore",
    "decode_outputs",
    "encode_outputs",
    "psycopg_url",
    "translate",
]
