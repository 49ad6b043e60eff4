"""Keyword and hybrid search statements: one statement whatever the mode (after one read of the postings).

Hybrid takes the `depth` nearest rows through HNSW and the `depth` best BM25 rows, each leg with the same
filters, and fuses the two rankings with weighted reciprocal rank fusion (Cormack et al., 2009). Unfiltered,
the BM25 rows are computed in the server from the store's packed postings just before (vectorstore/search/
postings.py), and the statement receives them as arrays; filtered, the statement finds them through GIN
(vectorstore/search/text.py):

    fused(d) = sum over legs L where d appears of  w_L / (k + rank_L(d))

RRF only uses ranks, so it needs no calibration between cosine distances and BM25 scores, which live on
unrelated scales and vary from query to query; k = 60 (RRF_K) is the constant of the original paper, kept as
the default because it is not tuned to any one collection (a request may set it: OGX's `impact_factor`). The
reported score is `fused` divided by its largest possible value (first in every leg), so it lies in 0..1: 1.0
is a chunk both legs ranked first.

When the keyword leg is empty (the query has no indexable term, only stop words or punctuation, or no row holds
any of its terms), the result is the vector ranking and is scored as a vector search, not capped at the half
a fused score would give it: the statement returns the number of terms and of keyword rows so the caller
knows. Filters keep their guarantee: the vector leg scans iteratively until `depth` rows pass them, and
`depth` is at least `limit`, so `limit` rows come back whenever that many match.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from vectorstore.observability import metrics
from vectorstore.search import postings, text
from vectorstore.search.postings_cache import PostingsCache
from vectorstore.search.vector import NO_FILTER, Hit, execute, index_ef_search, nearest, nearest_params, score_of
from vectorstore.search.vector import one_pass as vector_one_pass
from vectorstore.storage.database import autocommit
from vectorstore.storage.tables import Layout

RRF_K = 60
MIN_DEPTH = 40
MAX_DEPTH = 400

Mode = Literal["hybrid", "vector", "keyword"]


def depth_for(limit: int, candidates: int = 0) -> int:
    """Rows each leg contributes: at least 40 (fusion needs more than the page), twice the page, or what the
    reranker will look at."""
    return min(MAX_DEPTH, max(MIN_DEPTH, 2 * limit, candidates))


@dataclass(frozen=True)
class Weights:
    embedding: float = 1.0
    text: float = 1.0
    k: float = RRF_K
    """RRF's constant: OGX's `impact_factor`. Larger values flatten the gap between ranks."""


@dataclass(frozen=True)
class Result:
    hits: list[Hit]
    terms: int
    """Indexable terms the query had; 0 means keyword ranking could not run (hybrid fell back to vector)."""
    keyword_rows: int = 0
    """Rows the keyword ranking contributed (hybrid); 0 means the page is the vector ranking alone."""


def _select_hits(table: sql.Identifier, source: str, extra: sql.Composable | None = None) -> sql.Composed:
    return sql.SQL(
        "SELECT c.id, c.file_id, c.filename, c.content, c.attributes, f.score, f.distance,"
        " (SELECT count(*) FROM terms) AS terms, (SELECT count(*) FROM kw) AS keyword_rows{extra}"
        " FROM {source} AS f JOIN {t} AS c ON c.id = f.id ORDER BY f.score DESC, c.id"
    ).format(t=table, source=sql.Identifier(source), extra=extra or sql.SQL(""))


def keyword_statement(
    layout: Layout,
    stats: text.TextStats,
    query_text: str,
    where: sql.Composable,
    where_params: Sequence[Any],
    limit: int,
    scored: postings.Scored | None = None,
) -> tuple[sql.Composed, list[Any]]:
    """The keyword search: from the postings already scored (`scored`, unfiltered), or through GIN (`None`)."""
    if scored is not None:
        return _postings_keyword_statement(layout, limit), postings.keyword_params(scored)
    ctes, params = postings.gin_leg(stats, layout, query_text, where, where_params, limit)
    return _keyword_statement(layout, ctes), params


def hybrid_statement(
    layout: Layout,
    stats: text.TextStats,
    query_text: str,
    embedding: Any,
    where: sql.Composable,
    where_params: Sequence[Any],
    *,
    limit: int,
    depth: int,
    weights: Weights,
    exact: bool,
    ef_search: int = 0,
    scored: postings.Scored | None = None,
) -> tuple[sql.Composed, list[Any]]:
    """The fused search; its keyword leg from the postings already scored (`scored`, unfiltered) or through GIN."""
    if scored is None:
        ctes, ctes_params = postings.gin_leg(stats, layout, query_text, where, where_params, depth)
        statement = _hybrid_statement(layout, ctes, where, limit, depth, exact, ef_search)
    else:
        ctes_params = postings.keyword_params(scored)
        if where is NO_FILTER:  # the postings path as searches take it (`_scored`): composed once
            statement = _postings_hybrid_statement(layout, limit, depth, exact, ef_search)
        else:
            ctes = postings.keyword_ctes(layout, depth)
            statement = _hybrid_statement(layout, ctes, where, limit, depth, exact, ef_search)
    top = weights.embedding / (weights.k + 1) + weights.text / (weights.k + 1)
    params: list[Any] = [
        *ctes_params,
        *nearest_params(layout, embedding, where_params, depth, exact=exact, ef_search=ef_search, literal_limit=True),
        weights.k,
        top if top > 0 else 1.0,
        weights.embedding,
        weights.text,
    ]
    return statement, params


# The postings path's statements are the same text for every query of a store and page (only their parameters
# differ), so they are composed once: composing them took 0.05-0.08 ms, about 5% of the server's CPU a search.
@functools.lru_cache(maxsize=256)
def _postings_keyword_statement(layout: Layout, limit: int) -> sql.Composed:
    return _keyword_statement(layout, postings.keyword_ctes(layout, limit))


@functools.lru_cache(maxsize=256)
def _postings_hybrid_statement(layout: Layout, limit: int, depth: int, exact: bool, ef_search: int) -> sql.Composed:
    return _hybrid_statement(layout, postings.keyword_ctes(layout, depth), NO_FILTER, limit, depth, exact, ef_search)


def _keyword_statement(layout: Layout, ctes: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "WITH {ctes}, best AS ("
        " SELECT id, score / nullif({max_score}, 0) AS score, NULL::float8 AS distance FROM kw)"
        " SELECT * FROM (SELECT count(*) AS terms FROM terms) AS n"
        " LEFT JOIN ({hits}) AS h ON true"
    ).format(
        ctes=ctes,
        max_score=text.max_score_expression(),
        hits=_select_hits(layout.ident, "best"),
    )


def _hybrid_statement(
    layout: Layout, ctes: sql.Composable, where: sql.Composable, limit: int, depth: int, exact: bool, ef_search: int
) -> sql.Composed:
    return sql.SQL(
        "WITH {ctes},"
        " vec AS ("
        " SELECT id, distance, row_number() OVER (ORDER BY distance, id) AS rank FROM ({nearest}) AS v),"
        " fused AS ("
        " SELECT id, sum(w / (%s::float8 + rank)) / %s::float8 AS score, min(distance) AS distance FROM ("
        " SELECT id, rank, %s::float8 AS w, distance FROM vec"
        " UNION ALL SELECT id, rank, %s::float8, NULL FROM kw) AS r"
        " GROUP BY id ORDER BY score DESC, id LIMIT {limit})"
        " {hits}"
    ).format(
        ctes=ctes,
        nearest=nearest(layout, where, sql.SQL("id"), exact=exact, limit=depth, ef_search=ef_search),
        limit=sql.Literal(limit),
        hits=_select_hits(layout.ident, "fused", sql.SQL(", (SELECT count(*) FROM vec) AS vector_rows")),
    )


_VECTOR_ROWS = 9
"""The fused statement's column counting its vector leg's rows (after the hit, `terms` and `keyword_rows`)."""


def _hits(rows: Sequence[Any], distance: str, *, vector_scores: bool) -> list[Hit]:
    hits: list[Hit] = []
    for row in rows:
        if row[0] is None:  # the keyword statement's row for a query with no match
            continue
        vector_distance = float(row[6]) if row[6] is not None else float("nan")
        # A fused or BM25 score is already 0..1; after a fallback to vector ranking it is the vector score.
        score = score_of(distance, vector_distance) if vector_scores else min(1.0, max(0.0, float(row[5] or 0.0)))
        hits.append(Hit(str(row[0]), row[1], row[2], row[3], row[4], vector_distance, score))
    return hits


# psycopg prepares a statement after 5 runs, and PostgreSQL may then settle on a generic plan. These statements
# carry their row counts (LIMIT) as literals, not parameters, so that plan still walks the HNSW index: with a
# parameter it sorted the whole table, and a hybrid search cost 3 times its custom plan (31 ms of PostgreSQL CPU
# against 11 ms on the bench store, bench/keyword_search.py). With the literals, the generic plan also saves
# planning these CTE chains every time (a third of the statement's CPU).


async def _scored(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    stats: text.TextStats,
    query_text: str,
    where: sql.Composable,
    k: int,
    cache: PostingsCache | None,
) -> postings.Scored | None:
    """The keyword leg's k best chunks from the postings (vectorstore/search/postings.py), or None for the GIN
    path (filtered searches, stores whose postings are not ready)."""
    if postings.usable(where, NO_FILTER) and await postings.is_ready(conn, layout.table):
        return await postings.fetch_and_score(conn, layout, stats, query_text, k, cache)
    return None


@metrics.timed_search
async def run_keyword(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    stats: text.TextStats,
    query_text: str,
    *,
    limit: int,
    where: sql.Composable = NO_FILTER,
    where_params: Sequence[Any] = (),
    cache: PostingsCache | None = None,
) -> Result:
    """`cache`: the process's decoded postings of common terms (search/postings_cache.py), if it keeps them."""
    scored = await _scored(conn, layout, stats, query_text, where, limit, cache)
    statement, params = keyword_statement(layout, stats, query_text, where, where_params, limit, scored)
    # Alone, as every search statement goes (vector.execute): in a transaction it cost BEGIN and COMMIT too.
    async with autocommit(conn):
        cur = await conn.execute(statement, params)
        rows = await cur.fetchall()
    # The LEFT JOIN gives one row even with no hits: it carries the number of terms (column 0 of `n`).
    terms = int(rows[0][0]) if rows else 0
    return Result(_hits([row[1:] for row in rows], layout.distance, vector_scores=False), terms)


