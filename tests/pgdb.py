"""Throwaway databases on the test server: one helper for every fixture that needs an empty database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg


def with_database(dsn: str, database: str) -> str:
    """The same connection settings, pointed at another database."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in info.items() if v is not None})


def new_database(pg_dsn: str, prefix: str = "t") -> Iterator[str]:
    """Yield the DSN of a new, empty database; drop it afterwards, even with connections still open."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_dsn, name)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
