"""Keyword search's BM25 top-k through impact-ordered postings: read a few hundred postings, not every match.

Each chunk table `<t>` has `<t>_postings (lexeme, impact, id, tf, dl)` (vectorstore/storage/tables.py, migration
0400), indexed by (lexeme, impact DESC) with id, tf and dl included. `impact` is the BM25 term weight
tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / A_ref)) at the table's reference mean length A_ref; its order within
a lexeme is the order of the real BM25 term weight at the store's current mean length A when A = A_ref.

One statement finds the top k of BM25 (the same score as vectorstore/search/text.py) with a threshold bound:

1. For each query term t, its `per_term` best postings by impact (one index range scan each).
2. Any posting of t not read has BM25 weight at most bound_t = idf_t * (last impact read) * max(1, A / A_ref):
   the weight grows with the mean length, and by at most A / A_ref from A_ref to A (for A <= A_ref it only
   shrinks), so the bound holds whatever drift the reference has. A term whose postings were all read has
   bound 0. A chunk in no list scores at most T = sum of bound_t.
3. Every chunk read gets a lower bound (the weights of the terms it was seen under, computed exactly from tf
   and dl) and an upper bound (plus bound_t of the terms it was not seen under). Only chunks whose upper bound
   reaches the k-th best lower bound can be in the top k: those are scored exactly from their `fts`, as the
   GIN path does.
4. The result is exact when the k-th exact score is at least T (no chunk left out can beat it) or T = 0. The
   statement says whether it is (`kw_exact`); when it isn't, the caller runs it again with 8 times the postings,
   then with all of them (which is always exact). On the bench corpus the first run is exact for nearly every
   query (docs/benchmarks.md).

Document frequencies: from ANALYZE's most common elements (text_stats) for common lexemes, as before, and
counted in the postings (an index-only count of a short list) for the rest, which makes idf exact for rare
terms instead of the planner's guess.

Filtered keyword legs keep the GIN path (text.py): a filter can reject the best postings of every term, and the
GIN path with the filter in the same scan is what keeps "`limit` rows whenever that many match".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from vectorstore.search import text
from vectorstore.storage.tables import Layout, postings_table

MIN_PER_TERM = 50
"""Postings read per query term on the first try, at least; more when the page is deep (see `per_term`)."""
RETRY_FACTOR = 8
NOT_READY_RECHECK_SECONDS = 10.0
# A stored impact is a float4: allow for its rounding when it bounds a weight computed in float8.
_ROUNDING = 1.000001

_ready: set[str] = set()
_not_ready_checked: dict[str, float] = {}


def per_term(k: int) -> int:
    return max(MIN_PER_TERM, 2 * k)


def attempts(k: int) -> list[int | None]:
    """Postings per term on each try: the first, 8 times more, then all (None), which is always exact."""
    first = per_term(k)
    return [first, first * RETRY_FACTOR, None]


async def is_ready(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    """Whether `table` has postings for every chunk (remembered once true; a `False` is re-read at most every
    NOT_READY_RECHECK_SECONDS, so a store being upgraded costs one small query now and then)."""
    if table in _ready:
        return True
    checked = _not_ready_checked.get(table)
    if checked is not None and time.monotonic() - checked < NOT_READY_RECHECK_SECONDS:
        return False
    probe = sql.SQL("SELECT tf FROM {p} WHERE lexeme = '' AND id IS NULL").format(
        p=sql.Identifier(postings_table(table))
    )
    try:
        # In its own transaction, so a missing table leaves the caller's connection usable and idle.
        async with conn.transaction():
            cur = await conn.execute(probe)
            row = await cur.fetchone()
    except pg_errors.UndefinedTable:
        row = None
    ready = bool(row and row[0] == 1)
    if ready:
        _ready.add(table)
        _not_ready_checked.pop(table, None)
    else:
        _not_ready_checked[table] = time.monotonic()
    return ready


def forget(table: str) -> None:
    """Drop what `is_ready` remembers of a table (tests; a table dropped and made again under the same name)."""
    _ready.discard(table)
    _not_ready_checked.pop(table, None)


def usable(stats: text.TextStats, where: sql.Composable, no_filter: sql.Composable) -> bool:
    """The postings path needs the store's mean length (from its first ANALYZE) and no filter."""
    return stats.avg_length > 0 and where is no_filter


def terms_cte(stats: text.TextStats, layout: Layout, query_text: str) -> tuple[sql.Composed, list[Any]]:
    """`terms(word, df, idf)` (rarest first, at most text.MAX_TERMS) and `words(all_words, all_idfs)`."""
    statement = sql.SQL(
        "terms AS MATERIALIZED ("
        " SELECT l.lexeme AS word, d.df,"
        " CASE WHEN %s::float8 > 0 THEN ln(1 + greatest(%s::float8 - d.df + 0.5, 0) / (d.df + 0.5)) ELSE 1.0 END"
        " AS idf"
        " FROM unnest(to_tsvector(%s::regconfig, %s)) AS l"
        # One index probe of text_stats per query lexeme (a join would read the store's 3,000 rows), and
        # COALESCE evaluates the count only for a lexeme ANALYZE did not list, i.e. a rare one.
        " CROSS JOIN LATERAL (SELECT coalesce("
        " (SELECT s.freq * %s::float8 FROM text_stats AS s WHERE s.vector_store_id = %s AND s.lexeme = l.lexeme),"
        " (SELECT count(*) FROM {p} AS p WHERE p.lexeme = l.lexeme))::float8 AS df) AS d"
        " ORDER BY idf DESC, word LIMIT {max_terms}),"
        " words AS MATERIALIZED ("
        " SELECT array_agg(word ORDER BY word) AS all_words, array_agg(idf ORDER BY word) AS all_idfs FROM terms)"
    ).format(p=sql.Identifier(postings_table(layout.table)), max_terms=sql.Literal(text.MAX_TERMS))
    params: list[Any] = [stats.rows, stats.rows, layout.language, query_text, stats.rows, stats.store_id]
    return statement, params



