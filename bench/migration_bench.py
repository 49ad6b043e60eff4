"""Online migration of a store: re-embedding speed against plain ingestion, searches before vs during, the swap,
a swap back, and a quantization-only change, in one run.

    python bench/migration_bench.py [--rows 20000] [--seconds 8] [--concurrency 16] [--json out.json]

`vectorstore serve` runs in its own process on a bench database, the deterministic fake upstream (tests/fakeembed.py)
in this one: model `old` answers 384 dimensions, `new` 256. Steps, each with the server restarted on an edited spec
(a restart is how a spec change reaches the server):

1. **Floor, plain ingestion**: the `--rows` chunks go in through `/embeddings/batch` (the server embeds them with
   `old` and COPYs them into a table with its HNSW index), 4 requests of 512 at a time: chunks/s.
2. **Search before**: `--concurrency` clients search for `--seconds` (query vectors cached by the server first).
3. **Migration** `old`/384 to `new`/256: chunks/s from the migration's own start and end, search p50 and QPS
   measured while it builds, the peak extra disk (both generations), and the swap itself (`swap_seconds`).
4. **Swap back** to `old`/384 within `keep_previous`: embedding calls (must be 0) and the time from the server
   being ready to the swap.
5. **Quantization only** (`none` to `halfvec`): embedding calls (0), build time, searches during it (errors).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _db import bench_server, finish_report, fresh_database, wait_ready

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
_fake = importlib.import_module("fakeembed")
FakeEmbedder = _fake.FakeEmbedder

KEY = "bench-key"
STORE_ID = "vs_migrationbench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def text(i: int) -> str:
    return f"chunk {i}: notes on subject {i % 97} and detail {i % 13}, with the marker word token{i}"


def spec(embed_url: str, *, model: str, dims: int, quantization: str = "none") -> dict[str, Any]:
    return {
        "version": 1,
        "name": "bench",
        "namespace": "bench",
        "database": {"cluster": {"name": "pg"}, "pool": {"max_size": 20}},
        "auth": {"keys": [{"name": "bench", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
        "embedding": {"base_url": embed_url, "model": "old", "dimensions": 384, "batch_size": 64},
        "migration": {"concurrency": 4},
        "stores": [
            {
                "name": "bench",
                "id": STORE_ID,
                "embedding": {"model": model, "dimensions": dims},
                "index": {"quantization": quantization},
                "search": {"mode": "vector"},
            }
        ],
    }


class Server:
    def __init__(self, dsn: str, workdir: Path) -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, data: dict[str, Any], http: aiohttp.ClientSession) -> float:
        path = self.workdir / "stack.yaml"
        path.write_text(json.dumps(data))
        self.port = free_port()
        env = {**os.environ, "DATABASE_URL": self.dsn, "VECTORSTORE_API_KEY_BENCH": KEY}
        argv = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "serve", "--spec", str(path)]
        started = time.perf_counter()
        with (self.workdir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - starting it takes microseconds
                [*argv, "--port", str(self.port)], env=env, stdout=log, stderr=log
            )
        if not await wait_ready(http, self.url + "/ready", seconds=60):
            raise SystemExit("server did not become ready; see " + str(self.workdir / "server.log"))
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None


async def ingest(http: aiohttp.ClientSession, url: str, rows: int) -> float:
    batches = [list(range(start, min(start + 512, rows))) for start in range(0, rows, 512)]
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def worker() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            body = {"embeddings": [{"content": text(i), "metadata": {"n": i}} for i in batch]}
            async with http.post(
                f"{url}/v1/vector_stores/{STORE_ID}/embeddings/batch",
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
            ) as response:
                assert response.status == 200, await response.text()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(4)))
    return rows / (time.perf_counter() - started)


class Load:
    """`concurrency` clients searching until stopped; latencies of 200s, and every other outcome as an error."""

    def __init__(self, http: aiohttp.ClientSession, url: str, queries: list[str], concurrency: int) -> None:
        self.http, self.url, self.queries, self.concurrency = http, url, queries, concurrency
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.empty = 0
        self.stop = asyncio.Event()

    async def _client(self, offset: int) -> None:
        i = offset
        while not self.stop.is_set():
            query = self.queries[i % len(self.queries)]
            i += 7
            started = time.perf_counter()
            try:
                async with self.http.post(
                    f"{self.url}/v1/vector_stores/{STORE_ID}/search",
                    json={"query": query, "max_num_results": 10},
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as response:
                    body = await response.json()
                    if response.status != 200:
                        self.errors.append(f"{response.status}: {str(body)[:200]}")
                        continue
                    if not body["data"]:
                        self.empty += 1
            except aiohttp.ClientError as exc:
                self.errors.append(repr(exc))
                continue
            self.latencies.append(time.perf_counter() - started)

    async def run_for(self, seconds: float) -> dict[str, Any]:
        task = asyncio.gather(*(self._client(n) for n in range(self.concurrency)))
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        self.stop.set()
        await task
        return self.summary(time.perf_counter() - started)

    def summary(self, elapsed: float) -> dict[str, Any]:
        return {
            "searches": len(self.latencies),
            "qps": round(len(self.latencies) / elapsed, 1),
            "p50_ms": round(statistics.median(self.latencies) * 1000, 2) if self.latencies else None,
            "errors": len(self.errors),
            "empty_pages": self.empty,
            "first_errors": self.errors[:3],
        }


async def migration_row(dsn: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT phase, chunks_done, chunks_total, embedding_calls, started_at, finished_at, swap_seconds,"
            " build_table, requested_at FROM store_migrations WHERE vector_store_id = %s",
            [STORE_ID],
        )
        row = await cur.fetchone()
    keys = (
        "phase",
        "chunks_done",
        "chunks_total",
        "embedding_calls",
        "started_at",
        "finished_at",
        "swap_seconds",
        "build_table",
        "requested_at",
    )
    return dict(zip(keys, row, strict=True)) if row else {}


async def store_bytes(dsn: str) -> int:
    """Every generation of the store on disk: tables, TOAST and indexes."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " WHERE c.relkind = 'r' AND c.relname LIKE 'vs\\_%%'"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def wait_done(dsn: str, seconds: float = 1800) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = await migration_row(dsn)
        if row.get("phase") in ("done", "paused", "cancelled"):
            return row
        await asyncio.sleep(0.1)
    raise SystemExit("the migration did not finish")


