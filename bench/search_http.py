"""HTTP search vs the same SQL through psycopg, at concurrency 1, 16 and 64, in one run.

    python bench/search_http.py [--rows 20000] [--dims 384] [--seconds 6]

The server runs as `vectorstore serve` in its own process (DATABASE_URL to a bench database), with one
declared store of `--rows` rows. Query embeddings come from the server's cache: every query text is searched
once before timing. The floor is `vectorstore.search.run_search` (the server's own statement: one pipelined
transaction with SET LOCAL ef_search / iterative_scan, then the ORDER BY ... LIMIT) issued from this process
through a psycopg pool of the same size, with the same vectors. HTTP and floor alternate per concurrency
level, so background load hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _db import bench_server, fresh_database, wait_ready
from pgvector.psycopg import register_vector_async
from psycopg_pool import AsyncConnectionPool

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the deterministic fake upstream the tests use
# Imported by name: mypy sees tests/ as its own root in some runs and not in others.
_fake = importlib.import_module("fakeembed")
FakeEmbedder = _fake.FakeEmbedder
fake_vector = _fake.fake_vector

from config import load_spec  # noqa: E402
from vectorstore.search.vector import run_search  # noqa: E402
from vectorstore.storage import stores, tables  # noqa: E402

KEY = "bench-key"
STORE = "bench-store"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def drive(concurrency: int, seconds: float, one: Callable[[int], Awaitable[None]]) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - start)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p95": statistics.quantiles(latencies, n=20)[18] * 1000,
    }


async def bench(args: argparse.Namespace, dsn: str) -> None:
    upstream = await FakeEmbedder(dimensions=args.dims).start()
    workdir = Path(tempfile.mkdtemp(prefix="vs-bench-"))
    spec_path = workdir / "stack.yaml"
    spec_path.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "bench",
                "namespace": "bench",
                "database": {"cluster": {"name": "pg"}},
                "auth": {"keys": [{"name": "bench", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
                "embedding": {"base_url": upstream.base_url, "model": "fake", "dimensions": args.dims},
                "stores": [{"name": STORE}],
            }
        )
    )
    spec = load_spec(spec_path)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "VECTORSTORE_API_KEY_BENCH": KEY}
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
        [
            sys.executable,
            "-c",
            os.environ.get("BENCH_SERVER_CODE", "import sys, cli; sys.exit(cli.main())"),
            "serve",
            "--spec",
            str(spec_path),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
            if not await wait_ready(http, base + "/ready"):
                raise SystemExit("server did not become ready")
            store_id = spec.stores[0].id
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await register_vector_async(conn)
                record = await stores.get(conn, store_id)
                assert record is not None
                rng = random.Random(3)
                centers = [fake_vector(f"topic {c}", args.dims) for c in range(50)]
                rows = []
                for i in range(args.rows):
                    center = centers[rng.randrange(len(centers))]
                    rows.append(
                        tables.ChunkRow(
                            f"r{i}", f"chunk {i}", [x + rng.gauss(0, 0.02) for x in center], attributes={"n": i % 10}
                        )
                    )
                async with conn.transaction():
                    await tables.copy_chunks(conn, record.layout, rows)
                await conn.execute(f"VACUUM ANALYZE {record.table_name}")
            texts = [f"question {i}" for i in range(200)]
            vectors = [fake_vector(t, args.dims) for t in texts]
            headers = {"Authorization": f"Bearer {KEY}"}
            url = f"{base}/v1/vector_stores/{store_id}/search"
            for t in texts:  # warm the server's query cache
                async with http.post(url, json={"query": t, "max_num_results": 10}, headers=headers) as r:
                    assert r.status == 200, await r.text()
            calls_before = len(upstream.calls)

            # Bodies encoded once: the client's own JSON work is not the server's cost.
            bodies = [json.dumps({"query": t, "max_num_results": 10}).encode() for t in texts]
            post_headers = {**headers, "Content-Type": "application/json"}

            async def via_http(i: int) -> None:
                async with http.post(url, data=bodies[i % len(bodies)], headers=post_headers) as r:
                    body = await r.read()
                    assert r.status == 200 and b"chunk" in body

            pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                dsn,
                min_size=spec.database.pool_max_size,
                max_size=spec.database.pool_max_size,
                configure=register_vector_async,
                open=False,
            )
            await pool.open(wait=True)

            async def via_sql(i: int) -> None:
                async with pool.connection() as conn:
                    hits = await run_search(
                        conn, record.layout, vectors[i % len(vectors)], limit=10, ef_search=record.ef_search
                    )
                    assert len(hits) == 10

            table = []
            for concurrency in (1, 16, 64):
                runs: dict[str, list[dict[str, float]]] = {"http": [], "sql": []}
                for _ in range(args.repeats):
                    runs["sql"].append(await drive(concurrency, args.seconds, via_sql))
                    runs["http"].append(await drive(concurrency, args.seconds, via_http))
                best = {k: max(v, key=lambda r: r["rps"]) for k, v in runs.items()}
                table.append((concurrency, best["http"], best["sql"]))
            await pool.close()
            assert len(upstream.calls) == calls_before, "timed searches reached the upstream: the cache missed"
    finally:
        server.terminate()
        server.wait(timeout=30)
        await upstream.close()
    print(
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; {args.rows} rows x "
        f"{args.dims} dims, k=10, pool {spec.database.pool_max_size}, {args.seconds}s x {args.repeats} per cell (best)"
    )
    print("| concurrency | HTTP req/s | HTTP p50 / p95 ms | SQL req/s | SQL p50 / p95 ms | HTTP / SQL |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c, h, s in table:
        print(
            f"| {c} | {h['rps']:.0f} | {h['p50']:.1f} / {h['p95']:.1f} | {s['rps']:.0f} | "
            f"{s['p50']:.1f} / {s['p95']:.1f} | **{h['rps'] / s['rps']:.2f}** |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with bench_server() as server_dsn:
        asyncio.run(bench(args, fresh_database(server_dsn, "bench_search")))


if __name__ == "__main__":
    main()
