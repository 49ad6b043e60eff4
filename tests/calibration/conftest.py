"""Stores big enough to calibrate (past search/vector.py's EXACT_MAX_ROWS), with attributes at known selectivity.

Rows are clustered random unit vectors (numpy), so HNSW at a low ef_search misses some neighbours and the
calibration has something to choose. Attributes: `ten` keeps 10% of rows per value, `hundred` 1%, `thousand`
0.1%.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
from search.conftest import db  # noqa: F401 - a migrated database, for the tests here too

from vectorstore.search import statistics
from vectorstore.storage import stores, tables

ROWS = 2000
DIMS = 32


def clustered(rows: int, dims: int, seed: int = 3, clusters: int = 30) -> Any:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims))
    data = centres[rng.integers(0, clusters, rows)] + 0.9 * rng.standard_normal((rows, dims))
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def attributes_of(index: int) -> dict[str, Any]:
    return {"ten": f"t{index % 10}", "hundred": f"h{index % 100}", "thousand": f"k{index % 1000}"}


async def fill(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, rows: int = ROWS, *, start: int = 0, seed: int = 3
) -> None:
    """`rows` rows (ids r<start>...) of clustered vectors in the store's dimensions, then ANALYZE as writers do."""
    data = clustered(rows, record.dimensions, seed)
    chunk_rows = (
        tables.ChunkRow(
            id=f"r{start + i}",
            content=f"chunk {start + i}",
            embedding=[float(x) for x in data[i]],
            attributes=attributes_of(start + i),
        )
        for i in range(rows)
    )
    async with conn.transaction():
        await tables.copy_chunks(conn, record.layout, chunk_rows)
    await statistics.keep_current(conn, record, force=True)


STORE_ID = "vs_recall0001"


def recall_spec_data(embed_url: str, *, target: float, index: dict[str, Any] | None = None) -> dict[str, Any]:
    """A spec with one store, `docs`, at DIMS dimensions and the given target recall."""
    from server.conftest import spec_data

    store: dict[str, Any] = {"name": "docs", "id": STORE_ID, "search": {"mode": "vector"}}
    if index is not None:
        store["index"] = index
    data = spec_data(embed_url, stores=[store], dims=DIMS)
    data["search"] = {"target_recall": target}
    return data


async def fill_store(dsn: str, rows: int = ROWS, *, start: int = 0) -> stores.StoreRecord:
    """Rows into the declared store (created by a server's reconcile) through its own connection."""
    from pgvector.psycopg import register_vector_async

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await register_vector_async(conn)
        record = await stores.get(conn, STORE_ID)
        assert record is not None
        await fill(conn, record, rows, start=start)
        found = await stores.get(conn, STORE_ID)
        assert found is not None
        return found


async def calibration_row(dsn: str) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        await cur.execute("SELECT runs, calibrated_by, reached, rows_at FROM search_calibration")
        return await cur.fetchone()
