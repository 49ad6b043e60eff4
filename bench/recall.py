"""Recall@10 of vector search against exact search, and its latency, as `hnsw.ef_search` grows.

    python bench/recall.py [--rows 5226 20000] [--queries 200] [--json report.json]

Two kinds of vectors, each in its own store made by the server's own code (`stores.insert`, binary COPY,
ANALYZE) on an embedded PostgreSQL:
- **hard**: the tests' hashing embedder (tests/robustness/harness.py: each word hashed into one of 384
  dimensions, a bag of words) over generated prose, 50-word chunks and 6-word queries from a Zipf vocabulary:
  sparse, lumpy vectors that HNSW handles worse than real embeddings;
- **random**: unit Gaussian vectors (the tests' fakeembed.py), no structure at all: the worst case;
- **real**: the built-in model (256 dimensions) on the sentences of the Cranfield abstracts.

Ground truth is exact search, computed by PostgreSQL itself with the same operator and no index (the
statement the server uses for small stores, `ORDER BY (embedding <=> q) + 0`), which is also the latency
floor in the same run. Each setting runs the server's statement (`vectorstore.search.vector.run_search`) for
every query on one connection; latency is the median of those calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cranfield
import psycopg
from _db import bench_server, finish_report, fresh_database
from pgvector.psycopg import register_vector_async

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from fakeembed import fake_vector  # noqa: E402
from robustness.harness import fake_vector as hashed_vector  # noqa: E402

from vectorstore.search.vector import run_search  # noqa: E402
from vectorstore.storage import stores, tables  # noqa: E402
from vectorstore.storage.migrations import migrate  # noqa: E402

EF_SEARCH = (10, 20, 40, 64, 100, 128, 200, 400)


async def make_store(
    conn: psycopg.AsyncConnection[Any], name: str, vectors: list[list[float]], m: int = 16, ef_construction: int = 64
) -> stores.StoreRecord:
    async with conn.transaction():
        record = await stores.insert(
            conn,
            stores.NewStore(
                id=name,
                name=name,
                description=None,
                metadata={},
                declared=False,
                model="bench",
                dimensions=len(vectors[0]),
                distance="cosine",
                hnsw_m=m,
                hnsw_ef_construction=ef_construction,
                ef_search=40,
            ),
        )
    rows = (tables.ChunkRow(id=f"r{i}", content=f"row {i}", embedding=v) for i, v in enumerate(vectors))
    async with conn.transaction():
        await tables.copy_chunks(conn, record.layout, rows)
    await conn.execute(f'ANALYZE "{record.table_name}"')
    return record


async def measure(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, queries: list[list[float]]
) -> dict[str, Any]:
    truth: list[set[str]] = []
    exact_times: list[float] = []
    for query in queries:
        started = time.perf_counter()
        hits = await run_search(conn, record.layout, query, limit=10, ef_search=10, exact=True)
        exact_times.append(time.perf_counter() - started)
        truth.append({hit.id for hit in hits})
    curve = []
    for ef in EF_SEARCH:
        found = 0
        times: list[float] = []
        for query, expected in zip(queries, truth, strict=True):
            started = time.perf_counter()
            hits = await run_search(conn, record.layout, query, limit=10, ef_search=ef)
            times.append(time.perf_counter() - started)
            found += len(expected & {hit.id for hit in hits})
        curve.append(
            {
                "ef_search": ef,
                "recall@10": round(found / (10 * len(queries)), 4),
                "p50_ms": round(statistics.median(times) * 1000, 3),
            }
        )
    return {"exact_p50_ms": round(statistics.median(exact_times) * 1000, 3), "curve": curve}


def random_vectors(count: int, seed: str) -> list[list[float]]:
    return [fake_vector(f"{seed}-{i}", 384) for i in range(count)]


def hashed_vectors(count: int, words: int, rng: random.Random) -> list[list[float]]:
    vocabulary = [f"w{i}" for i in range(5000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    return [hashed_vector(" ".join(rng.choices(vocabulary, weights, k=words)), 384) for _ in range(count)]


def real_sentences(limit: int) -> list[str]:
    collection = cranfield.load()
    sentences = [
        sentence.strip()
        for document in collection.documents
        for sentence in re.split(r"(?<=[.?!])\s+", document.text)
        if len(sentence.split()) >= 4
    ]
    return sentences[:limit]


async def real_vectors(texts: list[str]) -> list[list[float]]:
    from vectorstore.embeddings.builtin import BuiltinModel

    model = BuiltinModel()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), 512):
        vectors += await model(texts[start : start + 512], model="wordllama/l2_supercat", dimensions=256)
    await model.close()
    return vectors


async def bench(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as setup:
        await migrate(setup)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await register_vector_async(conn)
    report: dict[str, Any] = {}
    rng = random.Random(5)
    for rows in args.rows:
        record = await make_store(conn, f"vs_hard{rows}", hashed_vectors(rows, 50, rng))
        key = f"hard-384d-{rows}"
        report[key] = await measure(conn, record, hashed_vectors(args.queries, 6, rng))
        print(json.dumps({key: report[key]}), file=sys.stderr)
        record = await make_store(conn, f"vs_random{rows}", random_vectors(rows, "doc"))
        key = f"random-384d-{rows}"
        report[key] = await measure(conn, record, random_vectors(args.queries, f"query{rng.random()}"))
        print(json.dumps({key: report[key]}), file=sys.stderr)
    for build in args.index:
        m, ef_construction = (int(part) for part in build.split(":"))
        rows = max(args.rows)
        vectors, queries = hashed_vectors(rows, 50, rng), hashed_vectors(args.queries, 6, rng)
        started = time.perf_counter()
        record = await make_store(conn, f"vs_build{m}_{ef_construction}", vectors, m, ef_construction)
        key = f"hard-384d-{rows}-m{m}-efc{ef_construction}"
        report[key] = {"load_seconds": round(time.perf_counter() - started, 1), **await measure(conn, record, queries)}
        print(json.dumps({key: report[key]}), file=sys.stderr)
    sentences = real_sentences(args.real_rows + args.queries)
    vectors = await real_vectors(sentences)
    record = await make_store(conn, "vs_real", vectors[args.queries :])
    key = f"real-256d-{len(vectors) - args.queries}"
    report[key] = await measure(conn, record, vectors[: args.queries])
    await conn.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[5226, 20000])
    parser.add_argument("--real-rows", type=int, default=8000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--index", nargs="*", default=[], metavar="M:EF_CONSTRUCTION", help="also build hard stores with these"
    )
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    with bench_server() as server_dsn:
        dsn = fresh_database(server_dsn, "recall_bench")
        report = asyncio.run(bench(args, dsn))
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
