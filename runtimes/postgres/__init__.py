"""The PostgreSQL adapter: the state store behind the core's ``StateStore`` port.

One concern per module, the same file names as the other adapters where they apply:

- ``store.py``       :class:`PostgresStateStore`: its tables, lifecycle and queries
- ``commit.py``      the commit protocol: one batch in one transaction, in a fixed order
- ``statements.py``  the bookkeeping and state tables, their statements, DDL
- ``watermarks.py``  a commit's first step: the conditional move of the watermarks
- ``history.py``     history tables of one store: created, converted, read
- ``history_tables.py``  a history table's shape and statements
- ``history_commit.py``  a commit's history: the insert, its lock and ``NOTIFY``, retention
- ``windows.py``     window tables of windowed steps, their statements and queries
- ``migrations.py``  bookkeeping tables of an older shape brought up to date
- ``rows.py``        materialised rows as upserts (three bulk paths)
- ``typemap.py``     materialised tables: dataclass type hints to column types
- ``codec.py``       pending outputs as the ``OutputColumns`` protobuf
- ``errors.py``      SQLAlchemy/psycopg errors translated to flows errors
- ``engine.py``      the SQLAlchemy engine over psycopg 3
"""

from runtimes.postgres.codec import decode_outputs, encode_outputs
from runtimes.postgres.engine import psycopg_url
from runtimes.postgres.errors import translate
from runtimes.postgres.statements import OFFSETS_TABLE, PENDING_TABLE
from runtimes.postgres.store import PostgresStateStore

__all__ = [
    "OFFSETS_TABLE",
    "PENDING_TABLE",
    "PostgresStateStore",
    "decode_outputs",
    "encode_outputs",
    "psycopg_url",
    "translate",
]
