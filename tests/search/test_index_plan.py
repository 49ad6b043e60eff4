"""An approximate search is planned on the HNSW index, never as a scan of the whole table.

PostgreSQL prices a sequential scan without the TOAST reads of the vectors, and pgvector's HNSW estimate only
makes up for that past a threshold, so at some store sizes and `ef_search` values the planner scanned the
table: at 40,000 x 768, `ef_search` 100 (the default) ran at 600-800 ms a search where 64 and 200 took a few
ms (docs/benchmarks.md). The same happens with a small store just past `EXACT_MAX_ROWS`: 1,100 x 64 here is
planned as a table scan at `ef_search` 64 to 200 when unguarded (checked below, so this test can't pass
vacuously), and takes about a second to build.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

from search.conftest import new_store
from vectorstore.search import hybrid, statistics, text, vector
from vectorstore.search.filters import compile_filters
from vectorstore.storage import stores, tables

ROWS = 1100
DIMS = 64


async def small_store(conn: psycopg.AsyncConnection[Any]) -> tuple[stores.StoreRecord, Any]:
    record = await new_store(conn, "vs_plan", dims=DIMS, ef_search=100)
    rng = np.random.default_rng(5)
    data = rng.standard_normal((ROWS, DIMS))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    rows = (
        tables.ChunkRow(id=f"r{i}", content=f"row {i}", embedding=data[i].tolist(), attributes={"k": f"v{i % 10}"})
        for i in range(ROWS)
    )
    async with conn.transaction():
        await tables.copy_chunks(conn, record.layout, rows)
    await statistics.keep_current(conn, record, force=True)
    found = await stores.get(conn, record.id)
    assert found is not None and not vector.exact_is_cheap(found.analyzed_rows)
    return found, data


async def test_approximate_searches_use_the_index_where_the_planner_would_scan(
    db: psycopg.AsyncConnection[Any],
) -> None:
    record, data = await small_store(db)
    query = data[7].tolist()
    index = f"{record.table_name}_hnsw"
    for ef_search in (64, 100, 200):
        unguarded = await vector.explain_nearest(
            db, record.layout, query, limit=10, ef_search=ef_search, no_table_scan=False
        )
        assert "Seq Scan" in unguarded and index not in unguarded, (ef_search, unguarded)
        plan = await vector.explain_nearest(db, record.layout, query, limit=10, ef_search=ef_search)
        assert f"Index Scan using {index}" in plan and "Seq Scan" not in plan, (ef_search, plan)

    # The search itself, through the same path: the row the query was cut from comes first.
    hits = await vector.find_nearest(db, record.layout, query, limit=10, ef_search=100)
    assert hits[0].id == "r7" and len(hits) == 10

    # A filtered approximate search walks the index too (iterative scan), for `eq` and `in`.
    for spec in ({"type": "eq", "key": "k", "value": "v3"}, {"type": "in", "key": "k", "value": ["v3", "v4"]}):
        where, params = compile_filters(spec)
        plan = await vector.explain_nearest(
            db, record.layout, query, limit=10, ef_search=100, where=where, where_params=params
        )
        assert "Seq Scan" not in plan, (spec, plan)

    # An exact search chosen on purpose keeps its table scan.
    exact = await vector.explain_nearest(db, record.layout, query, limit=10, ef_search=100, exact=True)
    assert "Seq Scan" in exact and index not in exact, exact

    # The guard is local to the search's own transaction: the pooled connection keeps the default.
    cur = await db.execute("SHOW enable_seqscan")
    assert await cur.fetchone() == ("on",)


async def test_the_hybrid_vector_leg_uses_the_index_where_the_planner_would_scan(
    db: psycopg.AsyncConnection[Any],
) -> None:
    """Hybrid, the default mode, runs the same guard: its vector leg (40 rows deep) was planned as a scan and sort
    of the whole table on small stores, where vector mode walked the index."""
    record, data = await small_store(db)
    query = data[7].tolist()
    stats = text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)
    index = f"{record.table_name}_hnsw"
    table_scan = f"Seq Scan on {record.table_name} "
    depth = hybrid.depth_for(10)

    async def explain(**guard: bool) -> str:
        return await hybrid.explain_hybrid(
            db, record.layout, stats, "row 7", query, limit=10, depth=depth, ef_search=100, **guard
        )

    unguarded = await explain(no_table_scan=False)
    assert table_scan in unguarded and index not in unguarded, unguarded
    plan = await explain()
    assert f"Index Scan using {index}" in plan and table_scan not in plan, plan

    result = await hybrid.run_hybrid(db, record.layout, stats, "row 7", query, limit=10, depth=depth, ef_search=100)
    assert result.hits[0].id == "r7" and len(result.hits) == 10 and result.keyword_rows > 0

    # An exact hybrid search keeps the planner's choice, and the guard stays inside the search's transaction.
    exact = await explain(exact=True)
    assert index not in exact, exact
    cur = await db.execute("SHOW enable_seqscan")
    assert await cur.fetchone() == ("on",)
