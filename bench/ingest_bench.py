"""Ingestion throughput against a raw binary COPY of the same rows, and server memory on a 50 MB file.

    python bench/ingest_bench.py [--chunks 100000] [--dims 768] [--files 100] [--tokens 100] [--memory-mb 50]
                                 [--vocabulary 20000] [--postings 0420 0410 0400 none ...]

`--postings`: the store's keyword postings as made now (0420), as migration 0410 or 0400 made them, or none (the
table before any); several values run the throughput part once each, in turn, on the same server.

Throughput: `--files` text files whose chunks add up to `--chunks` (static chunking, `--tokens` per chunk, no
overlap) are stored as Files and attached to a store of `--dims` dimensions. The timer runs from starting
the ingestion worker (`vectorstore.worker.Worker`, `--concurrency` loops, as the server runs it) until the
queue is empty: extracting, chunking with exact token counts, "embedding" with an instant in-process fake
(no HTTP: it hands back precomputed vectors) and binary COPY, one transaction per file. The floor, in the
same run, is one binary COPY of the very same rows (ids, texts, attributes, vectors) into a fresh store table
of the same layout, with nothing else to do. Both tables carry the store's HNSW index, as in production;
`--no-index` measures both without it, where the write path itself is the whole cost.

Memory: `vectorstore serve` runs as its own process with the fake embedding upstream over real HTTP, a
`--memory-mb` file is uploaded and ingested (auto chunking), and the server's resident memory is sampled
from /proc every 100 ms; the peak (VmHWM) is reported next to the idle figure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _db import bench_server, fresh_database, wait_ready
from pgvector import Vector
from pgvector.psycopg import register_vector_async
from psycopg import sql
from psycopg.types.json import Jsonb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the deterministic fake upstream the tests use
FakeEmbedder: Any = importlib.import_module("fakeembed").FakeEmbedder

from vectorstore.ingest.chunking import chunk_text  # noqa: E402
from vectorstore.ingest.extract import extract_text  # noqa: E402
from vectorstore.ingest.worker import Worker  # noqa: E402
from vectorstore.storage import files, stores, tables  # noqa: E402
from vectorstore.storage.migrations import migrate  # noqa: E402
from vectorstore.storage.strategy import Strategy  # noqa: E402

KEY = "bench-key-0123456789"
WORDS = [
    "vector", "store", "chunk", "token", "embedding", "index", "search", "query", "result", "score", "filter",
    "attribute", "file", "batch", "database", "transaction", "replica", "worker", "queue", "server", "client",
    "request", "response", "latency", "throughput",
]  # fmt: skip


def lexicon(size: int) -> tuple[list[str], list[float]]:
    """`size` pseudo-words and Zipf weights: text with as many distinct words per chunk as prose has (the
    25 WORDS give a chunk at most 25 lexemes, which would understate keyword postings)."""
    rng = random.Random(size)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4))))
    return sorted(words), [1.0 / (rank + 1) ** 1.07 for rank in range(size)]


def document(rng: random.Random, chunks: int, tokens: int, vocabulary: int = 0) -> str:
    """Prose of about `chunks` chunks: paragraphs of sentences, so chunks end at natural boundaries."""
    vocab, weights = lexicon(vocabulary) if vocabulary else (WORDS, [1.0] * len(WORDS))
    words = int(chunks * tokens * 0.82)
    paragraphs: list[str] = []
    while words > 0:
        sentences = []
        for _ in range(rng.randint(2, 6)):
            n = rng.randint(6, 18)
            sentences.append(" ".join(rng.choices(vocab, weights, k=n)).capitalize() + ".")
            words -= n
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs) + "\n"


def unit_vector(rng: random.Random, dims: int) -> list[float]:
    values = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values]


async def new_store(
    conn: psycopg.AsyncConnection[Any], store_id: str, dims: int, index: bool, postings: str = "0420"
) -> stores.StoreRecord:
    async with conn.transaction():
        record = await stores.insert(
            conn,
            stores.NewStore(
                id=store_id, name=store_id, description=None, metadata={}, declared=False, model="fake",
                dimensions=dims, distance="cosine", hnsw_m=16, hnsw_ef_construction=64, ef_search=40,
            ),
        )  # fmt: skip
        if not index:
            await conn.execute(tables.drop_index_statement(record.layout))
        if postings != "0420":  # the table as it was before keyword postings, or with 0400's or 0410's
            for statement in tables.drop_postings_statements(record.table_name):
                await conn.execute(statement)
        if postings in ("0400", "0410"):
            older = tables.legacy_postings_statements if postings == "0400" else tables.impacts_statements
            for statement in older(record.layout):
                await conn.execute(statement)
    return record


async def throughput(args: argparse.Namespace, dsn: str, postings: str) -> dict[str, Any]:
    rng = random.Random(7)
    strategy = Strategy(args.tokens, 0)
    per_file = args.chunks // args.files
    texts = [document(rng, per_file, args.tokens, args.vocabulary) for _ in range(args.files)]
    pool_lists = [unit_vector(random.Random(i), args.dims) for i in range(1024)]
    counter = 0

    async def instant(store: stores.StoreRecord, batch: list[str]) -> list[list[float]]:
        nonlocal counter
        start = counter
        counter += len(batch)
        return [pool_lists[(start + i) % len(pool_lists)] for i in range(len(batch))]

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
        await register_vector_async(conn)
        store = await new_store(conn, "vs_ingest", args.dims, not args.no_index, postings)
        floor_store = await new_store(conn, "vs_floor", args.dims, not args.no_index, postings)
        attached: list[files.FileRecord] = []
        async with conn.transaction():
            for number, text in enumerate(texts):
                record = await files.insert_file(
                    conn, filename=f"doc{number}.md", purpose="assistants", content=text.encode(),
                    content_type="text/markdown", owner="bench",
                )  # fmt: skip
                await files.attach(conn, store, record.id, attributes={"n": number}, strategy=strategy)
                attached.append(record)

        # The floor's rows: the same chunk texts, ids, attributes and vectors, built before its timer starts.
        rows: list[tuple[Any, ...]] = []
        vectors = [Vector(row) for row in pool_lists]
        for number, (record, text) in enumerate(zip(attached, texts, strict=True)):
            body = extract_text(text.encode(), record.filename)
            for chunk in chunk_text(body, strategy):
                rows.append(
                    (f"{record.id}:{chunk.index}", record.id, chunk.index, record.filename, chunk.text,
                     {"n": number}, vectors[len(rows) % len(vectors)])
                )  # fmt: skip
        total_chunks = len(rows)

        worker = Worker(dsn, instant, concurrency=args.concurrency, poll_seconds=0.05, batch_chunks=256)
        started = time.perf_counter()
        worker.start()
        while True:
            cur = await conn.execute("SELECT count(*) FROM ingest_jobs")
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                break
            await asyncio.sleep(0.05)
        ingest_seconds = time.perf_counter() - started
        await worker.stop()
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed'), sum(chunk_count) FROM vector_store_files"
        )
        row = await cur.fetchone()
        assert row is not None and row[0] == args.files, f"not every file completed: {row}"
        assert row[1] == total_chunks, f"{row[1]} chunks written, {total_chunks} expected"

        floor_seconds = await copy_floor(dsn, floor_store, rows, 1)
        async with conn.transaction():
            await conn.execute(sql.SQL("TRUNCATE {t}").format(t=floor_store.layout.ident))
        parallel_seconds = await copy_floor(dsn, floor_store, rows, args.concurrency)
    return {
        "chunks": total_chunks,
        "ingest_seconds": ingest_seconds,
        "floor_seconds": floor_seconds,
        "ingest_chunks_per_second": total_chunks / ingest_seconds,
        "floor_chunks_per_second": total_chunks / floor_seconds,
        "ratio": floor_seconds / ingest_seconds,
        "parallel_seconds": parallel_seconds,
        "parallel_ratio": parallel_seconds / ingest_seconds,
    }


async def copy_floor(dsn: str, store: stores.StoreRecord, rows: list[tuple[Any, ...]], streams: int) -> float:
    """Seconds to COPY `rows` in `streams` concurrent binary COPYs (one connection and transaction each)."""
    statement = sql.SQL("COPY {t} ({cols}) FROM STDIN (FORMAT BINARY)").format(
        t=store.layout.ident, cols=sql.SQL(", ").join(sql.Identifier(c) for c in tables.CHUNK_COLUMNS)
    )
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(streams)]
    for conn in conns:
        await register_vector_async(conn)

    async def one(conn: psycopg.AsyncConnection[Any], part: list[tuple[Any, ...]]) -> None:
        async with conn.transaction(), conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(["text", "text", "int4", "text", "text", "jsonb", store.layout.vector_type])
            for values in part:
                await copy.write_row((*values[:5], Jsonb(values[5]), values[6]))

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(conn, rows[i::streams]) for i, conn in enumerate(conns)))
        return time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()


def rss_kib(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    values = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")}
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


async def memory(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    upstream = await FakeEmbedder(dimensions=args.dims).start()
    tmp = Path(tempfile.mkdtemp(prefix="vs-ingest-bench-"))
    spec_path = tmp / "stack.yaml"
    spec = {
        "version": 1, "name": "bench", "namespace": "bench", "database": {"cluster": {"name": "pg"}},
        "auth": {"keys": [{"name": "bench", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
        "embedding": {"base_url": upstream.base_url, "model": "fake", "dimensions": args.dims, "batch_size": 64},
        "server": {"max_upload_bytes": 64 << 20, "ingest_concurrency": 2},
        "stores": [{"name": "big", "id": "vs_big"}],
    }  # fmt: skip
    spec_path.write_text(json.dumps(spec))
    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "DATABASE_URL": dsn, "VECTORSTORE_API_KEY_BENCH": KEY}
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "serve", "--spec", str(spec_path),
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    headers = {"Authorization": f"Bearer {KEY}"}
    text = document(random.Random(9), args.memory_mb * 1_000_000 // 450, 100)[: args.memory_mb * 1_000_000]
    data = text.encode()
    del text
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as http:
            if not await wait_ready(http, f"http://127.0.0.1:{port}/ready"):
                raise SystemExit("server did not become ready")
            idle, _ = rss_kib(server.pid)
            form = aiohttp.FormData()
            form.add_field("purpose", "assistants")
            form.add_field("file", data, filename="big.md")
            started = time.perf_counter()
            async with http.post(f"{base}/files", data=form, headers=headers) as response:
                uploaded = await response.json()
                assert response.status == 200, uploaded
            async with http.post(
                f"{base}/vector_stores/vs_big/files", json={"file_id": uploaded["id"]}, headers=headers
            ) as response:
                assert response.status == 200, await response.text()
            peak_sampled = 0
            while True:
                rss, _ = rss_kib(server.pid)
                peak_sampled = max(peak_sampled, rss)
                async with http.get(f"{base}/vector_stores/vs_big/files/{uploaded['id']}", headers=headers) as r:
                    body = await r.json()
                    chunks = int(r.headers.get("x-vectorstore-chunks", "0"))
                if body["status"] != "in_progress":
                    break
                await asyncio.sleep(0.1)
            seconds = time.perf_counter() - started
            _, hwm = rss_kib(server.pid)
            assert body["status"] == "completed", body
    finally:
        server.terminate()
        server.wait(timeout=60)
        await upstream.close()
    return {
        "file_mb": len(data) / 1e6,
        "chunks": chunks,
        "seconds": seconds,
        "idle_rss_mib": idle / 1024,
        "peak_rss_mib": max(hwm, peak_sampled) / 1024,
        "embedding_requests": len(upstream.calls),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--no-index", action="store_true")
    parser.add_argument("--vocabulary", type=int, default=0, help="pseudo-words with a Zipf law instead of WORDS")
    parser.add_argument(
        "--postings",
        choices=["0420", "0410", "0400", "none"],
        nargs="+",
        default=["0420"],
        help="keyword postings as made now (0420), as migrations 0410 or 0400 made them, or none (before 0400);"
        " several: one throughput run each, in turn, in the same server",
    )
    parser.add_argument("--memory-mb", type=int, default=50)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    with bench_server() as server_dsn:
        for postings in [] if args.skip_throughput else args.postings:
            result = await throughput(args, fresh_database(server_dsn, "ingest_bench"), postings)
            print(
                f"throughput: {result['chunks']} chunks x {args.dims} dims, {args.files} files,"
                f" {args.tokens} tokens/chunk, concurrency {args.concurrency},"
                f" HNSW index {'off' if args.no_index else 'on'},"
                f" keyword postings {postings},"
                f" vocabulary {args.vocabulary or len(WORDS)} words"
            )
            print(f"  ingestion: {result['ingest_seconds']:.1f} s = {result['ingest_chunks_per_second']:.0f} chunks/s")
            print(f"  floor (one binary COPY of the same rows): {result['floor_seconds']:.1f} s = "
                  f"{result['floor_chunks_per_second']:.0f} chunks/s")  # fmt: skip
            print(f"  ratio ingestion / floor: {result['ratio']:.2f}")
            print(f"  floor with {args.concurrency} concurrent COPYs: {result['parallel_seconds']:.1f} s, "
                  f"ratio {result['parallel_ratio']:.2f}")  # fmt: skip
        if not args.skip_memory:
            mem = await memory(args, fresh_database(server_dsn, "ingest_bench_memory"))
            print(
                f"memory: {mem['file_mb']:.0f} MB file -> {mem['chunks']} chunks in {mem['seconds']:.0f} s "
                f"({mem['embedding_requests']} embedding requests over HTTP); server RSS idle "
                f"{mem['idle_rss_mib']:.0f} MiB, peak {mem['peak_rss_mib']:.0f} MiB"
            )


if __name__ == "__main__":
    asyncio.run(main())
