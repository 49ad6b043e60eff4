"""Vector, keyword and hybrid search through the server, on one store of pseudo-word documents, in one run.

    python bench/keyword_search.py [--docs 2000] [--dims 384] [--seconds 4] [--concurrency 1 16]
                                   [--queries 500] [--recall-queries 100] [--explain plans.txt]
                                   [--keep DATA_DIR] [--workers 1] [--modes vector keyword hybrid]

The corpus: `--docs` documents of 300-600 words drawn from a lexicon of pseudo-words with a Zipf law (so a
query holds common words as real text does), cut into chunks of 120-220 words (2,000 documents give about
5,000 chunks), written straight into the store's table through `tables.copy_chunks` (the ingestion worker's
own write) with fake vectors, then analyzed as the worker does. Queries are 5-9 consecutive words cut from
random documents.

For each mode (the request's `search_mode`, `ranker: none`, 10 results): requests per second and p50 / p99 at
each concurrency, and CPU per search split between the server's processes and the PostgreSQL backends serving
the bench database (from /proc, bench/_proc.py). Vector mode is the floor: the ratios are against it, in the
same run. Query embeddings come from the server's cache (warmed in every worker first, as in
bench/search_http.py; the run stops if a timed search reached the upstream). `--workers N` runs the server as
`serve --workers N`, N Python processes: the documented setting is one per CPU the pod has.

Keyword recall@100: for `--recall-queries` queries, the API's keyword search with the prototype's `limit: 100`
against exact BM25 computed here in Python (exact document frequencies and mean length over every row, the
same k1, b and tf, |d| definitions as vectorstore/search/text.py), from the rows' `fts` read out of the table.
Filtered hybrid: every query again with a filter that 1 row in 10 passes must return 10 rows.

What the postings path reads (search/postings.py), over the recall queries: postings, bytes and block rows a
query. After the load the postings are compacted (what the server's background compaction does within seconds;
timed apart as `compact_seconds`).

`--explain FILE` writes `EXPLAIN (ANALYZE, BUFFERS)` of the postings fetch and of the hybrid and keyword
statements (GIN path and postings path) for one query.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _db import bench_server, finish_report, fresh_database, wait_ready
from _proc import tree_cpu_seconds
from pgvector.psycopg import register_vector_async
from search_http import KEY, STORE, BackendCpu, fake_vector, free_port, start_server, warm

from config import load_spec
from vectorstore.search import hybrid, postings, postings_compaction, text
from vectorstore.search import statistics as search_statistics
from vectorstore.search.vector import NO_FILTER
from vectorstore.storage import stores, tables

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the fake embedding upstream

MODES = ("vector", "keyword", "hybrid")
LOAD_EXTRA: dict[str, float] = {}


def lexicon(size: int, rng: random.Random) -> list[str]:
    """Pseudo-words of 2-4 syllables, all distinct."""
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def corpus(docs: int, rng: random.Random) -> tuple[list[str], list[list[str]]]:
    """(chunk texts, the documents as word lists)."""
    words = lexicon(20000, rng)
    # Cumulative weights once (what `choices` would compute on every call, with the same draws): 160,000
    # documents for 500,000 chunks would otherwise spend minutes summing 20,000 weights each time.
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** 1.07 for rank in range(len(words))))
    documents = [rng.choices(words, cum_weights=cumulative, k=rng.randint(300, 600)) for _ in range(docs)]
    chunks: list[str] = []
    for doc in documents:
        start = 0
        while start < len(doc):
            size = rng.randint(120, 220)
            chunks.append(" ".join(doc[start : start + size]))
            start += size
    return chunks, documents


def cut_queries(documents: list[list[str]], count: int, rng: random.Random) -> list[str]:
    """The bench's queries: `count` runs of 5-9 consecutive words, each cut from a random document."""
    queries = []
    for _ in range(count):
        doc = rng.choice(documents)
        size = rng.randint(5, 9)
        start = rng.randrange(0, len(doc) - size)
        queries.append(" ".join(doc[start : start + size]))
    return queries


