"""Keyword search's BM25 top-k through impact-ordered postings: read a few hundred postings, not every match.

Each chunk table `<t>` has `<t>_impacts (lexeme, impact, id)` (vectorstore/storage/tables.py, migration 0410):
one row per (lexeme, chunk), `lexeme` the lexeme's 64-bit hash, and ONE b-tree on (lexeme, impact DESC, id).
`impact` is the BM25 term weight tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / A_ref)) at the table's reference
mean length A_ref; at the store's current mean length A a weight is at most max(1, A / A_ref) and at least
min(1, A / A_ref) times its impact, so bounds hold whatever the drift.

One statement finds the exact top k of BM25 (the same score as vectorstore/search/text.py) in two tries:

1. A threshold test over impact-ordered lists (Fagin's, or Anh & Moffat's score-at-a-time with an exact
   finish):
   a. each query term's `per_term(k)` best postings by impact (one index range scan each);
   b. each term's `bound`: the most it can add to a chunk not among its postings read, the weight of the
      last one read (0 when its whole list was read); their sum bounds the score of any chunk not seen;
   c. each chunk seen gets a lower bound (its weights seen) and an upper bound (plus the bound of each term
      it was not seen under);
   d. theta: the k-th best exact BM25 (computed from the chunk's `fts`) among the k chunks with the best
      lower bounds;
   e. certified when no unseen chunk can reach theta (or every list was read whole): the top k is then among
      the chunks seen whose upper bound reaches theta. The k best upper bounds are scored exactly first,
      which raises theta, then every other one still reaching it.
2. Otherwise (a gate PostgreSQL evaluates once, skipping the plan below it when false) MaxScore (Turtle &
   Flood, 1995) with that theta: the weakest terms whose maxima add up to less than theta can't put a chunk
   in the top k by themselves; every other term is essential and its list read whole. Candidates are the
   chunks of the essential lists, bounded with what step 1 saw of their other terms, and scored as in 1e.

Every bound holds, so no chunk that belongs in the top k is left out: there is no candidate budget
(tests/search/test_postings.py checks it against BM25 computed outside the database, with step 1 forced to
fail). bench/keyword_search.py reports how often step 1 certified, the postings it read, MaxScore's
candidates and the chunks scored exactly. The cost is not bounded as a store grows: with short chunks most
postings have tf = 1, a list's impacts are nearly flat, its bound drops slowly, and MaxScore's essential lists
grow with the store (docs/benchmarks.md).

Document frequencies: from ANALYZE's most common elements (text_stats) for common lexemes, as before, and
counted in the postings (an index-only count of a short list) for the rest, which makes idf exact for rare
terms instead of the planner's guess.

Filtered keyword legs keep the GIN path (text.py): a filter can reject the best postings of every term, and
the GIN path with the filter in the same scan is what keeps "`limit` rows whenever that many match".
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

MIN_PER_TERM = 200
"""Postings read per query term on the first try, at least; more when the page is deep (see `per_term`)."""
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
    probe = sql.SQL("SELECT 1 FROM {p} WHERE lexeme = 0 AND id = ''").format(p=sql.Identifier(postings_table(table)))
    try:
        # In its own transaction, so a missing table leaves the caller's connection usable and idle.
        async with conn.transaction():
            cur = await conn.execute(probe)
            row = await cur.fetchone()
    except pg_errors.UndefinedTable:
        row = None
    ready = row is not None
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
        " SELECT l.lexeme AS word, vectorstore_lexeme_key(l.lexeme) AS key, d.df,"
        " CASE WHEN %s::float8 > 0 THEN ln(1 + greatest(%s::float8 - d.df + 0.5, 0) / (d.df + 0.5)) ELSE 1.0 END"
        " AS idf"
        " FROM unnest(to_tsvector(%s::regconfig, %s)) AS l"
        # One index probe of text_stats per query lexeme (a join would read the store's 3,000 rows), and
        # COALESCE evaluates the count only for a lexeme ANALYZE did not list, i.e. a rare one.
        " CROSS JOIN LATERAL (SELECT coalesce("
        " (SELECT s.freq * %s::float8 FROM text_stats AS s WHERE s.vector_store_id = %s AND s.lexeme = l.lexeme),"
        " (SELECT count(*) FROM {p} AS p WHERE p.lexeme = vectorstore_lexeme_key(l.lexeme)))::float8 AS df) AS d"
        " ORDER BY idf DESC, word LIMIT {max_terms}),"
        " words AS MATERIALIZED ("
        " SELECT array_agg(word ORDER BY word) AS all_words, array_agg(idf ORDER BY word) AS all_idfs FROM terms)"
    ).format(p=sql.Identifier(postings_table(layout.table)), max_terms=sql.Literal(text.MAX_TERMS))
    params: list[Any] = [stats.rows, stats.rows, layout.language, query_text, stats.rows, stats.store_id]
    return statement, params


def _level(
    n: int,
    layout: Layout,
    exact: sql.Composable,
    k: int,
    limit: int | None,
    gate: sql.Composable,
) -> sql.Composed:
    """The CTEs of the threshold try at depth `limit` postings per term (None: whole lists), named `<cte>_<n>`,
    evaluated only when `gate` holds (an uncorrelated condition: PostgreSQL skips the plan below it otherwise)."""
    per_term = sql.SQL("") if limit is None else sql.SQL(" LIMIT {}").format(sql.Literal(limit))
    full = sql.SQL("false") if limit is None else sql.SQL("count(l.id) >= {}").format(sql.Literal(limit))
    return sql.SQL(
        # 1. Each term's best postings (one range scan of the index each).
        " lists_{n} AS MATERIALIZED ("
        # The chunk table's collation for ids (see migration 0410), so joins with it can use its primary key.
        ' SELECT t.word, t.idf, p.id COLLATE "default" AS id, p.impact FROM terms AS t'
        " CROSS JOIN LATERAL (SELECT id, impact FROM {p} WHERE lexeme = t.key ORDER BY impact DESC{per_term}) AS p"
        " WHERE {gate}),"
        # 2. What a term can add to a chunk not among the postings read of it: the weight of the last one read
        # (0 when its whole list was read), allowing for the drift of the mean length.
        " maxima_{n} AS MATERIALIZED ("
        " SELECT t.word, CASE WHEN {full} THEN t.idf * min(l.impact) * f.up ELSE 0 END AS bound,"
        " coalesce(t.idf * max(l.impact) * f.up, 0) AS maxscore"
        " FROM terms AS t CROSS JOIN factors AS f LEFT JOIN lists_{n} AS l ON l.word = t.word"
        " GROUP BY t.word, t.idf, f.up),"
        " unseen_{n} AS MATERIALIZED (SELECT coalesce(sum(bound), 0) AS total FROM maxima_{n}),"
        # 3. Each chunk seen: a lower bound (what was seen of it) and an upper bound (plus the bound of every
        # term it was not seen under).
        " seen_{n} AS MATERIALIZED ("
        " SELECT s.id, sum(s.w) * f.lo AS lower, sum(s.w) * f.up + u.total - sum(s.bound) AS upper FROM ("
        " SELECT l.id, l.word, max(l.idf * l.impact) AS w, max(m.bound) AS bound"
        " FROM lists_{n} AS l JOIN maxima_{n} AS m USING (word) GROUP BY l.id, l.word) AS s"
        " CROSS JOIN factors AS f CROSS JOIN unseen_{n} AS u GROUP BY s.id, f.lo, f.up, u.total),"
        # 4. theta: the k-th best exact score (from fts) among the k chunks with the best lower bounds.
        " top_{n} AS MATERIALIZED ("
        " SELECT s.id, {exact} AS score FROM (SELECT id FROM seen_{n} ORDER BY lower DESC, id LIMIT {k}) AS s"
        " JOIN {t} AS r ON r.id = s.id),"
        " theta_{n} AS MATERIALIZED ("
        " SELECT coalesce((SELECT score FROM top_{n} ORDER BY score DESC LIMIT 1 OFFSET {kth}), 0) AS lower),"
        # 5. Done when no chunk left unseen can reach theta (or every list was read whole).
        " cert_{n} AS MATERIALIZED ("
        " SELECT (u.total = 0 OR u.total < th.lower) AS ok FROM unseen_{n} AS u, theta_{n} AS th),"
        # 6. Exact scores of the k chunks with the best upper bounds (a higher theta), then of every other chunk
        # seen whose upper bound reaches it.
        " best_{n} AS MATERIALIZED ("
        " SELECT s.id, {exact} AS score FROM (SELECT id FROM seen_{n} AS s, theta_{n} AS th"
        " WHERE s.upper >= th.lower AND s.id NOT IN (SELECT id FROM top_{n}) AND (SELECT ok FROM cert_{n})"
        " ORDER BY s.upper DESC, s.id LIMIT {k}) AS s JOIN {t} AS r ON r.id = s.id),"
        " sure_{n} AS MATERIALIZED ("
        " SELECT greatest(th.lower, coalesce((SELECT score FROM (SELECT score FROM top_{n} UNION ALL"
        " SELECT score FROM best_{n}) AS b ORDER BY score DESC LIMIT 1 OFFSET {kth}), 0)) AS lower"
        " FROM theta_{n} AS th),"
        " scored_{n} AS MATERIALIZED ("
        " SELECT id, score FROM top_{n} UNION ALL SELECT id, score FROM best_{n} UNION ALL"
        " SELECT s.id, {exact} FROM seen_{n} AS s JOIN {t} AS r ON r.id = s.id CROSS JOIN sure_{n} AS th"
        " WHERE s.upper >= th.lower AND s.id NOT IN (SELECT id FROM top_{n} UNION ALL SELECT id FROM best_{n})"
        " AND (SELECT ok FROM cert_{n})),"
    ).format(
        n=sql.SQL(str(n)),
        p=sql.Identifier(postings_table(layout.table)),
        t=layout.ident,
        per_term=per_term,
        full=full,
        gate=gate,
        exact=exact,
        k=sql.Literal(k),
        kth=sql.Literal(k - 1),
    )


def _maxscore(layout: Layout, exact: sql.Composable, k: int) -> sql.Composed:
    """The second try, when the first (`*_1`) was not certified: MaxScore (Turtle & Flood, 1995) with the first
    try's theta. The weakest terms whose most possible weights add up to less than theta can't bring a chunk
    into the top k by themselves; every other term is essential and its list read whole. Candidates are the
    chunks of the essential lists; their other terms add what the first try saw of them, or at most that
    term's bound. Exact, whatever the store's size; the whole essential lists are what it costs."""
    return sql.SQL(
        " split_2 AS MATERIALIZED ("
        " SELECT m.word, sum(m.maxscore) OVER (ORDER BY m.maxscore, m.word) >= th.lower AS essential"
        " FROM maxima_1 AS m, theta_1 AS th),"
        " rest_2 AS MATERIALIZED ("
        " SELECT coalesce(sum(m.bound), 0) AS total FROM maxima_1 AS m JOIN split_2 AS s USING (word)"
        " WHERE NOT s.essential),"
        # What the first try saw of each chunk's other terms.
        " known_2 AS MATERIALIZED ("
        " SELECT w.id, sum(w.w) AS seen, sum(w.bound) AS seen_bound FROM ("
        " SELECT l.id, l.word, max(l.idf * l.impact) AS w, max(m.bound) AS bound"
        " FROM lists_1 AS l JOIN split_2 AS s USING (word) JOIN maxima_1 AS m USING (word)"
        " WHERE NOT s.essential GROUP BY l.id, l.word) AS w GROUP BY w.id),"
        " cand_2 AS MATERIALIZED ("
        " SELECT c.id, sum(c.w) AS part FROM ("
        ' SELECT p.id COLLATE "default" AS id, t.word, max(t.idf * p.impact) AS w'
        " FROM split_2 AS s JOIN terms AS t USING (word)"
        " CROSS JOIN LATERAL (SELECT id, impact FROM {p} WHERE lexeme = t.key) AS p"
        " WHERE s.essential AND NOT (SELECT ok FROM cert_1) GROUP BY 1, 2) AS c GROUP BY c.id),"
        " bounded_2 AS MATERIALIZED ("
        " SELECT c.id, (c.part + coalesce(k.seen, 0)) * f.lo AS lower,"
        " (c.part + coalesce(k.seen, 0)) * f.up + r.total - coalesce(k.seen_bound, 0) AS upper"
        " FROM cand_2 AS c LEFT JOIN known_2 AS k ON k.id = c.id CROSS JOIN factors AS f CROSS JOIN rest_2 AS r),"
        " top_2 AS MATERIALIZED ("
        " SELECT s.id, {exact} AS score FROM (SELECT id FROM bounded_2 ORDER BY lower DESC, id LIMIT {k}) AS s"
        " JOIN {t} AS r ON r.id = s.id),"
        " theta_2 AS MATERIALIZED ("
        " SELECT greatest(th.lower, coalesce((SELECT score FROM top_2 ORDER BY score DESC LIMIT 1 OFFSET {kth}), 0))"
        " AS lower FROM theta_1 AS th),"
        # The k candidates with the best upper bounds next, for a higher theta; then every other one reaching it.
        " best_2 AS MATERIALIZED ("
        " SELECT s.id, {exact} AS score FROM (SELECT b.id FROM bounded_2 AS b, theta_2 AS th"
        " WHERE b.upper >= th.lower AND b.id NOT IN (SELECT id FROM top_2)"
        " ORDER BY b.upper DESC, b.id LIMIT {k}) AS s JOIN {t} AS r ON r.id = s.id),"
        " sure_2 AS MATERIALIZED ("
        " SELECT greatest(th.lower, coalesce((SELECT score FROM (SELECT score FROM top_2 UNION ALL"
        " SELECT score FROM best_2) AS b ORDER BY score DESC LIMIT 1 OFFSET {kth}), 0)) AS lower"
        " FROM theta_2 AS th),"
        " scored_2 AS MATERIALIZED ("
        " SELECT id, score FROM top_2 UNION ALL SELECT id, score FROM best_2 UNION ALL"
        " SELECT b.id, {exact} FROM bounded_2 AS b JOIN {t} AS r ON r.id = b.id CROSS JOIN sure_2 AS th"
        " WHERE b.upper >= th.lower AND b.id NOT IN (SELECT id FROM top_2 UNION ALL SELECT id FROM best_2)),"
    ).format(
        p=sql.Identifier(postings_table(layout.table)),
        t=layout.ident,
        exact=exact,
        k=sql.Literal(k),
        kth=sql.Literal(k - 1),
    )


def keyword_leg(
    stats: text.TextStats, layout: Layout, k: int, postings_per_term: int
) -> tuple[sql.Composed, list[Any]]:
    """`kw(id, score, rank)`: the k best rows by BM25 (needs `terms` and `words`)."""
    avgdl = stats.avg_length
    exact, exact_params = text.bm25_expression(stats, "r")
    levels = [_level(1, layout, exact, k, postings_per_term, sql.SQL("true")), _maxscore(layout, exact, k)]
    statement = sql.SQL(
        "ref AS MATERIALIZED (SELECT impact::float8 AS aref FROM {p} WHERE lexeme = 0 AND id IS NULL),"
        # A weight at the store's mean length A is at most max(1, A / A_ref) and at least min(1, A / A_ref)
        # times its impact at the reference A_ref (the impacts are float4: allow for their rounding).
        " factors AS MATERIALIZED ("
        " SELECT greatest(1, %s::float8 / aref) * {rounding} AS up, least(1, %s::float8 / aref) / {rounding} AS lo"
        " FROM ref),"
        "{levels}"
        " kw AS ("
        " SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS rank FROM ("
        " SELECT id, score FROM ("
        " SELECT id, score FROM scored_1 WHERE (SELECT ok FROM cert_1)"
        " UNION ALL SELECT id, score FROM scored_2 WHERE NOT (SELECT ok FROM cert_1)) AS a"
        " ORDER BY score DESC, id LIMIT {k}) AS s)"
    ).format(
        p=sql.Identifier(postings_table(layout.table)),
        rounding=sql.Literal(_ROUNDING),
        levels=sql.SQL("").join(levels),
        k=sql.Literal(k),
    )
    params: list[Any] = [avgdl, avgdl, *(exact_params * 6)]
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