@metrics.timed_search
async def run_hybrid(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    stats: text.TextStats,
    query_text: str,
    embedding: Sequence[float],
    *,
    limit: int,
    depth: int,
    ef_search: int,
    weights: Weights = Weights(),
    where: sql.Composable = NO_FILTER,
    where_params: Sequence[Any] = (),
    exact: bool = False,
    cache: PostingsCache | None = None,
) -> Result:
    """`cache`: as for `run_keyword`."""
    rows = await _run_fused(
        conn, layout, stats, query_text, embedding, None, limit, depth, ef_search, weights, where, where_params,
        exact, cache=cache,
    )  # fmt: skip
    terms, keyword_rows = (int(rows[0][7]), int(rows[0][8])) if rows else (0, 0)
    return Result(_hits(rows, layout.distance, vector_scores=keyword_rows == 0), terms, keyword_rows)


async def explain_hybrid(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    stats: text.TextStats,
    query_text: str,
    embedding: Sequence[float],
    *,
    limit: int,
    depth: int,
    ef_search: int,
    exact: bool = False,
    no_table_scan: bool | None = None,
) -> str:
    """The plan (`EXPLAIN`, text) of the fused statement `run_hybrid` runs, planned as it is planned there (the
    keyword leg scored first, the same settings and transaction). `no_table_scan=False`: without the guard."""
    rows = await _run_fused(
        conn, layout, stats, query_text, embedding, sql.SQL("EXPLAIN "), limit, depth, ef_search, Weights(),
        NO_FILTER, (), exact, no_table_scan,
    )  # fmt: skip
    return "\n".join(str(row[0]) for row in rows)


