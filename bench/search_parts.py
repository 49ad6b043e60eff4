"""CPU of two parts of a search, A against B in one process, on a kept store of bench/keyword_search.py.

    python bench/keyword_search.py --keep DIR --docs N ...   # builds and keeps the store first
    python bench/search_parts.py --keep DIR [--searches 600] [--rounds 2] [--json report.json]

- **The index walk** (search/vector.py): the unfiltered vector statement with pgvector's iterative scan
  (`relaxed_order`, what every search used before) against one walk (`ONE_WALK`), for 10 and 40 rows. The
  PostgreSQL backend's CPU a search, and whether both returned the same rows in the same order.
- **The postings cache** (search/postings_cache.py): keyword and hybrid searches (`hybrid.run_keyword`,
  `hybrid.run_hybrid`, 10 results) without a cache and through one of `--cache-mb` (the server's default,
  128), warmed by one pass over the queries first. This process's CPU (the server's part) and the backend's,
  a search, and whether both gave the same keyword results (`postings.fetch_and_score`, k = 40).

The queries are 5-9 words cut from the first 2,000 documents of the bench corpus (the same lexicon and law as any
`--docs`), with the fake embedder's vectors of their text. Rounds alternate A and B, so a busy machine weighs on
both; compare within a round.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from _db import bench_server, finish_report, fresh_database
from _proc import tree_cpu_seconds
from keyword_search import corpus, cut_queries
from pgvector.psycopg import register_vector_async
from search_http import fake_vector

from vectorstore.search import hybrid, postings, text, vector
from vectorstore.search.postings_cache import PostingsCache
from vectorstore.storage import stores

QUERIES = 300
EF_SEARCH = 100


def queries_and_vectors(dims: int) -> tuple[list[str], list[list[float]]]:
    rng = random.Random(7)
    _, documents = corpus(2000, rng)
    queries = cut_queries(documents, QUERIES, rng)
    return queries, [fake_vector(q, dims) for q in queries]


async def cpu_per_search(
    conn: psycopg.AsyncConnection[Any], searches: int, one: Callable[[int], Awaitable[Any]]
) -> dict[str, float]:
    """Milliseconds of CPU a search: this process's (`server`) and the connection's backend's (`postgres`)."""
    for i in range(10):
        await one(i)
    client, backend = time.process_time(), tree_cpu_seconds(conn.info.backend_pid)
    for i in range(searches):
        await one(i % QUERIES)
    return {
        "server": round(1000 * (time.process_time() - client) / searches, 3),
        "postgres": round(1000 * (tree_cpu_seconds(conn.info.backend_pid) - backend) / searches, 3),
    }


async def measure(dsn: str, searches: int, rounds: int, cache_mb: int) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await register_vector_async(conn)
        (record,) = await stores.all_stores(conn)
        layout = record.layout
        stats = text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)
        queries, vectors = queries_and_vectors(record.dimensions)
        query_vectors = [layout.to_db(v) for v in vectors]
        statement = vector.search_statement(layout, vector.NO_FILTER)
        report: dict[str, Any] = {"chunks": record.analyzed_rows, "searches": searches, "rounds": rounds}

        walks: dict[str, list[dict[str, float]]] = {}
        same_rows: dict[int, int] = {}
        for _ in range(rounds):
            for limit in (10, 40):
                rows: dict[bool, list[Any]] = {}
                for single in (False, True):

                    async def walk(i: int, limit: int = limit, single: bool = single) -> list[Any]:
                        params = vector.nearest_params(layout, query_vectors[i], [], limit, exact=False)
                        return await vector.execute(
                            conn, statement, params, ef_search=EF_SEARCH, no_table_scan=True, one_pass=single
                        )

                    name = f"{'one_walk' if single else 'iterative'}_k{limit}"
                    walks.setdefault(name, []).append(await cpu_per_search(conn, searches, walk))
                    rows[single] = [[r[0] for r in await walk(i)] for i in range(QUERIES)]
                same_rows[limit] = sum(a == b for a, b in zip(rows[False], rows[True], strict=True))
        report["index_walk"] = walks
        report["index_walk_identical_of"] = {"queries": QUERIES, **{f"k{k}": v for k, v in same_rows.items()}}

        cache = PostingsCache(cache_mb << 20)
        for query in queries:  # warm: the rows each query needs are read once and kept
            await postings.fetch_and_score(conn, layout, stats, query, 40, cache)
        parts: dict[str, list[dict[str, float]]] = {}
        for _ in range(rounds):
            for label, used in (("no_cache", None), ("cache", cache)):

                async def keyword(i: int, used: PostingsCache | None = used) -> Any:
                    return await hybrid.run_keyword(conn, layout, stats, queries[i], limit=10, cache=used)

                async def fused(i: int, used: PostingsCache | None = used) -> Any:
                    return await hybrid.run_hybrid(
                        conn, layout, stats, queries[i], vectors[i], limit=10, depth=hybrid.depth_for(10),
                        ef_search=EF_SEARCH, cache=used,
                    )  # fmt: skip

                parts.setdefault(f"keyword_{label}", []).append(await cpu_per_search(conn, searches, keyword))
                parts.setdefault(f"hybrid_{label}", []).append(await cpu_per_search(conn, searches, fused))
        report["postings_cache"] = parts
        report["postings_cache_held"] = {"rows": len(cache), "megabytes": round(cache.bytes / 2**20, 1)}
        identical = 0
        for query in queries:
            plain = await postings.fetch_and_score(conn, layout, stats, query, 40)
            identical += plain == await postings.fetch_and_score(conn, layout, stats, query, 40, cache)
        report["postings_cache_identical_of"] = {"queries": QUERIES, "identical": identical}
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keep", required=True, help="the data directory bench/keyword_search.py --keep built")
    parser.add_argument("--searches", type=int, default=600, help="searches timed for each figure")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache-mb", type=int, default=128)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    with bench_server(args.keep) as server_dsn:
        dsn = fresh_database(server_dsn, "bench_keyword", reuse=True)
        report = asyncio.run(measure(dsn, args.searches, args.rounds, args.cache_mb))
    finish_report(report, args.json or None)


if __name__ == "__main__":
    main()