async def load(dsn: str, record: stores.StoreRecord, chunks: list[str], dims: int) -> float:
    """Write the chunks as the ingestion worker would (COPY, one transaction per 100 rows); returns seconds."""
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await register_vector_async(conn)
        for start in range(0, len(chunks), 100):
            rows = [
                tables.ChunkRow(f"c{i}", chunks[i], fake_vector(chunks[i], dims), attributes={"n": i % 10})
                for i in range(start, min(len(chunks), start + 100))
            ]
            async with conn.transaction():
                await tables.copy_chunks(conn, record.layout, rows)
        elapsed = time.perf_counter() - started
        current = await stores.get(conn, record.id)
        assert current is not None
        await search_statistics.keep_current(conn, current, force=True)
        await conn.execute(f"VACUUM ANALYZE {record.table_name}")
        # What the server's compaction and autovacuum do soon after a load (timed apart: `compact_seconds`).
        compact_started = time.perf_counter()
        await postings_compaction.compact_fully(conn, record.table_name, record.id)
        await conn.execute(f"VACUUM ANALYZE {tables.blocks_table(record.table_name)}")
        LOAD_EXTRA["compact_seconds"] = round(time.perf_counter() - compact_started, 2)
        return elapsed


async def exact_bm25(dsn: str, record: stores.StoreRecord, queries: list[str], k: int) -> list[list[str]]:
    """Top `k` chunk contents per query by exact BM25, scored here from the rows' lexemes and tf: N and the mean
    length over every row, df and tf from every row holding a query term (only those rows come out, so 500,000
    chunks fit in memory)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        query_terms = []
        for q in queries:
            cur = await conn.execute("SELECT lexeme FROM unnest(to_tsvector(%s::regconfig, %s))", [record.language, q])
            query_terms.append([r[0] for r in await cur.fetchall()])
        wanted = sorted({t for terms in query_terms for t in terms})
        cur = await conn.execute(f"SELECT count(*), avg(length(fts))::float8 FROM {record.table_name}")
        counted = await cur.fetchone()
        assert counted is not None
        n, avgdl = int(counted[0]), float(counted[1])
        by_lexeme: dict[str, list[tuple[str, int, int]]] = {}
        async with conn.cursor(name="exact_bm25") as named, conn.transaction():
            # One pass over the table, server-side: each row's query lexemes with their tf, and the row's |d|.
            await named.execute(
                f"SELECT c.id, u.lexeme, coalesce(array_length(u.positions, 1), 1), length(c.fts)"
                f" FROM {record.table_name} AS c, unnest(c.fts) AS u WHERE u.lexeme = ANY(%s)",
                [wanted],
            )
            async for chunk_id, lexeme, tf, dl in named:
                by_lexeme.setdefault(lexeme, []).append((chunk_id, tf, dl))
        results = []
        for terms in query_terms:
            scores: dict[str, float] = {}
            for t in terms:
                matches = by_lexeme.get(t, [])
                idf = math.log(1 + (n - len(matches) + 0.5) / (len(matches) + 0.5))
                for chunk_id, tf, dl in matches:
                    weight = tf * (text.K1 + 1) / (tf + text.K1 * (1 - text.B + text.B * dl / avgdl))
                    scores[chunk_id] = scores.get(chunk_id, 0.0) + idf * weight
            top = [c for c, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
            cur = await conn.execute(f"SELECT id, content FROM {record.table_name} WHERE id = ANY(%s)", [top])
            content: dict[str, str] = dict(await cur.fetchall())
            results.append([content[c] for c in top])
    return results


async def postings_read(dsn: str, record: stores.StoreRecord, queries: list[str]) -> dict[str, float]:
    """What the postings path reads for a query (search/postings.py): postings and bytes (means), and the block
    rows they come in."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        current = await stores.get(conn, record.id)
        assert current is not None
        read = size = rows = 0
        for query in queries:
            cur = await conn.execute(
                postings.fetch_statement(current.layout), [current.layout.language, query, "{}", None], binary=True
            )
            for lexeme, packed, *_ in await cur.fetchall():
                if lexeme is not None and packed:
                    read += len(packed) // 8
                    size += len(packed)
                    rows += 1
    n = max(1, len(queries))
    return {"postings_mean": round(read / n, 1), "bytes_mean": round(size / n), "block_rows_mean": round(rows / n, 1)}


