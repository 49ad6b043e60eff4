"""Reconcile time for 200 declared stores: cold (empty database) and no-op (everything already there).

    python bench/reconcile_bench.py [--stores 200] [--repeats 3]

Cold includes migrations and creating each store's table, HNSW and GIN indexes; no-op is the startup cost
of every later replica start. The floor is the same DDL issued directly through psycopg (cold: the CREATE
TABLE/INDEX statements and registry INSERTs in one transaction; no-op: one SELECT of the registry).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from _db import bench_server, fresh_database

from config import Spec, load_spec
from config.model import vector_type_for
from vectorstore.storage import reconcile, tables
from vectorstore.storage.migrations import migrate


def make_spec(count: int) -> Spec:
    path = Path(tempfile.mkdtemp(prefix="vs-bench-")) / "stack.yaml"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "bench",
                "namespace": "bench",
                "database": {"cluster": {"name": "pg"}},
                "auth": {"keys": [{"name": "k", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
                "embedding": {"base_url": "http://127.0.0.1:9", "model": "m", "dimensions": 768},
                "stores": [{"name": f"store-{i:03d}", "metadata": {"i": str(i)}} for i in range(count)],
            }
        )
    )
    return load_spec(path)


async def run_reconcile(dsn: str, spec: Spec) -> tuple[float, dict[str, int]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        await migrate(conn)
        plan = await reconcile.reconcile(conn, spec)
        return time.perf_counter() - start, plan.counts()


async def floor_cold(dsn: str, spec: Spec) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await conn.execute("CREATE TABLE reg (id text PRIMARY KEY, name text, metadata jsonb, table_name text)")
        start = time.perf_counter()
        async with conn.transaction():
            for store in spec.stores:
                layout = tables.Layout(
                    store.id,
                    tables.table_name(store.id),
                    store.dimensions,
                    store.distance,
                    vector_type_for(store.dimensions),
                )
                for statement in tables.create_table_statements(layout):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO reg VALUES (%s, %s, %s, %s)",
                    [store.id, store.name, json.dumps(store.metadata), layout.table],
                )
        return time.perf_counter() - start


async def floor_noop(dsn: str) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        await (await conn.execute("SELECT * FROM vector_stores")).fetchall()
        return time.perf_counter() - start


async def bench(server_dsn: str, args: argparse.Namespace) -> None:
    spec = make_spec(args.stores)
    cold: list[float] = []
    noop: list[float] = []
    f_cold: list[float] = []
    f_noop: list[float] = []
    for r in range(args.repeats):
        dsn = fresh_database(server_dsn, f"bench_reconcile_{r}")
        seconds, counts = await run_reconcile(dsn, spec)
        assert counts["create"] == args.stores, counts
        cold.append(seconds)
        seconds, counts = await run_reconcile(dsn, spec)
        assert counts["unchanged"] == args.stores, counts
        noop.append(seconds)
        f_noop.append(await floor_noop(dsn))
        f_cold.append(await floor_cold(fresh_database(server_dsn, f"bench_floor_{r}"), spec))
    print(f"{args.stores} declared stores (768 dims, cosine), median of {args.repeats}")
    print("| case | reconcile | floor (same DDL / registry read through psycopg) |")
    print("| --- | --- | --- |")
    print(f"| cold | {statistics.median(cold):.2f} s | {statistics.median(f_cold):.2f} s |")
    print(f"| no-op | {statistics.median(noop) * 1000:.1f} ms | {statistics.median(f_noop) * 1000:.1f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with bench_server() as server_dsn:
        asyncio.run(bench(server_dsn, args))


if __name__ == "__main__":
    main()
