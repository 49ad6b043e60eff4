"""How much of the postings could a pruning algorithm skip? Measured on a kept store of bench/keyword_search.py.

    python bench/keyword_search.py --keep DIR --docs 158500 ...   # builds and keeps the store first
    python bench/keyword_pruning.py --keep DIR --docs 158500 [--queries 30] [--json report.json]

For each query (the same queries as bench/keyword_search.py, from the same seed), the fetch statement's rows
(search/postings.py: every posting of every query term) give the exact top k (`postings.score`) and its k-th
score. That score is then handed to two pruning schemes as if they had known it from the start, so the figures
are the least each could read; a real run starts lower and reads more:

- block-max windows: the ords cut into windows of W; a window's bound is the sum over terms of each term's
  BM25 weight at its largest tf and smallest length in the window; every window whose bound reaches the k-th
  score must be read whole (the share of postings in them is reported);
- MaxScore over terms: terms sorted by their bound (largest weight over their postings); the longest prefix
  whose bounds sum below the k-th score is non-essential, only probed for candidates; the essential terms are
  read whole (their share of postings), and the candidates are the chunks of the essential lists whose partial
  score plus the non-essential bounds reaches the k-th score (each needs a lookup in every non-essential term).

Then, with each query's lists decoded and sorted in memory (what a cache of them kept between searches would
hold), the time a query takes to sum every posting, and to run MaxScore for real: terms read whole from the
largest bound down until the bounds left sum below the k-th partial score, then the chunks that can still
reach it looked up in the other terms by binary search. Both are checked equal to the exact top k.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import numpy as np
import psycopg
from _db import bench_server, finish_report, fresh_database
from keyword_search import corpus, cut_queries

from vectorstore.search import postings, text
from vectorstore.storage import stores

K1, B = text.K1, text.B
KS = (10, 40, 100)
WINDOWS = (64, 256, 1024, 4096)


def weights(tf: Any, dl: Any, avgdl: float) -> Any:
    """BM25's tf part (without idf), the same formula as search/postings.py."""
    return tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / avgdl))


def term_lists(rows: list[Any]) -> tuple[list[tuple[float, Any, Any, Any]], float, int]:
    """Per term (idf, ords, tf, dl) sorted by ord, the mean length, and the postings in all."""
    live = next(r[2] for r in rows if r[3] == 2)
    n = int.from_bytes(live[:8], "big")
    avgdl = int.from_bytes(live[8:], "big") / n
    by_term: dict[str, list[bytes]] = {}
    for lexeme, packed, _, kind, *_ in rows:
        if kind == 0 and packed:
            by_term.setdefault(lexeme, []).append(packed)
    lists = []
    for parts in by_term.values():
        run = np.frombuffer(b"".join(parts), dtype=postings._FIELDS)
        run = run[np.argsort(run["ord"], kind="stable")]
        lists.append(
            (
                postings.idf(n, run.size),
                run["ord"].astype(np.int64),
                run["tf"].astype(np.float64),
                run["dl"].astype(np.float64),
            )
        )
    return lists, avgdl, sum(o.size for _, o, _, _ in lists)


def block_max_share(lists: list[tuple[float, Any, Any, Any]], avgdl: float, window: int, kth: float) -> float:
    top = max(int(o.max()) for _, o, _, _ in lists) + 1
    count = top // window + 1
    bound = np.zeros(count)
    held = np.zeros(count)
    for idf, ords, tf, dl in lists:
        which = ords // window
        most_tf = np.zeros(count)
        np.maximum.at(most_tf, which, tf)
        least_dl = np.full(count, np.inf)
        np.minimum.at(least_dl, which, dl)
        present = most_tf > 0
        bound[present] += idf * weights(most_tf[present], least_dl[present], avgdl)
        held += np.bincount(which, minlength=count)
    return float(held[bound >= kth].sum() / held.sum())