async def during(dsn: str, load: Load, seconds: float) -> tuple[dict[str, Any], int]:
    """Search while the migration builds (up to `seconds`); the peak disk seen meanwhile. The restarted server's
    query cache is warmed first, as the one measured before was."""
    for query in load.queries:
        async with load.http.post(
            f"{load.url}/v1/vector_stores/{STORE_ID}/search",
            json={"query": query},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response:
            await response.read()
    task = asyncio.gather(*(load._client(n) for n in range(load.concurrency)))
    started = time.perf_counter()
    peak = 0
    while time.perf_counter() - started < seconds:
        row = await migration_row(dsn)
        peak = max(peak, await store_bytes(dsn))
        if row.get("phase") not in ("pending", "building"):
            break
        await asyncio.sleep(0.25)
    load.stop.set()
    await task
    return load.summary(time.perf_counter() - started), peak


async def main(args: argparse.Namespace) -> dict[str, Any]:
    embedder = await FakeEmbedder(dimensions=384, model_dimensions={"old": 384, "new": 256}).start()
    report: dict[str, Any] = {"rows": args.rows, "concurrency": args.concurrency, "seconds": args.seconds}
    queries = [text(i) for i in range(0, args.rows, max(1, args.rows // 200))]
    workdir = Path(tempfile.mkdtemp(prefix="vs-migration-bench-"))
    with bench_server() as server_dsn:
        dsn = fresh_database(server_dsn, "vs_migration_bench")
        server = Server(dsn, workdir)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as http:
            try:
                await server.start(spec(embedder.base_url, model="old", dims=384), http)
                report["plain_ingestion_chunks_per_s"] = round(await ingest(http, server.url, args.rows), 1)
                await Load(http, server.url, queries, 4).run_for(2)  # warm the query cache and the table
                report["search_before"] = await Load(http, server.url, queries, args.concurrency).run_for(args.seconds)
                base_bytes = await store_bytes(dsn)
                server.stop()

                # The migration: the same chunks re-embedded by `new` into 256 dimensions.
                calls_before = len(embedder.calls)
                await server.start(spec(embedder.base_url, model="new", dims=256), http)
                load = Load(http, server.url, queries, args.concurrency)
                searches, peak = await during(dsn, load, 1800)
                done = await wait_done(dsn)
                report["search_during_migration"] = searches
                report["migration"] = {
                    "phase": done["phase"],
                    "chunks": done["chunks_total"],
                    "chunks_per_s": round(done["chunks_total"] / (done["finished_at"] - done["started_at"]), 1),
                    "seconds": round(done["finished_at"] - done["started_at"], 1),
                    "embedding_requests": done["embedding_calls"],
                    "swap_ms": round(done["swap_seconds"] * 1000, 2),
                    "store_bytes_before": base_bytes,
                    "peak_extra_bytes": peak - base_bytes,
                }
                report["migration"]["chunks_per_s_over_plain_ingestion"] = round(
                    report["migration"]["chunks_per_s"] / report["plain_ingestion_chunks_per_s"], 2
                )
                new_inputs = sum(len(call.inputs) for call in embedder.calls[calls_before:] if call.model == "new")
                report["migration"]["new_model_inputs"] = new_inputs
                before, now = report["search_before"], report["search_during_migration"]
                if before["p50_ms"] and now["p50_ms"]:
                    report["during_over_before"] = {
                        "p50": round(now["p50_ms"] / before["p50_ms"], 2),
                        "qps": round(now["qps"] / before["qps"], 2),
                    }
                server.stop()

                # Swap back within keep_previous: no embedding of the chunks.
                calls_before = len(embedder.calls)
                await server.start(spec(embedder.base_url, model="old", dims=384), http)
                ready = time.perf_counter()
                back = await wait_done(dsn)
                report["swap_back"] = {
                    "phase": back["phase"],
                    "seconds_after_ready": round(time.perf_counter() - ready, 2),
                    "embedding_requests": back["embedding_calls"],
                    "upstream_requests_seen": len(embedder.calls) - calls_before,
                    "swap_ms": round(back["swap_seconds"] * 1000, 2),
                }
                server.stop()

                # Quantization only: copy the vectors into a halfvec table, searches running throughout.
                calls_before = len(embedder.calls)
                await server.start(spec(embedder.base_url, model="old", dims=384, quantization="halfvec"), http)
                load = Load(http, server.url, queries, args.concurrency)
                searches, _ = await during(dsn, load, 1800)
                halfvec = await wait_done(dsn)
                report["quantization_halfvec"] = {
                    "phase": halfvec["phase"],
                    "build_seconds": round(halfvec["finished_at"] - halfvec["started_at"], 1),
                    "embedding_requests": halfvec["embedding_calls"],
                    "chunk_inputs_sent_upstream": sum(
                        len(call.inputs) for call in embedder.calls[calls_before:] if len(call.inputs) > 1
                    ),
                    "searches_during": searches,
                }
            finally:
                server.stop()
                await embedder.close()
    report["command"] = "python bench/migration_bench.py " + " ".join(sys.argv[1:])
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json")
    arguments = parser.parse_args()
    finish_report(asyncio.run(main(arguments)), arguments.json)
