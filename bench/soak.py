"""Soak: mixed search and ingest from 64 concurrent clients for a bounded time, then count every chunk.

    python bench/soak.py [--seconds 60] [--clients 64] [--ingest-share 0.05] [--json FILE]

`vectorstore serve` runs in its own process on a fresh database (`VECTORSTORE_BENCH_DSN`, else an embedded
PostgreSQL), with the tests' deterministic fake embedding upstream on 127.0.0.1. Each client loops until the
deadline: with probability `--ingest-share` it uploads a small unique document and attaches it to the store
(two HTTP calls, counted as one `ingest` operation), otherwise it searches (a query from a fixed set of 200,
a third of them with an attribute filter). Server RSS is sampled every second from /proc.

At the end it waits for the queue to drain, then checks, straight in PostgreSQL, that every file the clients
attached is `completed` and that its chunks are exactly 0..n-1 (none lost, none duplicated), n being the
chunk count the worker recorded. Exit status 1 when any check fails: a 5xx, a lost or duplicated chunk, or
RSS growth beyond `--max-rss-growth` between the end of the first quarter and the end of the run.

This is a benchmark, not part of pytest. Traffic goes to 127.0.0.1 only, and everything it starts it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _db import bench_server, fresh_database, wait_ready

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the deterministic fake upstream the tests use
_fake = importlib.import_module("fakeembed")

KEY = "soak-key-0123456789abcdef"
STORE = "soak-store"
DIMENSIONS = 64
WORDS = [
    "vector",
    "store",
    "search",
    "ingest",
    "chunk",
    "embedding",
    "postgres",
    "index",
    "filter",
    "attribute",
    "query",
    "result",
    "score",
    "file",
    "batch",
    "queue",
    "worker",
    "replica",
    "cluster",
    "backup",
    "restore",
    "latency",
    "throughput",
    "memory",
    "crash",
    "signal",
    "network",
    "timeout",
    "retry",
]
QUERIES = [" ".join(random.Random(i).sample(WORDS, 4)) for i in range(200)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "ingest": []})
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    attached: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)


def document(client: int, serial: int) -> bytes:
    rng = random.Random(client * 1_000_003 + serial)
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) + "." for _ in range(rng.randint(3, 12))
    ]
    return f"Document {client}-{serial}.\n\n".encode() + "\n\n".join(paragraphs).encode()


async def client_loop(
    index: int, http: aiohttp.ClientSession, store_id: str, deadline: float, share: float, stats: Stats
) -> None:
    rng = random.Random(index)
    serial = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            if rng.random() < share:
                serial += 1
                form = aiohttp.FormData()
                form.add_field("purpose", "assistants")
                form.add_field("file", document(index, serial), filename=f"soak-{index}-{serial}.txt")
                async with http.post("/v1/files", data=form) as response:
                    stats.statuses[f"upload {response.status}"] += 1
                    body = await response.json()
                if response.status != 200:
                    continue
                attributes = {"client": index, "parity": "even" if serial % 2 == 0 else "odd"}
                payload = {"file_id": body["id"], "attributes": attributes}
                async with http.post(f"/v1/vector_stores/{store_id}/files", json=payload) as response:
                    stats.statuses[f"attach {response.status}"] += 1
                    await response.read()
                if response.status == 200:
                    stats.attached.append(body["id"])
                    stats.latencies["ingest"].append(time.perf_counter() - started)
            else:
                query: dict[str, Any] = {"query": rng.choice(QUERIES), "max_num_results": 5}
                if rng.random() < 1 / 3:
                    query["filters"] = {"type": "eq", "key": "parity", "value": rng.choice(["even", "odd"])}
                async with http.post(f"/v1/vector_stores/{store_id}/search", json=query) as response:
                    stats.statuses[f"search {response.status}"] += 1
                    await response.read()
                if response.status == 200:
                    stats.latencies["search"].append(time.perf_counter() - started)
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.errors[type(exc).__name__] += 1


async def sample_rss(pid: int, stop: asyncio.Event, stats: Stats, origin: float) -> None:
    while not stop.is_set():
        value = rss_kib(pid)
        if value is not None:
            stats.rss.append((time.monotonic() - origin, value))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check_chunks(dsn: str, store_id: str, attached: list[str]) -> dict[str, Any]:
    """Count in PostgreSQL: every attached file completed, its chunks exactly 0..n-1 with n = chunk_count."""
    with psycopg.connect(dsn) as conn:
        table = conn.execute("SELECT table_name FROM vector_stores WHERE id = %s", [store_id]).fetchone()
        assert table is not None
        files = {
            str(r[0]): (str(r[1]), int(r[2]))
            for r in conn.execute(
                "SELECT file_id, status, chunk_count FROM vector_store_files WHERE vector_store_id = %s", [store_id]
            )
        }
        rows = conn.execute(
            psycopg.sql.SQL("SELECT file_id, array_agg(chunk_index ORDER BY chunk_index) FROM {} GROUP BY 1").format(
                psycopg.sql.Identifier(str(table[0]))
            )
        ).fetchall()
    chunks = {str(r[0]): list(r[1]) for r in rows}
    missing = [f for f in attached if f not in files]
    not_completed = [f for f in attached if f in files and files[f][0] != "completed"]
    # A completed file has at least one chunk, and exactly the indexes 0..chunk_count-1, each once.
    bad = [f for f in attached if f in files and (files[f][1] == 0 or chunks.get(f, []) != list(range(files[f][1])))]
    strays = sorted(set(chunks) - set(attached))
    return {
        "files_attached": len(attached),
        "files_missing": len(missing),
        "files_not_completed": len(not_completed),
        "files_with_lost_or_duplicated_chunks": len(bad),
        "chunks_of_unknown_files": len(strays),
        "chunks_total": sum(len(v) for v in chunks.values()),
        "chunks_expected": sum(files[f][1] for f in attached if f in files),
    }


async def wait_drained(http: aiohttp.ClientSession, store_id: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        async with http.get(f"/v1/vector_stores/{store_id}") as response:
            counts = (await response.json())["file_counts"]
        if counts["in_progress"] == 0:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def soak(args: argparse.Namespace, dsn: str) -> int:
    upstream = await _fake.FakeEmbedder(dimensions=DIMENSIONS).start()
    workdir = Path(tempfile.mkdtemp(prefix="vs-soak-"))
    spec = workdir / "stack.yaml"
    spec.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "soak",
                "namespace": "soak",
                "database": {"cluster": {"name": "pg"}, "pool": {"min_size": 2, "max_size": args.pool}},
                "auth": {"keys": [{"name": "soak", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
                "embedding": {"base_url": upstream.base_url, "model": "fake", "dimensions": DIMENSIONS},
                "server": {"ingest_concurrency": 2},
                "stores": [{"name": STORE}],
            }
        )
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "VECTORSTORE_", "DATABASE_URL"))}
    env.update(DATABASE_URL=dsn, VECTORSTORE_API_KEY_SOAK=KEY, PYTHONUNBUFFERED="1")
    log_path = workdir / "server.log"
    code = "import sys, cli; sys.exit(cli.main(sys.argv[1:]))"
    with log_path.open("wb") as log:
        server = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
            [sys.executable, "-c", code, "serve", "--spec", str(spec), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    stats = Stats()
    try:
        connector = aiohttp.TCPConnector(limit=args.clients)
        headers = {"Authorization": f"Bearer {KEY}"}
        timeout = aiohttp.ClientTimeout(total=60)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base, connector=connector, headers=headers, timeout=timeout) as http:
            if not await wait_ready(http, "/ready"):
                raise SystemExit(f"server not ready:\n{log_path.read_text()[-2000:]}")
            async with http.get("/v1/vector_stores") as response:
                store_id = next(s["id"] for s in (await response.json())["data"] if s["name"] == STORE)
            # Warm the query cache once, as LiteLLM's repeated queries would.
            for query in QUERIES:
                async with http.post(f"/v1/vector_stores/{store_id}/search", json={"query": query}) as response:
                    await response.read()
            origin = time.monotonic()
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(server.pid, stop, stats, origin))
            deadline = origin + args.seconds
            await asyncio.gather(
                *(client_loop(i, http, store_id, deadline, args.ingest_share, stats) for i in range(args.clients))
            )
            elapsed = time.monotonic() - origin
            drain = await wait_drained(http, store_id, within=120.0)
            stop.set()
            await sampler
            async with http.get("/metrics", headers={"Authorization": ""}) as response:
                metrics_ok = response.status == 200
        counts = check_chunks(dsn, store_id, stats.attached)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        await upstream.close()

    five_xx = sum(n for key, n in stats.statuses.items() if key.split()[1].startswith("5"))
    # Warm-up (pool filling, caches, allocator arenas) ends after the first quarter, and not before 10 s
    # (or half of a shorter run): growth is measured from there to the end.
    warm = max(args.seconds / 4, min(10.0, args.seconds / 2))
    quarter = [kib for t, kib in stats.rss if t <= warm]
    rss_quarter = quarter[-1] if quarter else stats.rss[0][1]
    rss_end = stats.rss[-1][1]
    growth = (rss_end - rss_quarter) / rss_quarter
    rss_samples = stats.rss[:: max(1, len(stats.rss) // 12)]
    searches = stats.latencies["search"]
    ingests = stats.latencies["ingest"]
    report = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "ingest_share": args.ingest_share,
        "search_per_s": round(len(searches) / elapsed, 1),
        "search_p50_ms": round(percentile(searches, 0.5) * 1000, 1),
        "search_p99_ms": round(percentile(searches, 0.99) * 1000, 1),
        "ingest_per_s": round(len(ingests) / elapsed, 2),
        "ingest_p50_ms": round(percentile(ingests, 0.5) * 1000, 1),
        "ingest_p99_ms": round(percentile(ingests, 0.99) * 1000, 1),
        "statuses": dict(sorted(stats.statuses.items())),
        "client_errors": dict(stats.errors),
        "five_xx": five_xx,
        "queue_drained_after_s": round(drain, 1),
        "rss_mib_over_time": " ".join(f"{t:.0f}s:{kib / 1024:.0f}" for t, kib in rss_samples),
        "rss_mib_first_quarter_end": round(rss_quarter / 1024, 1),
        "rss_mib_end": round(rss_end / 1024, 1),
        "rss_growth_after_first_quarter": round(growth, 3),
        "rss_mib_max": round(max(kib for _, kib in stats.rss) / 1024, 1),
        "metrics_scrape_ok": metrics_ok,
        **counts,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")  # noqa: ASYNC240 - after the load
    failures = []
    if five_xx:
        failures.append(f"{five_xx} responses were 5xx")
    if stats.errors:
        failures.append(f"client errors: {dict(stats.errors)}")
    if counts["files_missing"] or counts["files_not_completed"] or counts["files_with_lost_or_duplicated_chunks"]:
        failures.append("lost, unfinished or duplicated chunks")
    if counts["chunks_of_unknown_files"] or counts["chunks_total"] != counts["chunks_expected"]:
        failures.append("chunk count differs from what the worker recorded")
    if growth > args.max_rss_growth:
        failures.append(f"RSS grew {growth:.0%} after the first quarter")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        print(f"server log: {log_path}", file=sys.stderr)
        return 1
    print("OK: zero 5xx, zero lost or duplicated chunks, flat memory", file=sys.stderr)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the mixed load (default 60)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--ingest-share", type=float, default=0.05, help="share of operations that ingest a file")
    parser.add_argument("--pool", type=int, default=10, help="server's database pool max_size (default 10)")
    parser.add_argument("--max-rss-growth", type=float, default=0.25, help="allowed RSS growth after warm-up")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args()
    with bench_server() as server_dsn:
        dsn = fresh_database(server_dsn, "soak")
        sys.exit(asyncio.run(soak(args, dsn)))


if __name__ == "__main__":
    main()
