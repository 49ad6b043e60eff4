"""Searches with read replicas: where they ran, and what each one cost the primary.

    python bench/replica_reads.py [--rows 20000] [--dims 384] [--seconds 8] [--concurrency 16]

Builds a real primary and a streaming hot standby on 127.0.0.1 (tests/pgcluster.py: the embedded
PostgreSQL's initdb, pg_basebackup -R and pg_ctl), loads one store on the primary, and runs `vectorstore
serve` with `database.read_replicas` and DATABASE_READ_URL pointing at the standby. Three runs of the same
searches (query embeddings from the server's cache):

- **replicas, quiet primary**: nothing else writes;
- **replicas, primary writing**: another connection commits small transactions on the primary all along
  (`--writes-per-second`), so every search's read-your-writes target keeps moving;
- **primary only**: the same server without DATABASE_READ_URL, for comparison.

For each: searches per second, where they ran (the server's own counters from /metrics), the primary's WAL
position queries per search, and the CPU time per search of the primary's and the standby's PostgreSQL
processes, read from /proc. Everything shares one machine, so the rates say little about capacity; the
costs per search do.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _db import wait_ready
from _proc import tree_cpu_seconds
from pgvector.psycopg import register_vector_async

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
_fake = importlib.import_module("fakeembed")
_cluster = importlib.import_module("pgcluster")

from config import load_spec  # noqa: E402
from vectorstore.storage import stores, tables  # noqa: E402

KEY = "bench-key"
TEXTS = [f"question {i}" for i in range(200)]
COUNTERS = {
    "replica": r"vectorstore_replica_searches_total",
    "lagging": r'vectorstore_replica_fallbacks_total\{reason="lagging"\}',
    "unavailable": r'vectorstore_replica_fallbacks_total\{reason="unavailable"\}',
    "failed": r'vectorstore_replica_fallbacks_total\{reason="failed"\}',
    "lsn_reads": r"vectorstore_primary_lsn_reads_total",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postmaster(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


async def counters(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    found = {}
    for name, pattern in COUNTERS.items():
        match = re.search(pattern + r" ([0-9.e+]+)", text)
        found[name] = float(match.group(1)) if match else 0.0
    return found


async def writer(dsn: str, per_second: float, stop: asyncio.Event, done: list[int]) -> None:
    """Small commits on the primary until stopped; done[0] counts them, done[1] is the backend's pid."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        done[1] = conn.info.backend_pid
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_writes (id bigserial PRIMARY KEY, at timestamptz)")
        while not stop.is_set():
            await conn.execute("INSERT INTO bench_writes (at) VALUES (now())")
            done[0] += 1
            await asyncio.sleep(1.0 / per_second)


