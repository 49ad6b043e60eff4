"""Retrieval quality on the Cranfield collection, through the real API, in each search mode.

    python bench/quality.py [--json report.json]
    python bench/quality.py --embedding-url http://localhost:4000 --embedding-model text-embedding-3-small \
        --dimensions 1536 [--embedding-key-env OPENAI_API_KEY]

It starts `vectorstore serve` on a fresh embedded PostgreSQL with one store (the built-in embedder unless an
OpenAI-compatible upstream is given), uploads the 1,400 abstracts as one file each (`POST /v1/files`, then
file batches) and waits for ingestion. Then every judged query (225) is searched over HTTP in each mode
(`search_mode` vector, keyword, hybrid; `ranker: none`) with the prototype's `limit: 100`, and the report gives
nDCG@10 and Recall@100 against the graded judgments (bench/cranfield.py), and the p50 latency of those
requests and of a second pass at `max_num_results: 10`.

Reference in the same run (the floor of vector search): exact dense search in numpy with the same embeddings,
i.e. what the vector mode would score with a perfect index.
"""

from __future__ import annotations

import argparse
import asyncio
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
import cranfield
from _db import bench_server, finish_report, fresh_database, wait_ready

KEY = "quality-bench-key"
STORE = "cranfield"
MODES = ("vector", "keyword", "hybrid")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spec_for(args: argparse.Namespace) -> dict[str, Any]:
    if args.embedding_url:
        embedding: dict[str, Any] = {
            "base_url": args.embedding_url,
            "model": args.embedding_model,
            "dimensions": args.dimensions,
        }
        if args.embedding_key_env:
            embedding["api_key"] = {"secret": "bench", "key": "embedding"}
    else:
        embedding = {"provider": "builtin"}
    return {
        "version": 1,
        "name": "quality",
        "namespace": "bench",
        "database": {"cluster": {"name": "pg"}},
        "auth": {"keys": [{"name": "bench", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
        "embedding": embedding,
        "server": {"ingest_concurrency": 2},
        "stores": [{"name": STORE}],
    }


async def load(
    http: aiohttp.ClientSession, base: str, store_id: str, collection: cranfield.Collection
) -> tuple[float, int]:
    """Upload every document as a file, attach them in batches, wait; returns seconds taken and files failed
    (the collection holds a few empty abstracts, which fail as `contains no text`)."""
    started = time.perf_counter()
    failed = 0
    headers = {"Authorization": f"Bearer {KEY}"}
    limit = asyncio.Semaphore(8)

    async def upload(document: cranfield.Document) -> str:
        async with limit:
            form = aiohttp.FormData()
            form.add_field("purpose", "assistants")
            form.add_field("file", document.body.encode(), filename=f"cran-{document.id}.txt")
            async with http.post(f"{base}/v1/files", data=form, headers=headers) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"upload failed: {response.status} {body}")
                return str(body["id"])

    file_ids = await asyncio.gather(*(upload(document) for document in collection.documents))
    for start in range(0, len(file_ids), 500):
        batch = file_ids[start : start + 500]
        async with http.post(
            f"{base}/v1/vector_stores/{store_id}/file_batches", json={"file_ids": batch}, headers=headers
        ) as response:
            batch_body = await response.json()
            if response.status != 200:
                raise RuntimeError(f"batch failed: {response.status} {batch_body}")
        while True:
            async with http.get(
                f"{base}/v1/vector_stores/{store_id}/file_batches/{batch_body['id']}", headers=headers
            ) as response:
                state = await response.json()
            if state["file_counts"]["in_progress"] == 0:
                failed += state["file_counts"]["failed"]
                if failed > 5:
                    raise RuntimeError(f"ingestion failed: {state['file_counts']}")
                break
            await asyncio.sleep(0.5)
    return time.perf_counter() - started, failed


async def run_queries(
    http: aiohttp.ClientSession,
    base: str,
    store_id: str,
    collection: cranfield.Collection,
    mode: str,
    *,
    limit_field: str,
    limit: int,
) -> tuple[dict[int, list[str]], list[float]]:
    headers = {"Authorization": f"Bearer {KEY}"}
    rankings: dict[int, list[str]] = {}
    latencies: list[float] = []
    for number in collection.judged_queries():
        body = {
            "query": collection.queries[number - 1],
            "search_mode": mode,
            limit_field: limit,
            "ranking_options": {"ranker": "none"},
        }
        started = time.perf_counter()
        async with http.post(f"{base}/v1/vector_stores/{store_id}/search", json=body, headers=headers) as response:
            page = await response.json()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"search failed: {response.status} {page}")
        rankings[number] = [hit["filename"].removeprefix("cran-").removesuffix(".txt") for hit in page["data"]]
    return rankings, latencies


def score(collection: cranfield.Collection, rankings: dict[int, list[str]]) -> tuple[float, float]:
    queries = collection.judged_queries()
    ndcg = statistics.fmean(cranfield.ndcg_at(rankings[q], collection.judgments[q], 10) for q in queries)
    recall = statistics.fmean(cranfield.recall_at(rankings[q], collection.judgments[q], 100) for q in queries)
    return ndcg, recall


async def exact_dense_reference(collection: cranfield.Collection) -> dict[int, list[str]] | None:
    """Exact dense search in numpy with the built-in model: the ceiling of the vector mode."""
    try:
        import numpy as np

        from vectorstore.embeddings.builtin import BuiltinModel
    except ImportError:
        return None
    model = BuiltinModel()

    async def embed(texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), 256):
            vectors += await model(texts[start : start + 256], model="wordllama/l2_supercat", dimensions=256)
        return vectors

    documents = np.asarray(await embed([document.body for document in collection.documents]))
    queries = np.asarray(await embed(collection.queries))
    ids = [document.id for document in collection.documents]
    similarity = queries @ documents.T
    return {q: [ids[i] for i in np.argsort(-similarity[q - 1])[:100]] for q in collection.judged_queries()}


