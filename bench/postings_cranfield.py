"""Keyword search's two paths on the Cranfield abstracts, below HTTP: the postings path's fetch and scoring
apart, and a whole keyword search through the postings against the GIN path (the floor it replaced).

    python bench/postings_cranfield.py [--json report.json]

The 1,400 abstracts go into one store's table with `tables.copy_chunks`, one statement each (as one file
each would), with fake 64-dimension vectors and no HNSW index (keyword search never reads them); then an
ANALYZE and a full compaction, as the server's background does within seconds. For the 225 judged queries:
mean wall time of the fetch statement (`postings.fetch_statement`, prepared) and of `postings.score`, postings
and terms a query, and p50 of `hybrid.run_keyword` (10 results) on the postings path and of the GIN path's statement.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector_async

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import cranfield
from _db import bench_server, finish_report, fresh_database, new_unindexed_store

from vectorstore.search import hybrid, postings, postings_compaction, text
from vectorstore.search import statistics as search_statistics
from vectorstore.search.vector import NO_FILTER
from vectorstore.storage import stores, tables
from vectorstore.storage.migrations import migrate

DIMS = 64
fake_vector: Any = importlib.import_module("fakeembed").fake_vector  # tests/, by path like ingest_bench


async def bench(dsn: str) -> dict[str, Any]:
    collection = cranfield.load(cranfield.DEFAULT_DIR)
    queries = [collection.queries[number - 1] for number in collection.judged_queries()]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
        await register_vector_async(conn)
        # No HNSW index: keyword search never reads the vectors.
        record = await new_unindexed_store(conn, "cranfield", "none", DIMS, name="cranfield", model="fake")
        for index, document in enumerate(collection.documents):
            row = tables.ChunkRow(f"d{index}", document.text or "-", fake_vector(str(index), DIMS))
            async with conn.transaction():
                await tables.copy_chunks(conn, record.layout, [row])
        await search_statistics.keep_current(conn, record, force=True)
        await postings_compaction.compact_fully(conn, record.table_name, record.id)
        current = await stores.get(conn, record.id)
        assert current is not None
        stats = text.TextStats(current.id, current.analyzed_rows, current.text_avg_length, current.text_min_freq)
        fetch = postings.fetch_statement(current.layout)
        for query in queries[:10]:  # past psycopg's prepare threshold
            await conn.execute(fetch, [current.layout.language, query, "{}", None], binary=True)
        started = time.perf_counter()
        fetched = []
        for query in queries:
            cur = await conn.execute(fetch, [current.layout.language, query, "{}", None], binary=True)
            fetched.append(await cur.fetchall())
        fetch_ms = (time.perf_counter() - started) * 1000 / len(queries)
        started = time.perf_counter()
        for rows in fetched:
            postings.score(rows, stats, 10)
        score_ms = (time.perf_counter() - started) * 1000 / len(queries)
        read = sum(len(row[1] or b"") // 8 for rows in fetched for row in rows if row[3] == 0)
        terms = sum(1 for rows in fetched for row in rows if row[3] == 0)
        latencies: dict[str, list[float]] = {"postings": [], "gin": []}
        for query in queries:
            started = time.perf_counter()
            await hybrid.run_keyword(conn, current.layout, stats, query, limit=10)
            latencies["postings"].append(time.perf_counter() - started)
            statement, params = hybrid.keyword_statement(current.layout, stats, query, NO_FILTER, [], 10)
            started = time.perf_counter()
            await (await conn.execute(statement, params)).fetchall()
            latencies["gin"].append(time.perf_counter() - started)
    return {
        "chunks": len(collection.documents),
        "queries": len(queries),
        "fetch_ms_mean": round(fetch_ms, 3),
        "score_ms_mean": round(score_ms, 3),
        "postings_per_query": round(read / len(queries), 1),
        "block_rows_per_query": round(terms / len(queries), 1),
        "keyword_p50_ms": {path: round(statistics.median(values) * 1000, 3) for path, values in latencies.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    with bench_server() as server_dsn:
        report = asyncio.run(bench(fresh_database(server_dsn, "bench_postings_cranfield")))
    finish_report(report, args.json or None)


if __name__ == "__main__":
    main()
