"""The SQLAlchemy engine of a store: psycopg 3, a bounded pool, connections checked on use."""

from __future__ import annotations

import sqlalchemy as sa


def psycopg_url(url: str) -> str:
    """The same URL naming SQLAlchemy's psycopg (3) driver; its default is psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_engine(url: str, pool_size: int) -> sa.Engine:
    """An engine for ``url`` (any PostgreSQL URL, see :func:`psycopg_url`).

    ``pool_pre_ping`` tests a pooled connection before handing it out and replaces one that
    PostgreSQL closed while it was idle (a restart). Nothing connects until first use.
    """
    return sa.create_engine(
        psycopg_url(url),
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={"application_name": "flows"},
    )
