"""A migrated database with one store, and helpers to fill it with rows whose vectors and text are known."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest
from fakeembed import fake_vector
from pgvector.psycopg import register_vector_async

from config.model import Quantization
from vectorstore.search import postings, statistics
from vectorstore.storage import stores, tables
from vectorstore.storage.migrations import migrate

DIMS = 16
STORE_ID = "vs_search0001"


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await register_vector_async(conn)
    return conn


async def new_store(
    conn: psycopg.AsyncConnection[Any],
    store_id: str = STORE_ID,
    *,
    language: str = "english",
    dims: int = DIMS,
    ef_search: int = 40,
    quantization: Quantization = "none",
) -> stores.StoreRecord:
    async with conn.transaction():
        return await stores.insert(
            conn,
            stores.NewStore(
                id=store_id,
                name=store_id,
                description=None,
                metadata={},
                declared=False,
                model="fake-model",
                dimensions=dims,
                distance="cosine",
                hnsw_m=16,
                hnsw_ef_construction=64,
                ef_search=ef_search,
                language=language,
                quantization=quantization,
            ),
        )


async def add_rows(
    conn: psycopg.AsyncConnection[Any],
    record: stores.StoreRecord,
    texts: Sequence[str],
    attributes: Sequence[dict[str, Any]] | None = None,
    *,
    prefix: str = "r",
) -> list[str]:
    """Rows with the fake embedder's vector of their own text; ANALYZE afterwards, as the writers do."""
    ids = [f"{prefix}{index}" for index in range(len(texts))]
    rows = [
        tables.ChunkRow(
            id=row_id,
            content=text,
            embedding=fake_vector(text, record.dimensions),
            attributes=(attributes[index] if attributes else {}),
        )
        for index, (row_id, text) in enumerate(zip(ids, texts, strict=True))
    ]
    async with conn.transaction():
        await tables.copy_chunks(conn, record.layout, rows)
    await statistics.keep_current(conn, record, force=True)
    return ids


async def drop_postings(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Make a store's table look as it did before the postings (migration 0400): no triggers, no side table."""
    for statement in tables.drop_postings_statements(record.table_name):
        await conn.execute(statement)
    postings.forget(record.table_name)


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as setup:
        await migrate(setup)
    conn = await connect(fresh_dsn)
    try:
        yield conn
    finally:
        await conn.close()