async def run(args: argparse.Namespace, pair: Any, label: str, read_url: str | None, writes: bool) -> dict[str, Any]:
    upstream = await _fake.FakeEmbedder(dimensions=args.dims).start()
    spec_path = Path(tempfile.mkdtemp(prefix="vs-bench-")) / "stack.yaml"
    spec_path.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "bench",
                "namespace": "bench",
                "database": {"cluster": {"name": "pg", "instances": 2}, "read_replicas": True},
                "auth": {"keys": [{"name": "bench", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
                "embedding": {"base_url": upstream.base_url, "model": "fake", "dimensions": args.dims},
                "stores": [{"name": "bench-store", "search": {"mode": "vector"}}],
            }
        )
    )
    spec = load_spec(spec_path)
    dsn = pair.primary.dsn("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_"))}
    env.update({"DATABASE_URL": dsn, "VECTORSTORE_API_KEY_BENCH": KEY})
    if read_url is not None:
        env["DATABASE_READ_URL"] = read_url
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    code = "import sys, cli; sys.exit(cli.main())"
    argv = [sys.executable, "-c", code, "serve", "--spec", str(spec_path), "--port", str(port)]
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stop = asyncio.Event()
    written = [0, 0]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
            if not await wait_ready(http, base + "/ready", seconds=60):
                raise SystemExit("server did not become ready")
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await register_vector_async(conn)
                record = await stores.get(conn, spec.stores[0].id)
                assert record is not None
                cur = await conn.execute(f"SELECT count(*) FROM {record.table_name}")
                row = await cur.fetchone()
                if row is not None and row[0] == 0:
                    await load(conn, record, args)
            await asyncio.to_thread(pair.wait_replayed)
            url = f"{base}/v1/vector_stores/{record.id}/search"
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            bodies = [json.dumps({"query": t, "max_num_results": 10}).encode() for t in TEXTS]
            for body in bodies:  # warm the query cache; the replica pool comes up meanwhile
                async with http.post(url, data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
            await asyncio.sleep(1.0)
            background = asyncio.create_task(writer(dsn, args.writes_per_second, stop, written)) if writes else None
            await asyncio.sleep(0.5 if writes else 0.0)
            meters: dict[str, Callable[[], float]] = {
                # The writer's own backend is the writes' cost, not the searches'.
                "primary": lambda: (
                    tree_cpu_seconds(postmaster(pair.primary.data))
                    - (tree_cpu_seconds(written[1]) if written[1] else 0.0)
                ),
                "standby": lambda: tree_cpu_seconds(postmaster(pair.standby.data)),
                "server": lambda: tree_cpu_seconds(server.pid),
            }
            cpu_before = {name: meter() for name, meter in meters.items()}
            seen_before = await counters(http, base)
            written_before = written[0]
            latencies: list[float] = []
            deadline = time.perf_counter() + args.seconds
            started = time.perf_counter()

            async def client(w: int) -> None:
                i = w
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    async with http.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                        assert r.status == 200 and b"chunk" in await r.read()
                    latencies.append(time.perf_counter() - t0)
                    i += args.concurrency

            await asyncio.gather(*(client(w) for w in range(args.concurrency)))
            elapsed = time.perf_counter() - started
            cpu = {name: meter() - cpu_before[name] for name, meter in meters.items()}
            seen = {k: v - seen_before[k] for k, v in (await counters(http, base)).items()}
            writes_done = written[0] - written_before
            stop.set()
            if background is not None:
                await background
    finally:
        server.terminate()
        server.wait(timeout=60)
        await upstream.close()
        shutil.rmtree(spec_path.parent, ignore_errors=True)
    count = len(latencies)
    return {
        "label": label,
        "rps": count / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p95": statistics.quantiles(latencies, n=20)[18] * 1000,
        "count": count,
        "seen": seen,
        "cpu_us": {name: value / count * 1e6 for name, value in cpu.items()},
        "writes_per_second": writes_done / elapsed,
    }


async def load(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, args: argparse.Namespace) -> None:
    import random

    rng = random.Random(3)
    centers = [_fake.fake_vector(f"topic {c}", args.dims) for c in range(50)]
    chunks = []
    for i in range(args.rows):
        vector = [x + rng.gauss(0, 0.02) for x in centers[rng.randrange(len(centers))]]
        chunks.append(tables.ChunkRow(f"r{i}", f"chunk {i}", vector, attributes={"n": i % 10}))
    async with conn.transaction():
        await tables.copy_chunks(conn, record.layout, chunks)
    await conn.execute(f"VACUUM ANALYZE {record.table_name}")


async def bench(args: argparse.Namespace) -> None:
    pair = await asyncio.to_thread(_cluster.StreamingPair.create)
    try:
        with psycopg.connect(pair.primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        read_url = f"host=127.0.0.1 port={pair.standby.port}"
        results = []
        load_start = os.getloadavg()[0]
        for label, url, writes in (
            ("replicas, quiet primary", read_url, False),
            ("replicas, primary writing", read_url, True),
            ("primary only", None, False),
        ):
            results.append(await run(args, pair, label, url, writes))
        load_end = os.getloadavg()[0]
    finally:
        await asyncio.to_thread(pair.close)
    print(
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; {args.rows} rows x "
        f"{args.dims} dims, k=10, concurrency {args.concurrency}, {args.seconds}s per run, load average "
        f"{load_start:.1f} at start, {load_end:.1f} at the end"
    )
    print(
        "| run | searches/s | p50 / p95 ms | on the replica | fallbacks lagging / unavailable / failed "
        "| primary position queries per search | CPU µs per search: primary (writer excluded) / standby / server |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        seen = r["seen"]
        rate = f" ({r['writes_per_second']:.0f} commits/s)" if r["writes_per_second"] else ""
        print(
            f"| {r['label']}{rate} | {r['rps']:.0f} | {r['p50']:.1f} / {r['p95']:.1f} "
            f"| {seen['replica'] / r['count']:.1%} | {seen['lagging']:.0f} / {seen['unavailable']:.0f} / "
            f"{seen['failed']:.0f} | {seen['lsn_reads'] / r['count']:.2f} | {r['cpu_us']['primary']:.0f} / "
            f"{r['cpu_us']['standby']:.0f} / {r['cpu_us']['server']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--writes-per-second", type=float, default=100.0)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