async def _run_fused(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    stats: text.TextStats,
    query_text: str,
    embedding: Sequence[float],
    prefix: sql.Composable | None,
    limit: int,
    depth: int,
    ef_search: int,
    weights: Weights,
    where: sql.Composable,
    where_params: Sequence[Any],
    exact: bool,
    no_table_scan: bool | None = None,
    cache: PostingsCache | None = None,
) -> list[Any]:
    statement, params = hybrid_statement(
        layout,
        stats,
        query_text,
        layout.to_db(embedding),
        where,
        where_params,
        limit=limit,
        depth=depth,
        weights=weights,
        exact=exact,
        ef_search=ef_search,
        scored=await _scored(conn, layout, stats, query_text, where, depth, cache),
    )

    # The vector leg is guarded against a table scan as a vector search is (search/vector.py says why): on a
    # small store of large vectors the planner scanned and sorted the whole table for it (1,400 rows of 1,536
    # dimensions: 8.2-8.8 ms where the index takes 1.1 ms), so the default mode ran 4x slower than vector mode.
    # Unfiltered, it walks the index in one pass, and again iteratively if that leg came back short (as a
    # vector search does: search/vector.py).
    return await execute(
        conn,
        statement,
        params,
        ef_search=index_ef_search(layout, ef_search, depth),
        no_table_scan=not exact if no_table_scan is None else no_table_scan,
        prefix=prefix,
        one_pass=vector_one_pass(layout, where, exact=exact),
        came_short=lambda rows: not rows or int(rows[0][_VECTOR_ROWS]) < depth,
    )
