"""Large stores: build time, size, latency and recall of each quantization, at 500,000 x 768.

    python bench/large_stores.py [--rows 500000] [--dims 768] [--settings none halfvec binary] [--json FILE]

For each setting it makes a store with the server's own code (`stores.insert`, which creates the table and its
HNSW index for that quantization), drops the HNSW index, loads the rows with binary COPY, and times
`CREATE INDEX` of that same index with `maintenance_work_mem` large enough to build in memory: the build time
an operator sees when a large store is created or reindexed. Then it reads the heap (with TOAST) and index
sizes from the catalog, and runs `vectorstore.search.vector.run_search` (the server's statement, default
`ef_search` 100) for `--queries` queries at concurrency 1 and 16 through a psycopg pool.

The vectors are clustered synthetic ones (`--clusters` Gaussian centres, unit length), made with numpy; the
queries are fresh points from the same clusters. Recall@10 is against exact cosine search over the original
float32 vectors, computed in numpy: the floor measured in the same run, which also counts what halfvec
rounding costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import psycopg
from _db import bench_server, finish_report, fresh_database, new_unindexed_store
from pgvector.psycopg import register_vector_async
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from vectorstore.search import vector
from vectorstore.search.vector import run_search
from vectorstore.storage import stores, tables
from vectorstore.storage.migrations import migrate


def make_vectors(rows: int, dims: int, clusters: int, queries: int, seed: int = 7) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims), dtype=np.float32)
    data = np.empty((rows, dims), dtype=np.float32)
    for start in range(0, rows, 50000):
        stop = min(rows, start + 50000)
        picks = rng.integers(0, clusters, stop - start)
        data[start:stop] = centres[picks] + 0.6 * rng.standard_normal((stop - start, dims), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    picks = rng.integers(0, clusters, queries)
    query = centres[picks] + 0.6 * rng.standard_normal((queries, dims), dtype=np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return data, query


def exact_neighbours(data: Any, queries: Any, k: int = 10) -> list[set[str]]:
    truth: list[set[str]] = []
    for start in range(0, len(queries), 20):
        scores = queries[start : start + 20] @ data.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        truth += [{f"r{i}" for i in row} for row in top]
    return truth


async def build(
    conn: psycopg.AsyncConnection[Any], setting: str, data: Any
) -> tuple[stores.StoreRecord, dict[str, Any]]:
    record = await new_unindexed_store(conn, f"vs_large_{setting}", setting, data.shape[1])
    layout = record.layout
    started = time.perf_counter()
    # Row by row: 500,000 x 768 as Python floats at once would take about 9 GB.
    rows = (tables.ChunkRow(id=f"r{i}", content=f"chunk {i}", embedding=data[i]) for i in range(len(data)))
    async with conn.transaction():
        await tables.copy_chunks(conn, layout, rows)
    copy_seconds = time.perf_counter() - started
    await conn.execute("SET maintenance_work_mem = '6GB'")
    await conn.execute("SET max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    for statement in tables.index_statements(layout):
        await conn.execute(statement)
    build_seconds = time.perf_counter() - started
    await conn.execute(sql.SQL("ANALYZE {t}").format(t=layout.ident))
    cur = await conn.execute(
        "SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(c.reltoastrelid), 0),"
        " pg_relation_size(to_regclass(%s)) FROM pg_class c WHERE c.oid = to_regclass(%s)",
        [f"{record.table_name}_hnsw", record.table_name],
    )
    heap, toast, index = await cur.fetchone() or (0, 0, 0)
    return record, {
        "copy_seconds": round(copy_seconds, 1),
        "index_build_seconds": round(build_seconds, 1),
        "heap_mib": round((heap + toast) / 2**20, 1),
        "index_mib": round(index / 2**20, 1),
    }


async def latency(
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
    record: stores.StoreRecord,
    queries: list[list[float]],
    concurrency: int,
) -> tuple[dict[str, float], list[set[str]]]:
    times: list[float] = []
    found: list[set[str]] = [set() for _ in queries]
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(queries):
            index = position
            position += 1
            async with pool.connection() as conn:
                started = time.perf_counter()
                hits = await run_search(conn, record.layout, queries[index], limit=10, ef_search=record.ef_search)
                times.append(time.perf_counter() - started)
            found[index] = {hit.id for hit in hits}

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(times)
    return {
        "qps": round(len(times) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }, found


async def bench(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    data, queries = make_vectors(args.rows, args.dims, args.clusters, args.queries)
    truth = exact_neighbours(data, queries)
    query_list = queries.tolist()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as setup:
        await migrate(setup)
    report: dict[str, Any] = {}
    defaults = (vector.MIN_BINARY_CANDIDATES, vector.BINARY_RESCORE_FACTOR)
    for setting in args.settings:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await register_vector_async(conn)
            record, sizes = await build(conn, setting, data)
        # Binary stores rescore an over-fetched candidate set: measure the default and the asked-for sizes.
        candidate_counts = [None, *args.binary_candidates] if setting == "binary" else [None]
        for candidates in candidate_counts:
            name = setting if candidates is None else f"{setting}-rescore-{candidates}"
            if candidates is not None:
                vector.MIN_BINARY_CANDIDATES, vector.BINARY_RESCORE_FACTOR = candidates, 1
            async with AsyncConnectionPool(
                dsn, min_size=16, max_size=16, configure=register_vector_async, open=False
            ) as pool:
                await pool.open(wait=True)
                await latency(pool, record, query_list[:20], 1)  # warm the caches
                c1, found = await latency(pool, record, query_list, 1)
                c16, _ = await latency(pool, record, query_list, 16)
            vector.MIN_BINARY_CANDIDATES, vector.BINARY_RESCORE_FACTOR = defaults
            recall = sum(len(a & b) for a, b in zip(found, truth, strict=True)) / (10 * len(truth))
            report[name] = {**sizes, "c1": c1, "c16": c16, "recall@10": round(recall, 4)}
            print(json.dumps({name: report[name]}), file=sys.stderr, flush=True)
        if args.drop:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(sql.SQL("DROP TABLE {t}").format(t=sql.Identifier(record.table_name)))
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--settings", nargs="+", default=["none", "halfvec", "binary"])
    parser.add_argument(
        "--binary-candidates", type=int, nargs="*", default=[], help="also measure binary with these rescore sizes"
    )
    parser.add_argument("--drop", action="store_true", help="drop each store after measuring it (saves disk)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    started = time.perf_counter()
    with bench_server() as server_dsn:
        dsn = fresh_database(server_dsn, "large_bench")
        report: dict[str, Any] = {"settings": asyncio.run(bench(args, dsn))}
    report["args"] = {"rows": args.rows, "dims": args.dims, "clusters": args.clusters, "queries": args.queries}
    report["wall_seconds"] = round(time.perf_counter() - started)
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