async def explain(dsn: str, record: stores.StoreRecord, query: str, dims: int, path: Path) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await register_vector_async(conn)
        current = await stores.get(conn, record.id)
        assert current is not None
        stats = text.TextStats(current.id, current.analyzed_rows, current.text_avg_length, current.text_min_freq)
        out = [f"query: {query!r}, store of {current.analyzed_rows:.0f} rows\n"]
        depth = hybrid.depth_for(10)
        await conn.execute("SET hnsw.ef_search = 100")
        await conn.execute("SET hnsw.iterative_scan = relaxed_order")
        cur = await conn.execute(
            sql_explain(postings.fetch_statement(current.layout)), [current.layout.language, query, "{}", None]
        )
        out.append("== postings fetch (both modes)\n" + "\n".join(r[0] for r in await cur.fetchall()) + "\n")
        by_depth = {k: await postings.fetch_and_score(conn, current.layout, stats, query, k) for k in (10, depth)}
        statements = {
            "hybrid (GIN path, as before)": hybrid.hybrid_statement(
                current.layout,
                stats,
                query,
                current.layout.to_db(fake_vector(query, dims)),
                NO_FILTER,
                [],
                limit=10,
                depth=hybrid.depth_for(10),
                weights=hybrid.Weights(),
                exact=False,
            ),
            "hybrid (postings, after the fetch)": hybrid.hybrid_statement(
                current.layout,
                stats,
                query,
                current.layout.to_db(fake_vector(query, dims)),
                NO_FILTER,
                [],
                limit=10,
                depth=depth,
                weights=hybrid.Weights(),
                exact=False,
                scored=by_depth[depth],
            ),
            "keyword (GIN path, as before)": hybrid.keyword_statement(current.layout, stats, query, NO_FILTER, [], 10),
            "keyword (postings, after the fetch)": hybrid.keyword_statement(
                current.layout, stats, query, NO_FILTER, [], 10, by_depth[10]
            ),
        }
        for name, (statement, params) in statements.items():
            cur = await conn.execute(sql_explain(statement), params)
            out.append(f"== {name}\n" + "\n".join(r[0] for r in await cur.fetchall()) + "\n")
        await asyncio.to_thread(path.write_text, "\n".join(out))


def sql_explain(statement: Any) -> Any:
    from psycopg import sql

    return sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + statement


async def drive(concurrency: int, seconds: float, one: Any, meters: dict[str, Any]) -> dict[str, float]:
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
    cpu = {name: (meter() - before[name]) / len(latencies) * 1000 for name, meter in meters.items()}
    q = statistics.quantiles(latencies, n=100)
    return {
        "qps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": q[98] * 1000,
        "searches": len(latencies),
        **{f"cpu_ms_{name}": value for name, value in cpu.items()},
    }


