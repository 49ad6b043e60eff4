"""HTTP search vs the same SQL through psycopg, at several concurrencies and worker counts, in one run.

    python bench/search_http.py [--rows 20000] [--dims 384] [--seconds 4] [--repeats 2]
                                [--concurrency 1 16 64] [--workers 1 2]

The server runs as `vectorstore serve [--workers N]` in its own process tree (DATABASE_URL to a bench
database), with one declared store of `--rows` rows. Query embeddings come from the server's cache: every
query text is searched before timing, over new connections until no worker asks the upstream any more, and
the bench checks that no timed request reached the upstream. The floor is `vectorstore.search.run_search`
(the server's own statement and settings) issued from this process through a psycopg pool of the same
size, with the same vectors. HTTP and floor alternate within each cell, so background load hits both.

Two figures per cell:
- **HTTP / SQL**: requests per second through the server over the floor's. Client, server and PostgreSQL
  share the machine, so this depends on how much CPU the client takes.
- **server / PostgreSQL CPU per search**: CPU time of the server's processes (the parent and its workers)
  over CPU time of the PostgreSQL backends serving the bench database (not PostgreSQL's background
  processes), both read from /proc over the HTTP run and divided by the searches served. It doesn't depend
  on where the client runs. (Only with a PostgreSQL on this machine: the embedded one, or
  VECTORSTORE_BENCH_DSN pointing at a local server.)

BENCH_SERVER_CODE replaces the server's `python -c` code, to measure another tree of the code.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _db import bench_server, fresh_database, wait_ready
from _proc import self_cpu_seconds, tree_cpu_seconds
from pgvector.psycopg import register_vector_async
from psycopg_pool import AsyncConnectionPool

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the deterministic fake upstream the tests use
# Imported by name: mypy sees tests/ as its own root in some runs and not in others.
_fake = importlib.import_module("fakeembed")
FakeEmbedder = _fake.FakeEmbedder
fake_vector = _fake.fake_vector

from config import Spec, load_spec  # noqa: E402
from vectorstore.search.vector import run_search  # noqa: E402
from vectorstore.storage import stores, tables  # noqa: E402

KEY = "bench-key"
STORE = "bench-store"
TEXTS = [f"question {i}" for i in range(200)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Run:
    rps: float
    p50: float
    p95: float
    count: int
    cpu: dict[str, float]
    """CPU seconds over the run: `server`, `postgres`, `client` (this process)."""

    def per_search_us(self, who: str) -> float:
        return self.cpu[who] / self.count * 1e6 if who in self.cpu and self.count else float("nan")


async def drive(
    concurrency: int, seconds: float, one: Callable[[int], Awaitable[None]], meters: dict[str, Callable[[], float]]
) -> Run:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - start)
            i += concurrency

    before = {name: meter() for name, meter in meters.items()}
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = {name: meter() - before[name] for name, meter in meters.items()}
    return Run(
        rps=len(latencies) / elapsed,
        p50=statistics.median(latencies) * 1000,
        p95=statistics.quantiles(latencies, n=20)[18] * 1000,
        count=len(latencies),
        cpu=cpu,
    )


def start_server(spec_path: Path, port: int, dsn: str, workers: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": dsn, "VECTORSTORE_API_KEY_BENCH": KEY}
    code = os.environ.get("BENCH_SERVER_CODE", "import sys, cli; sys.exit(cli.main())")
    argv = [sys.executable, "-c", code, "serve", "--spec", str(spec_path), "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log)


async def load_rows(dsn: str, spec: Spec, rows: int, dims: int) -> stores.StoreRecord:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await register_vector_async(conn)
        record = await stores.get(conn, spec.stores[0].id)
        assert record is not None
        rng = random.Random(3)
        centers = [fake_vector(f"topic {c}", dims) for c in range(50)]
        chunks = []
        for i in range(rows):
            center = centers[rng.randrange(len(centers))]
            chunks.append(
                tables.ChunkRow(
                    f"r{i}", f"chunk {i}", [x + rng.gauss(0, 0.02) for x in center], attributes={"n": i % 10}
                )
            )
        async with conn.transaction():
            await tables.copy_chunks(conn, record.layout, chunks)
        await conn.execute(f"VACUUM ANALYZE {record.table_name}")
        return record


async def warm(url: str, upstream: Any, bodies: list[bytes], headers: dict[str, str], workers: int) -> None:
    """Search every text over new connections until each worker has it in its query cache.

    The kernel picks a worker per connection, so with N workers a text reaches a given worker with
    probability 1/N per pass: 20 passes per extra worker leave a miss with odds below 1e-4 over 200 texts,
    and the check after the timed runs catches that one."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for done in range(1, 200):
            calls = len(upstream.calls)
            for body in bodies:
                async with http.post(url, data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
            if len(upstream.calls) == calls and done > 20 * (workers - 1):
                return
    raise SystemExit("the server's query cache never warmed up")


async def measure(
    args: argparse.Namespace,
    workers: int,
    http: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    via_sql: Callable[[int], Awaitable[None]],
    meters: dict[str, Callable[[], float]],
    server_pid: int,
) -> list[tuple[int, int, Run, Run]]:
    """Each concurrency level: the floor and HTTP, alternating, `args.repeats` times; the best of each."""

    async def via_http(i: int) -> None:
        async with http.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
            body = await r.read()
            assert r.status == 200 and b"chunk" in body

    http_meters = {**meters, "server": lambda: tree_cpu_seconds(server_pid)}
    cells = []
    for concurrency in args.concurrency:
        runs: dict[str, list[Run]] = {"http": [], "sql": []}
        for _ in range(args.repeats):
            runs["sql"].append(await drive(concurrency, args.seconds, via_sql, meters))
            runs["http"].append(await drive(concurrency, args.seconds, via_http, http_meters))
        best = {k: max(v, key=lambda r: r.rps) for k, v in runs.items()}
        cells.append((workers, concurrency, best["http"], best["sql"]))
    return cells


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving the bench database's clients (the server's pools or the
    floor's), from /proc: the SQL work, without the checkpointer, WAL writer or autovacuum, whose steady cost
    would otherwise be spread over however many searches a run makes. A backend that exits keeps the last
    value seen. Only for a PostgreSQL on this machine."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.seen: dict[int, float] = {}

    @staticmethod
    def local(dsn: str) -> BackendCpu | None:
        meter = BackendCpu(dsn)
        if Path(f"/proc/{meter.conn.info.backend_pid}/stat").exists():
            return meter
        meter.conn.close()
        return None

    def __call__(self) -> float:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
        for (pid,) in rows:
            cpu = tree_cpu_seconds(int(pid))
            if cpu:
                self.seen[int(pid)] = cpu
        return sum(self.seen.values())


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
                # Vector mode: the floor is the same vector statement (hybrid adds the keyword leg; bench/quality.py).
                "stores": [{"name": STORE, "search": {"mode": "vector"}}],
            }
        )
    )
    spec = load_spec(spec_path)
    backends = BackendCpu.local(dsn)
    vectors = [fake_vector(t, args.dims) for t in TEXTS]
    # Bodies encoded once: the client's own JSON work is not the server's cost.
    bodies = [json.dumps({"query": t, "max_num_results": 10}).encode() for t in TEXTS]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        dsn,
        min_size=spec.database.pool_max_size,
        max_size=spec.database.pool_max_size,
        configure=register_vector_async,
        open=False,
    )
    record: stores.StoreRecord | None = None
    table: list[tuple[int, int, Run, Run]] = []
    loads = [os.getloadavg()[0]]
    meters: dict[str, Callable[[], float]] = {"client": self_cpu_seconds}
    if backends is not None:
        meters["postgres"] = backends

    async def via_sql(i: int) -> None:
        assert record is not None
        async with pool.connection() as conn:
            hits = await run_search(
                conn, record.layout, vectors[i % len(vectors)], limit=10, ef_search=record.ef_search
            )
            assert len(hits) == 10

    try:
        for workers in args.workers:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log_path = workdir / f"server-{workers}.log"
            server = start_server(spec_path, port, dsn, workers, log_path)
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
                    if not await wait_ready(http, base + "/ready", seconds=60):
                        raise SystemExit("server did not become ready")
                    if record is None:
                        record = await load_rows(dsn, spec, args.rows, args.dims)
                        await pool.open(wait=True)
                    url = f"{base}/v1/vector_stores/{record.id}/search"
                    await warm(url, upstream, bodies, headers, workers)
                    calls_before = len(upstream.calls)
                    table += await measure(args, workers, http, url, bodies, headers, via_sql, meters, server.pid)
                    assert len(upstream.calls) == calls_before, "timed searches reached the upstream: the cache missed"
            except BaseException:
                # The server's own account of what went wrong (its warnings and errors), not the access lines.
                lines = log_path.read_text(errors="replace").splitlines()
                print("\n".join(line for line in lines if '"vectorstore.access"' not in line)[-4000:], file=sys.stderr)
                raise
            finally:
                server.terminate()
                server.wait(timeout=60)
        loads.append(os.getloadavg()[0])
    finally:
        await pool.close()
        await upstream.close()
        if backends is not None:
            backends.conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; {args.rows} rows x "
        f"{args.dims} dims, k=10, pool {spec.database.pool_max_size} per process, {args.seconds}s x {args.repeats} "
        f"per cell (best), load average {loads[0]:.1f} at start, {loads[-1]:.1f} at the end"
    )
    print(
        "| workers | concurrency | HTTP req/s | HTTP p50 / p95 ms | SQL req/s | SQL p50 / p95 ms | HTTP / SQL "
        "| CPU µs per search: server / PostgreSQL / client (HTTP) | server / PostgreSQL CPU |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for workers, c, h, s in table:
        ratio = h.per_search_us("server") / h.per_search_us("postgres") if "postgres" in h.cpu else float("nan")
        print(
            f"| {workers} | {c} | {h.rps:.0f} | {h.p50:.1f} / {h.p95:.1f} | {s.rps:.0f} | {s.p50:.1f} / {s.p95:.1f} "
            f"| **{h.rps / s.rps:.2f}** | {h.per_search_us('server'):.0f} / {h.per_search_us('postgres'):.0f} / "
            f"{h.per_search_us('client'):.0f} | **{ratio:.2f}** |"
        )
    print(
        "floor CPU µs per search (PostgreSQL / psycopg client): "
        + ", ".join(
            f"c={c}: {s.per_search_us('postgres'):.0f} / {s.per_search_us('client'):.0f}" for w, c, _h, s in table
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    with bench_server() as server_dsn:
        asyncio.run(bench(args, fresh_database(server_dsn, "bench_search")))


if __name__ == "__main__":
    main()