def max_score(lists: list[tuple[float, Any, Any, Any]], avgdl: float, kth: float) -> tuple[float, int, int]:
    """(share of postings in essential terms, non-essential terms, candidates to look up)."""
    ranked = sorted(
        ((idf * float(np.max(weights(tf, dl, avgdl))), idf, ords, tf, dl) for idf, ords, tf, dl in lists),
        key=lambda term: term[0],
    )
    below = 0.0
    non_essential = 0
    for bound, *_ in ranked:
        if below + bound >= kth:
            break
        below += bound
        non_essential += 1
    essential = ranked[non_essential:]
    total = sum(term[2].size for term in ranked)
    share = sum(term[2].size for term in essential) / total
    if not non_essential:
        return share, 0, 0
    ords = np.concatenate([term[2] for term in essential])
    essential_weights = [term[1] * weights(term[3], term[4], avgdl) for term in essential]
    partial = np.bincount(ords, weights=np.concatenate(essential_weights))
    return share, non_essential, int((partial + below >= kth).sum())


def exact_in_memory(lists: list[tuple[float, Any, Any, Any]], avgdl: float, k: int) -> tuple[Any, Any]:
    """Every posting summed, from lists already decoded (what a cache of them would save of `postings.score`)."""
    ords = np.concatenate([o for _, o, _, _ in lists])
    sums = np.bincount(ords, weights=np.concatenate([idf * weights(tf, dl, avgdl) for idf, _, tf, dl in lists]))
    present = np.flatnonzero(sums > 0)
    return top_k(present, sums[present], k)


def top_k(ords: Any, scores: Any, k: int) -> tuple[Any, Any]:
    """The k best (ords, scores), every tie at the k-th score kept, as `postings.score` keeps them."""
    if ords.size > k:
        kth = np.partition(scores, ords.size - k)[ords.size - k]
        chosen = scores >= kth
        ords, scores = ords[chosen], scores[chosen]
    return ords, scores


def max_score_in_memory(
    lists: list[tuple[float, Any, Any, Any]], bounds: list[float], avgdl: float, k: int
) -> tuple[Any, Any, int]:
    """Exact top k by MaxScore with a real threshold, the lists decoded in memory and sorted by ord: terms are
    read whole from the largest bound down until the bounds left sum below the k-th partial score (a lower bound
    of the k-th score); the chunks that can still reach it are then looked up in the terms left by binary search.
    Returns (ords, scores, candidates looked up)."""
    order = sorted(range(len(lists)), key=lambda i: -bounds[i])
    left = sum(bounds)
    read_ords: list[Any] = []
    read_weights: list[Any] = []
    candidates: Any = np.empty(0, dtype=np.int64)
    partial: Any = np.empty(0)
    threshold = 0.0
    taken = 0
    for i in order:
        idf, ords, tf, dl = lists[i]
        read_ords.append(ords)
        read_weights.append(idf * weights(tf, dl, avgdl))
        left -= bounds[i]
        taken += 1
        candidates, inverse = np.unique(np.concatenate(read_ords), return_inverse=True)
        partial = np.bincount(inverse, weights=np.concatenate(read_weights))
        threshold = float(np.partition(partial, partial.size - k)[partial.size - k]) if partial.size >= k else 0.0
        if left < threshold:
            break
    reach = partial + left >= threshold
    candidates, partial = candidates[reach], partial[reach]
    for i in order[taken:]:
        idf, ords, tf, dl = lists[i]
        at = np.minimum(np.searchsorted(ords, candidates), ords.size - 1)
        found = ords[at] == candidates
        partial[found] += idf * weights(tf[at[found]], dl[at[found]], avgdl)
    chosen, scores = top_k(candidates, partial, k)
    return chosen, scores, int(candidates.size)


async def the_store(dsn: str) -> stores.StoreRecord:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        records = await stores.all_stores(conn)
    if len(records) != 1:
        raise SystemExit("expected the one store bench/keyword_search.py --keep builds")
    return records[0]