async def bench(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    collection = cranfield.load(Path(args.dataset))
    workdir = Path(tempfile.mkdtemp(prefix="vs-quality-"))
    spec_path = workdir / "stack.yaml"
    spec_path.write_text(json.dumps(spec_for(args)))
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "VECTORSTORE_API_KEY_BENCH": KEY}
    if args.embedding_key_env:
        env["VECTORSTORE_EMBEDDING_API_KEY"] = os.environ.get(args.embedding_key_env, "")
    log = (workdir / "server.log").open("w")
    command = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "serve", "--spec", str(spec_path)]
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
        [*command, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {"modes": {}}
    try:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            if not await wait_ready(http, base + "/ready", seconds=60):
                raise RuntimeError(f"server not ready; see {workdir / 'server.log'}")
            async with http.get(f"{base}/v1/vector_stores", headers={"Authorization": f"Bearer {KEY}"}) as response:
                store_id = next(item["id"] for item in (await response.json())["data"] if item["name"] == STORE)
            seconds, failed = await load(http, base, store_id, collection)
            report["load_seconds"] = round(seconds, 1)
            report["files_failed"] = failed
            for mode in MODES:
                rankings, latencies = await run_queries(
                    http, base, store_id, collection, mode, limit_field="limit", limit=100
                )
                _, latencies_10 = await run_queries(
                    http, base, store_id, collection, mode, limit_field="max_num_results", limit=10
                )
                ndcg, recall = score(collection, rankings)
                report["modes"][mode] = {
                    "ndcg@10": round(ndcg, 4),
                    "recall@100": round(recall, 4),
                    "p50_ms_limit100": round(statistics.median(latencies) * 1000, 2),
                    "p50_ms_limit10": round(statistics.median(latencies_10) * 1000, 2),
                }
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    if not args.embedding_url:
        reference = await exact_dense_reference(collection)
        if reference is not None:
            ndcg, recall = score(collection, reference)
            report["exact_dense_reference"] = {"ndcg@10": round(ndcg, 4), "recall@100": round(recall, 4)}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(cranfield.DEFAULT_DIR), help="the Cranfield directory")
    parser.add_argument("--embedding-url", help="an OpenAI-compatible embeddings base URL (default: built-in)")
    parser.add_argument("--embedding-model", default="text-embedding-3-small")
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--embedding-key-env", help="env var holding the upstream's key")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    with bench_server() as server_dsn:
        dsn = fresh_database(server_dsn, "quality_bench")
        report = asyncio.run(bench(args, dsn))
    finish_report(report, args.json)
    hybrid, vector = report["modes"]["hybrid"]["ndcg@10"], report["modes"]["vector"]["ndcg@10"]
    print(f"hybrid / vector nDCG@10: {hybrid / vector:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