async def bench(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    from fakeembed import FakeEmbedder

    rng = random.Random(7)
    chunks, documents = corpus(args.docs, rng)
    queries = cut_queries(documents, args.queries, rng)
    upstream = await FakeEmbedder(dimensions=args.dims).start()
    workdir = Path(tempfile.mkdtemp(prefix="vs-kwbench-"))
    cache = args.postings_cache_mb
    server_section = {"server": {"postings_cache_bytes": cache << 20}} if cache >= 0 else {}
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
                **server_section,
            }
        )
    )
    spec = load_spec(spec_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(spec_path, port, dsn, args.workers, workdir / "server.log")
    report: dict[str, Any] = {
        "docs": args.docs,
        "chunks": len(chunks),
        "dims": args.dims,
        "queries": len(queries),
        "workers": args.workers,
        "postings_cache_mb": args.postings_cache_mb if args.postings_cache_mb >= 0 else "default",
    }
    backends = BackendCpu.local(dsn)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
            if not await wait_ready(http, base + "/ready", seconds=120):
                raise SystemExit("server did not become ready")
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                record = await stores.get(conn, spec.stores[0].id)
            assert record is not None
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute(f"SELECT count(*) FROM {record.table_name}")
                held = (await cur.fetchone() or (0,))[0]
            if held == len(chunks):  # a kept database (--keep) from an earlier run of the same corpus
                report["load_seconds"] = None
            else:
                if held:
                    raise SystemExit(f"the kept store holds {held} chunks, not {len(chunks)}: use another --keep")
                report["load_seconds"] = round(await load(dsn, record, chunks, args.dims), 2)
            report.update(LOAD_EXTRA)
            if args.explain:
                await explain(dsn, record, queries[0], args.dims, Path(args.explain))
                if args.explain_only:
                    return report
            url = f"{base}/v1/vector_stores/{record.id}/search"
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

            def body(q: str, mode: str, **extra: Any) -> bytes:
                return json.dumps(
                    {"query": q, "max_num_results": 10, "search_mode": mode, "ranking_options": {"ranker": "none"}}
                    | extra
                ).encode()

            bodies = {mode: [body(q, mode) for q in queries] for mode in MODES}
            await warm(url, upstream, bodies["vector"], headers, args.workers)  # every worker's query cache
            calls_before = len(upstream.calls)
            meters: dict[str, Any] = {"server": lambda: tree_cpu_seconds(server.pid)}
            if backends is not None:
                meters["postgres"] = backends
            results: dict[str, dict[int, dict[str, float]]] = {mode: {} for mode in args.modes}
            for concurrency in args.concurrency:
                for mode in args.modes:
                    mode_bodies = bodies[mode]

                    async def one(i: int, mode_bodies: list[bytes] = mode_bodies) -> None:
                        async with http.post(url, data=mode_bodies[i % len(mode_bodies)], headers=headers) as r:
                            await r.read()
                            assert r.status == 200

                    results[mode][concurrency] = await drive(concurrency, args.seconds, one, meters)
            report["runs"] = results
            if len(upstream.calls) != calls_before:
                raise SystemExit("a timed search reached the embedding upstream: the query cache was not warm")
            if "vector" in args.modes:
                report["ratios_vs_vector"] = {
                    mode: {c: round(results[mode][c]["qps"] / results["vector"][c]["qps"], 2) for c in args.concurrency}
                    for mode in args.modes
                }
            # Keyword recall@100 against exact BM25.
            sample = queries[: args.recall_queries]
            truth = await exact_bm25(dsn, record, sample, 100)
            recalls = []
            for q, expected in zip(sample, truth, strict=True):
                async with http.post(
                    url, data=json.dumps({"query": q, "limit": 100, "search_mode": "keyword"}), headers=headers
                ) as r:
                    got = {item["content"][0]["text"] for item in (await r.json())["data"]}
                if expected:
                    recalls.append(len(got & set(expected)) / len(expected))
            report["keyword_recall_at_100"] = round(statistics.mean(recalls), 4)
            report["keyword_recall_at_100_min"] = round(min(recalls), 4)
            # Filtered hybrid: 1 row in 10 passes; each search must still return 10.
            short = 0
            flt = {"type": "eq", "key": "n", "value": 3}
            for q in queries[: args.recall_queries]:
                async with http.post(url, data=body(q, "hybrid", filters=flt), headers=headers) as r:
                    data = (await r.json())["data"]
                    short += len(data) < 10 or any(item["attributes"]["n"] != 3 for item in data)
            report["filtered_hybrid_short_or_wrong"] = short
            report["postings_read"] = await postings_read(dsn, record, queries[: args.recall_queries])
    finally:
        server.terminate()
        server.wait(timeout=60)
        await upstream.close()
        if backends is not None:
            backends.conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report["note"] = "compare ratios within a run; load_average says how busy the machine was"
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="the modes timed (ratios need vector)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (`serve --workers`); one uses about one CPU"
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument("--explain", default="")
    parser.add_argument("--explain-only", action="store_true", help="load, write the plans and stop")
    parser.add_argument("--json", default="")
    parser.add_argument(
        "--postings-cache-mb",
        type=int,
        default=-1,
        help="the server's `server.postings_cache_bytes`, in MiB (default: the spec's default)",
    )
    parser.add_argument(
        "--keep", default="", help="a PostgreSQL data directory kept between runs: the store is loaded once"
    )
    args = parser.parse_args()
    with bench_server(args.keep or None) as server_dsn:
        report = asyncio.run(bench(args, fresh_database(server_dsn, "bench_keyword", reuse=bool(args.keep))))
    report["load_average_at_end"] = os.getloadavg()
    finish_report(report, args.json or None)


if __name__ == "__main__":
    main()