def measure(dsn: str, docs: int, count: int) -> dict[str, Any]:
    rng = random.Random(7)  # bench/keyword_search.py's seed and draws: the same corpus, then the same queries
    _, documents = corpus(docs, rng)
    queries = cut_queries(documents, count, rng)
    del documents
    shares: dict[str, list[float]] = {}
    essential: dict[int, list[float]] = {k: [] for k in KS}
    candidates: dict[int, list[int]] = {k: [] for k in KS}
    probed: dict[int, list[int]] = {k: [] for k in KS}
    in_memory: dict[str, list[float]] = {}
    looked_up: dict[int, list[int]] = {k: [] for k in KS}
    read: list[int] = []
    fetch_seconds = score_seconds = 0.0
    layout = asyncio.run(the_store(dsn)).layout
    statement = postings.fetch_statement(layout)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for query in queries:
            started = time.perf_counter()
            rows = conn.execute(statement, [layout.language, query, "{}", None], binary=True).fetchall()
            fetched = time.perf_counter()
            stats = text.TextStats("", 0.0, 0.0, 0.0)  # unused: the totals row gives N and the mean length
            exact = {k: postings.score(rows, stats, k) for k in KS}
            score_seconds += (time.perf_counter() - fetched) / len(KS)
            fetch_seconds += fetched - started
            lists, avgdl, total = term_lists(rows)
            read.append(total)
            # What a cache of decoded lists would keep beside each: its largest tf and smallest length.
            bounds = [idf * float(weights(tf.max(), dl.min(), avgdl)) for idf, _, tf, dl in lists]
            for k in KS:
                started = time.perf_counter()
                want_ords, want_scores = exact_in_memory(lists, avgdl, k)
                summed = time.perf_counter()
                got_ords, got_scores, lookups = max_score_in_memory(lists, bounds, avgdl, k)
                pruned = time.perf_counter()
                in_memory.setdefault(f"every posting k={k}", []).append(summed - started)
                in_memory.setdefault(f"max_score k={k}", []).append(pruned - summed)
                looked_up[k].append(lookups)
                assert set(got_ords.tolist()) == set(want_ords.tolist()), (query, k)
                assert np.allclose(np.sort(got_scores), np.sort(want_scores), rtol=1e-9, atol=0), (query, k)
            for k in KS:
                if not exact[k].scores:
                    continue
                kth = sorted(exact[k].scores, reverse=True)[min(k, len(exact[k].scores)) - 1]
                for window in WINDOWS:
                    shares.setdefault(f"W={window} k={k}", []).append(block_max_share(lists, avgdl, window, kth))
                share, non_essential, wanted = max_score(lists, avgdl, kth)
                essential[k].append(share)
                probed[k].append(non_essential)
                candidates[k].append(wanted)
    return {
        "queries": count,
        "fetch_ms": round(fetch_seconds / count * 1000, 2),
        "score_ms": round(score_seconds / count * 1000, 2),
        "postings_a_query": {
            "mean": round(statistics.mean(read)),
            "p50": round(statistics.median(read)),
            "max": max(read),
        },
        "block_max_share_read": {name: round(statistics.mean(v), 3) for name, v in shares.items()},
        "max_score_essential_share": {k: round(statistics.mean(v), 3) for k, v in essential.items()},
        "max_score_candidates": {k: round(statistics.mean(v)) for k, v in candidates.items()},
        "max_score_non_essential_terms": {k: round(statistics.mean(v), 2) for k, v in probed.items()},
        "in_memory_ms": {name: round(statistics.mean(v) * 1000, 2) for name, v in in_memory.items()},
        "in_memory_ms_max": {name: round(max(v) * 1000, 2) for name, v in in_memory.items()},
        "max_score_lookups": {k: round(statistics.mean(v)) for k, v in looked_up.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keep", required=True, help="the data directory bench/keyword_search.py --keep built")
    parser.add_argument("--docs", type=int, required=True, help="the --docs it was built with")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    with bench_server(args.keep) as server_dsn:
        report = measure(fresh_database(server_dsn, "bench_keyword", reuse=True), args.docs, args.queries)
    finish_report(report, args.json or None)


if __name__ == "__main__":
    main()
