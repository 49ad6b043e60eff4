"""Keyword search's BM25 top-k through impact-ordered postings: read a few hundred postings, not every match.

Each chunk table `<t>` has `<t>_postings (lexeme, impact, id, tf, dl)` (vectorstore/storage/tables.py, migration
0400), indexed by (lexeme, impact DESC) and by (lexeme, id), with the rest included. `impact` is the BM25 weight
tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / A_ref)) at the table's reference mean length A_ref; its order within
a lexeme is the order of the real BM25 term weight at the store's current mean length A when A = A_ref.

One statement finds the exact top k of BM25 (the same score as vectorstore/search/text.py) with MaxScore
(Turtle & Flood, 1995) over impact-ordered lists:

1. For each query term, its `per_term(k)` best postings by impact (one index range scan each).
2. Bounds per term: `maxscore`, the most it can add to any chunk (its best posting's weight), and `bound`, the
   most it can add to a chunk not among the postings read (the last one's weight; 0 when all were read). A
   weight grows with the store's mean length A by at most A / A_ref from the reference A_ref (for A <= A_ref
   it only shrinks), so both are multiplied by max(1, A / A_ref): they hold whatever the drift.
3. theta, a lower bound of the k-th best score: the exact BM25 (from `fts`) of the k chunks with the most
   weight seen in step 1.
4. The weakest terms whose maxscores add up to less than theta can't put a chunk in the top k by themselves;
   every other term is essential and read in full. Candidates are the chunks of the essential lists, with the
   exact essential part of their score.
5. A candidate's lower bound adds what step 1 saw of its other terms; its upper bound also adds the `bound` of
   the other terms it was not seen under. A second theta is the k-th best exact score of the k candidates with
   the best lower bounds; then every candidate whose upper bound reaches it is scored exactly: its essential
   part plus one probe of the (lexeme, id) index per other term.

Every bound holds, so no chunk that belongs in the top k is left out: there is no candidate budget and no
retry (tests/search/test_postings.py checks it against BM25 computed outside the database).

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
THETA_FACTOR = 1
"""Chunks (times k) scored exactly up front to find theta, the k-th best score's lower bound."""
NOT_READY_RECHECK_SECONDS = 10.0
# A stored impact is a float4: allow for its rounding when it bounds a weight computed in float8.
_ROUNDING = 1.000001

_ready: set[str] = set()
_not_ready_checked: dict[str, float] = {}


