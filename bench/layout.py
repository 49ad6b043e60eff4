"""Table per store, or one shared table? Measured: build time, search latency and recall, with and without a filter.

    python bench/layout.py [--stores 3] [--rows 20000] [--dims 128] [--queries 100]

A: each store has its own table and HNSW index (what vectorstore/storage.py does).
B: one table for every store, a `store_id` column (b-tree) and one HNSW index over all rows; a search filters
   on store_id, with pgvector's iterative scan so it still finds k rows.
Both use cosine, m=16, ef_construction=64, ef_search=40, `hnsw.iterative_scan = relaxed_order`, and the same
rows. Recall@k is against an exact scan (index scans off) of the same rows and filter.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from _db import bench_server, fresh_database
from pgvector import Vector
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

K = 10


def random_vectors(rng: random.Random, count: int, dims: int, centers: Sequence[list[float]]) -> list[list[float]]:
    # Clustered data (like real embeddings), not uniform noise, where HNSW recall means little.
    out = []
    for _ in range(count):
        center = centers[rng.randrange(len(centers))]
        out.append([c + rng.gauss(0.0, 0.35) for c in center])
    return out


def load(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]], shared: bool) -> None:
    cols = "(store_id, id, attributes, embedding)" if shared else "(id, attributes, embedding)"
    types = ["text", "text", "jsonb", "vector"] if shared else ["text", "jsonb", "vector"]
    with conn.cursor() as cur, cur.copy(f"COPY {table} {cols} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def search(conn: psycopg.Connection[Any], sql: str, params: list[Any], exact: bool = False) -> list[str]:
    with conn.transaction():
        conn.execute(
            "SELECT set_config('hnsw.ef_search', '40', true), set_config('hnsw.iterative_scan', %s, true)",
            ["relaxed_order"],
        )
        if exact:
            conn.execute("SET LOCAL enable_indexscan = off")
            conn.execute("SET LOCAL enable_bitmapscan = off")
        return [row[0] for row in conn.execute(sql.encode(), params).fetchall()]


def build_per_store(conn: psycopg.Connection[Any], data: dict[str, list[list[float]]], dims: int) -> float:
    seconds = 0.0
    for name, vectors in data.items():
        conn.execute(
            f"CREATE TABLE a_{name} (id text PRIMARY KEY, attributes jsonb NOT NULL,"
            f" embedding vector({dims}) NOT NULL)".encode()
        )
        rows = [(f"{name}-{i}", Jsonb({"group": i % 10}), Vector(v)) for i, v in enumerate(vectors)]
        start = time.perf_counter()
        load(conn, f"a_{name}", rows, False)
        conn.execute(f"CREATE INDEX ON a_{name} USING hnsw (embedding vector_cosine_ops)".encode())
        conn.execute(f"CREATE INDEX ON a_{name} USING gin (attributes jsonb_path_ops)".encode())
        seconds += time.perf_counter() - start
    return seconds


def build_shared(conn: psycopg.Connection[Any], data: dict[str, list[list[float]]], dims: int) -> float:
    conn.execute(
        f"CREATE TABLE b_chunks (store_id text NOT NULL, id text PRIMARY KEY, attributes jsonb NOT NULL,"
        f" embedding vector({dims}) NOT NULL)".encode()
    )
    rows = [
        (name, f"{name}-{i}", Jsonb({"group": i % 10}), Vector(v))
        for name, vectors in data.items()
        for i, v in enumerate(vectors)
    ]
    start = time.perf_counter()
    load(conn, "b_chunks", rows, True)
    conn.execute("CREATE INDEX ON b_chunks USING hnsw (embedding vector_cosine_ops)")
    conn.execute("CREATE INDEX ON b_chunks (store_id)")
    conn.execute("CREATE INDEX ON b_chunks USING gin (attributes jsonb_path_ops)")
    return time.perf_counter() - start


def measure(
    conn: psycopg.Connection[Any], queries: dict[str, list[list[float]]], shared: bool, filtered: bool
) -> dict[str, float]:
    latencies: list[float] = []
    recalls: list[float] = []
    counts: list[int] = []
    where = " AND attributes @> %s" if filtered else ""
    extra: list[Any] = [Jsonb({"group": 3})] if filtered else []
    for name, qs in queries.items():
        if shared:
            sql = f"SELECT id FROM b_chunks WHERE store_id = %s{where} ORDER BY embedding <=> %s LIMIT {K}"
            prefix: list[Any] = [name, *extra]
        else:
            sql = f"SELECT id FROM a_{name} WHERE TRUE{where} ORDER BY embedding <=> %s LIMIT {K}"
            prefix = list(extra)
        for q in qs:
            params = [*prefix, Vector(q)]
            start = time.perf_counter()
            got = search(conn, sql, params)
            latencies.append(time.perf_counter() - start)
            truth = search(conn, sql, params, exact=True)
            counts.append(len(got))
            recalls.append(len(set(got) & set(truth)) / max(1, len(truth)))
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": statistics.quantiles(latencies, n=20)[18] * 1000,
        "recall": statistics.mean(recalls),
        "rows": statistics.mean(counts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="table per store vs a shared table")
    parser.add_argument("--stores", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    rng = random.Random(7)
    centers = [[rng.gauss(0.0, 1.0) for _ in range(args.dims)] for _ in range(50)]
    data = {f"store{s}": random_vectors(rng, args.rows, args.dims, centers) for s in range(args.stores)}
    queries = {name: random_vectors(rng, args.queries, args.dims, centers) for name in data}

    with bench_server() as server_dsn:
        dsn = fresh_database(server_dsn, "bench_layout")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("SET maintenance_work_mem = '512MB'")
            register_vector(conn)
            build_a = build_per_store(conn, data, args.dims)
            build_b = build_shared(conn, data, args.dims)
            conn.execute("ANALYZE")
            results: dict[str, dict[str, float]] = {}
            for label, filtered in (("unfiltered", False), ("filtered (1 row in 10)", True)):
                results[f"{label} / A table per store"] = measure(conn, queries, False, filtered)
                results[f"{label} / B shared table"] = measure(conn, queries, True, filtered)
            row = conn.execute(
                "SELECT (SELECT sum(pg_total_relation_size(oid)) FROM pg_class"
                " WHERE relname LIKE 'a\\_%' AND relkind = 'r'), pg_total_relation_size('b_chunks')"
            ).fetchone()
            assert row is not None
        print(f"{args.stores} stores x {args.rows} rows, {args.dims} dims, {args.queries} queries per store, k={K}")
        print(
            f"build (COPY + indexes): A {build_a:.1f}s, B {build_b:.1f}s;"
            f" size: A {row[0] / 2**20:.0f} MiB, B {row[1] / 2**20:.0f} MiB"
        )
        print(f"| case | p50 ms | p95 ms | recall@{K} | rows returned |")
        print("| --- | --- | --- | --- | --- |")
        for case, r in results.items():
            print(f"| {case} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['recall']:.3f} | {r['rows']:.1f} |")


if __name__ == "__main__":
    main()