def keyword_leg(
    stats: text.TextStats, layout: Layout, k: int, postings_per_term: int | None
) -> tuple[sql.Composed, list[Any]]:
    """`kw(id, score, rank)`: the k best rows by BM25, and `kw_exact(ok)` (needs `terms` and `words`)."""
    avgdl = stats.avg_length
    weight = sql.SQL("l.idf * l.tf * {k1p} / (l.tf + {k1} * (1 - {b} + {b} * l.dl / %s::float8))").format(
        k1p=sql.Literal(text.K1 + 1), k1=sql.Literal(text.K1), b=sql.Literal(text.B)
    )
    exact_score, exact_params = text.bm25_expression(stats, "r")
    statement = sql.SQL(
        "ref AS MATERIALIZED (SELECT impact::float8 AS aref FROM {p} WHERE lexeme = '' AND id IS NULL),"
        " lists AS MATERIALIZED ("
        " SELECT t.word, t.idf, p.id, p.tf, p.dl, p.impact FROM terms AS t"
        " CROSS JOIN LATERAL (SELECT id, tf, dl, impact FROM {p} WHERE lexeme = t.word"
        " ORDER BY impact DESC LIMIT %s) AS p),"
        " bounds AS MATERIALIZED ("
        " SELECT t.word, CASE WHEN count(l.id) >= %s"
        " THEN t.idf * min(l.impact) * greatest(1, %s::float8 / ref.aref) * {rounding} ELSE 0 END AS bound"
        " FROM terms AS t CROSS JOIN ref LEFT JOIN lists AS l ON l.word = t.word GROUP BY t.word, t.idf, ref.aref),"
        " cand AS MATERIALIZED ("
        " SELECT l.id, sum({weight}) AS seen, sum(b.bound) AS seen_bound"
        " FROM lists AS l JOIN bounds AS b ON b.word = l.word GROUP BY l.id),"
        " threshold AS MATERIALIZED (SELECT coalesce(sum(bound), 0) AS total FROM bounds),"
        " kth_seen AS MATERIALIZED ("
        " SELECT coalesce((SELECT seen FROM cand ORDER BY seen DESC LIMIT 1 OFFSET %s), 0) AS lower),"
        " scored AS MATERIALIZED ("
        " SELECT r.id, {exact} AS score FROM cand, threshold, kth_seen, {t} AS r"
        " WHERE r.id = cand.id AND cand.seen + threshold.total - cand.seen_bound >= kth_seen.lower),"
        " kw AS ("
        " SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS rank FROM ("
        " SELECT id, score FROM scored ORDER BY score DESC, id LIMIT %s) AS s),"
        " kw_exact AS ("
        " SELECT threshold.total = 0 OR coalesce((SELECT score FROM scored ORDER BY score DESC LIMIT 1 OFFSET %s),"
        " -1) >= threshold.total AS ok FROM threshold)"
    ).format(
        p=sql.Identifier(postings_table(layout.table)),
        t=layout.ident,
        weight=weight,
        exact=exact_score,
        rounding=sql.Literal(_ROUNDING),
    )
    params: list[Any] = [
        postings_per_term,
        postings_per_term,
        avgdl,
        avgdl,
        k - 1,
        *exact_params,
        k,
        k - 1,
    ]
    return statement, params


def gin_leg(
    stats: text.TextStats,
    layout: Layout,
    query_text: str,
    where: sql.Composable,
    where_params: Sequence[Any],
    k: int,
) -> tuple[sql.Composed, list[Any]]:
    """The GIN path of text.py (filtered searches, stores whose postings are not ready): `terms`, `words`, `kw`
    and a `kw_exact` that is always true (it has no retry)."""
    terms, terms_params = text.terms_cte(stats, layout.language, query_text)
    leg, leg_params = text.keyword_leg(stats, layout.ident, where, where_params, k)
    statement = sql.SQL("{terms}, {leg}, kw_exact AS (SELECT true AS ok)").format(terms=terms, leg=leg)
    return statement, [*terms_params, *leg_params]


def postings_leg(
    stats: text.TextStats, layout: Layout, query_text: str, k: int, postings_per_term: int | None
) -> tuple[sql.Composed, list[Any]]:
    terms, terms_params = terms_cte(stats, layout, query_text)
    leg, leg_params = keyword_leg(stats, layout, k, postings_per_term)
    return sql.SQL("{terms}, {leg}").format(terms=terms, leg=leg), [*terms_params, *leg_params]