def per_term(k: int) -> int:
    return max(MIN_PER_TERM, 2 * k)


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
    stats: text.TextStats, layout: Layout, k: int, postings_per_term: int
) -> tuple[sql.Composed, list[Any]]:
    """`kw(id, score, rank)`: the k best rows by BM25 (needs `terms` and `words`)."""
    avgdl = stats.avg_length
    weight = sql.SQL("l.idf * l.tf * {k1p} / (l.tf + {k1} * (1 - {b} + {b} * l.dl / %s::float8))").format(
        k1p=sql.Literal(text.K1 + 1), k1=sql.Literal(text.K1), b=sql.Literal(text.B)
    )
    probe_weight = sql.SQL("o.idf * q.tf * {k1p} / (q.tf + {k1} * (1 - {b} + {b} * q.dl / %s::float8))").format(
        k1p=sql.Literal(text.K1 + 1), k1=sql.Literal(text.K1), b=sql.Literal(text.B)
    )
    exact_score, exact_params = text.bm25_expression(stats, "r")
    statement = sql.SQL(
        "ref AS MATERIALIZED (SELECT impact::float8 AS aref FROM {p} WHERE lexeme = '' AND id IS NULL),"
        # 1. Each term's best postings.
        " lists AS MATERIALIZED ("
        " SELECT t.word, t.idf, p.id, p.tf, p.dl, p.impact FROM terms AS t"
        " CROSS JOIN LATERAL (SELECT id, tf, dl, impact FROM {p} WHERE lexeme = t.word"
        " ORDER BY impact DESC LIMIT {per_term}) AS p),"
        # 2. What a term can add to any chunk at most: its best posting's weight (bounded for drift).
        # ... and what it can add to a chunk not among its best postings: the weight of the last one read (0 when
        # all were read).
        " maxima AS MATERIALIZED ("
        " SELECT t.word, coalesce(t.idf * max(l.impact) * greatest(1, %s::float8 / ref.aref) * {rounding}, 0)"
        " AS maxscore,"
        " CASE WHEN count(l.id) >= {per_term}"
        " THEN t.idf * min(l.impact) * greatest(1, %s::float8 / ref.aref) * {rounding} ELSE 0 END AS bound"
        " FROM terms AS t CROSS JOIN ref LEFT JOIN lists AS l ON l.word = t.word"
        " GROUP BY t.word, t.idf, ref.aref),"
        # 3. theta: a lower bound of the k-th best score: the k-th best exact score among the chunks with the
        # most weight seen in step 1.
        " theta AS MATERIALIZED ("
        " SELECT coalesce((SELECT {exact} AS score FROM ("
        " SELECT l.id FROM lists AS l GROUP BY l.id ORDER BY sum({weight}) DESC, l.id LIMIT {theta_k}) AS top"
        " JOIN {t} AS r ON r.id = top.id ORDER BY score DESC LIMIT 1 OFFSET {kth}), 0) AS lower),"
        # 4. MaxScore: the weakest terms whose maxima add up to less than theta can't put a chunk in the top
        # k by themselves; every other term is essential and read in full.
        " split AS MATERIALIZED ("
        " SELECT m.word, sum(m.maxscore) OVER (ORDER BY m.maxscore, m.word) >= theta.lower AS essential"
        " FROM maxima AS m, theta),"
        # A chunk's other terms add at most their bound, or what step 1 saw of them.
        " rest AS MATERIALIZED ("
        " SELECT coalesce(sum(m.bound), 0) AS total FROM maxima AS m JOIN split AS s USING (word)"
        " WHERE NOT s.essential),"
        " known AS MATERIALIZED ("
        " SELECT l.id, sum({weight}) AS seen, sum(m.bound) AS seen_bound"
        " FROM lists AS l JOIN split AS s USING (word) JOIN maxima AS m USING (word) WHERE NOT s.essential"
        " GROUP BY l.id),"
        " cand AS MATERIALIZED ("
        " SELECT l.id, sum({weight}) AS part FROM ("
        " SELECT t.word, t.idf, p.id, p.tf, p.dl FROM split AS s JOIN terms AS t USING (word)"
        " CROSS JOIN LATERAL (SELECT id, tf, dl FROM {p} WHERE lexeme = t.word) AS p WHERE s.essential) AS l"
        " GROUP BY l.id),"
        # 5. Each candidate's lower bound (its essential part plus what step 1 saw of its other terms) and upper
        # bound (plus the bound of the other terms it was not seen under).
        # (One aggregate rather than a join: the planner can't estimate these CTEs and would nest loops.)
        " bounded AS MATERIALIZED ("
        " SELECT u.id, sum(u.part) AS part, sum(u.part) + sum(u.seen) AS lower,"
        " sum(u.part) + rest.total - sum(u.seen_bound) + sum(u.seen) AS upper FROM ("
        " SELECT id, part, 0::float8 AS seen, 0::float8 AS seen_bound, true AS essential FROM cand"
        " UNION ALL SELECT id, 0, seen, seen_bound, false FROM known) AS u CROSS JOIN rest"
        " GROUP BY u.id, rest.total HAVING bool_or(u.essential)),"
        # A candidate's exact score: its essential part plus its other terms' weights, each one probe of the
        # (lexeme, id) index.
        " others AS MATERIALIZED ("
        " SELECT t.word, t.idf FROM split AS s JOIN terms AS t USING (word) WHERE NOT s.essential),"
        # 6. A better theta: the exact scores of the k candidates with the best lower bounds.
        " first AS MATERIALIZED ("
        " SELECT top.id, top.part + coalesce((SELECT sum({probe_weight}) FROM others AS o"
        " JOIN {p} AS q ON q.lexeme = o.word AND q.id = top.id), 0) AS score"
        " FROM (SELECT id, part FROM bounded ORDER BY lower DESC, id LIMIT {k}) AS top),"
        " theta2 AS MATERIALIZED ("
        " SELECT greatest(theta.lower,"
        " coalesce((SELECT score FROM first ORDER BY score DESC LIMIT 1 OFFSET {kth}), 0)) AS lower FROM theta),"
        # 7. Exact BM25 of every other candidate whose upper bound reaches it.
        " scored AS MATERIALIZED ("
        " SELECT id, score FROM first UNION ALL"
        " SELECT b.id, b.part + coalesce((SELECT sum({probe_weight}) FROM others AS o"
        " JOIN {p} AS q ON q.lexeme = o.word AND q.id = b.id), 0)"
        " FROM bounded AS b CROSS JOIN theta2"
        " WHERE b.upper >= theta2.lower AND b.id NOT IN (SELECT id FROM first)),"
        " kw AS ("
        " SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS rank FROM ("
        " SELECT id, score FROM scored ORDER BY score DESC, id LIMIT {k}) AS s)"
    ).format(
        p=sql.Identifier(postings_table(layout.table)),
        t=layout.ident,
        weight=weight,
        probe_weight=probe_weight,
        exact=exact_score,
        rounding=sql.Literal(_ROUNDING),
        # Row counts as literals, not parameters: see vector.nearest.
        per_term=sql.Literal(postings_per_term),
        theta_k=sql.Literal(THETA_FACTOR * k),
        kth=sql.Literal(k - 1),
        k=sql.Literal(k),
    )
    # In placeholder order: maxima (2), theta (the exact score's, then one weight), known, cand, first, scored.
    params: list[Any] = [avgdl, avgdl, *exact_params, avgdl, avgdl, avgdl, avgdl, avgdl]
    return statement, params


def gin_leg(
    stats: text.TextStats,
    layout: Layout,
    query_text: str,
    where: sql.Composable,
    where_params: Sequence[Any],
    k: int,
) -> tuple[sql.Composed, list[Any]]:
    """The GIN path of text.py (filtered searches, stores whose postings are not ready): `terms`, `words`, `kw`."""
    terms, terms_params = text.terms_cte(stats, layout.language, query_text)
    leg, leg_params = text.keyword_leg(stats, layout.ident, where, where_params, k)
    statement = sql.SQL("{terms}, {leg}").format(terms=terms, leg=leg)
    return statement, [*terms_params, *leg_params]


def postings_leg(
    stats: text.TextStats, layout: Layout, query_text: str, k: int, postings_per_term: int
) -> tuple[sql.Composed, list[Any]]:
    terms, terms_params = terms_cte(stats, layout, query_text)
    leg, leg_params = keyword_leg(stats, layout, k, postings_per_term)
    return sql.SQL("{terms}, {leg}").format(terms=terms, leg=leg), [*terms_params, *leg_params]
