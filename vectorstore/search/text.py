"""Keyword search: BM25 over each store's `fts` tsvector, in SQL, through its GIN index.

This is the GIN path: what filtered keyword legs and stores whose postings are not complete use. Unfiltered
searches compute the same BM25 (exact document frequencies, no candidate budget) in the server from packed
postings (vectorstore/search/postings.py).

PostgreSQL's own `ts_rank` has no inverse document frequency, and on the Cranfield collection it ranks well below
BM25 (nDCG@10 0.285 against 0.371, docs/benchmarks.md), so the score is BM25, computed in the statement:

    score(d) = sum over query terms t of  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

- `tf(t, d)`: the number of positions `t` has in `d`'s tsvector. Per candidate row the tsvector is cut down to
  the query's lexemes (`setweight` marks them, `ts_filter` keeps them) before it is unnested, so the work per
  row is a few entries, not the whole document.
- `|d|`: the number of distinct lexemes of `d` (`length(fts)`), and `avgdl` their mean over the store.
- `idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`, with N and each lexeme's document frequency from ANALYZE's
  statistics of `fts` (most common elements), copied into `text_stats` by vectorstore/search/statistics.py.
  A lexeme that is not among them is rarer than all of them: its frequency is taken as half the smallest
  listed one, as PostgreSQL's own planner does. Before a store's first ANALYZE every term weighs 1.
- Candidates are rows matching any query term (OR), found through the GIN index. Scoring is linear in them, so
  the terms that generate candidates are taken rarest first while their document frequencies add up to at most
  `CANDIDATE_BUDGET` rows (the rarest always); the commoner terms still count in every candidate's score. A
  query made only of common words thus scores a bounded number of rows instead of most of the table.
- Query text becomes lexemes through `to_tsvector` in the store's configuration, never through tsquery syntax,
  so operators and quotes in a query are just text. At most `MAX_TERMS` terms (the rarest) are used.

A keyword hit's score is its BM25 divided by the query's largest possible BM25 (every term with unbounded tf
in a document of length zero: sum of idf * (k1 + 1)), so it lies in 0..1 like a vector score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

K1 = 1.2
B = 0.75
MAX_TERMS = 64
CANDIDATE_BUDGET = 5000
"""Rows the rarest terms may bring in as candidates before commoner terms stop generating more."""


@dataclass(frozen=True)
class TextStats:
    """What BM25 needs to know of a store, from its last ANALYZE (all zero before the first one)."""

    store_id: str
    rows: float
    avg_length: float
    min_freq: float


def terms_cte(stats: TextStats, language: str, text: str) -> tuple[sql.Composed, list[Any]]:
    """`terms(word, df, idf)`: the query's lexemes, rarest first, and `words(all_words, query)`: the lexemes as an
    array and the OR tsquery of those that generate candidates (NULL when the query has no indexable term)."""
    statement = sql.SQL(
        "terms AS MATERIALIZED ("
        " SELECT l.lexeme AS word, d.df,"
        " CASE WHEN %s::float8 > 0 THEN ln(1 + (%s::float8 - d.df + 0.5) / (d.df + 0.5)) ELSE 1.0 END AS idf"
        " FROM unnest(to_tsvector(%s::regconfig, %s)) AS l"
        " LEFT JOIN text_stats AS s ON s.vector_store_id = %s AND s.lexeme = l.lexeme"
        " CROSS JOIN LATERAL (SELECT coalesce(s.freq, %s::float8 / 2) * %s::float8 AS df) AS d"
        " ORDER BY idf DESC, word LIMIT {max_terms}),"
        " words AS MATERIALIZED ("
        " SELECT (SELECT array_agg(word ORDER BY word) FROM terms) AS all_words,"
        " (SELECT array_agg(idf ORDER BY word) FROM terms) AS all_idfs,"
        # Each lexeme quoted for tsquery input: backslashes and quotes doubled inside single quotes.
        " string_agg('''' || replace(replace(word, '\\', '\\\\'), '''', '''''') || '''', ' | ')::tsquery AS query"
        " FROM (SELECT word, df, sum(df) OVER (ORDER BY df, word ROWS UNBOUNDED PRECEDING) - df AS before"
        # The rarest term always; then each next one while the candidates they may bring stay in budget.
        " FROM terms) AS c WHERE before = 0 OR before + df <= {budget})"
    ).format(max_terms=sql.Literal(MAX_TERMS), budget=sql.Literal(CANDIDATE_BUDGET))
    params: list[Any] = [
        stats.rows,
        stats.rows,
        language,
        text,
        stats.store_id,
        stats.min_freq,
        stats.rows,
    ]
    return statement, params


def bm25_expression(stats: TextStats, row: str) -> tuple[sql.Composed, list[Any]]:
    """The BM25 of the row aliased `row` against `terms` (see the module docstring)."""
    # Before the first ANALYZE there is no mean length: drop length normalization (b = 0) rather than guess.
    b = B if stats.avg_length > 0 else 0.0
    avgdl = stats.avg_length if stats.avg_length > 0 else 1.0
    # Each kept entry finds its idf by position in the (small, sorted) array of query lexemes: one unnest of a
    # few entries per row and no join. Measured on Cranfield (1,222 candidate rows): about 6 us a row, of which
    # setweight + ts_filter take 2 and the unnest 3; `ts_rank` with the whole OR query costs about 1.
    statement = sql.SQL(
        "(SELECT coalesce(sum(w.all_idfs[array_position(w.all_words, u.lexeme)] * u.tf * {k1p}"
        " / (u.tf + {k1} * (1 - %s::float8 + %s::float8 * length({row}.fts) / %s::float8))), 0)"
        " FROM words AS w, LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf"
        " FROM unnest(ts_filter(setweight({row}.fts, 'A', w.all_words), '{{a}}'))) AS u)"
    ).format(k1p=sql.Literal(K1 + 1), k1=sql.Literal(K1), row=sql.Identifier(row))
    return statement, [b, b, avgdl]


def max_score_expression() -> sql.Composed:
    """The query's largest possible BM25: every term at unbounded tf in an empty document."""
    return sql.SQL("(SELECT coalesce(sum(idf), 0) * {k1p} FROM terms)").format(k1p=sql.Literal(K1 + 1))


def keyword_leg(
    stats: TextStats, table: sql.Identifier, where: sql.Composable, where_params: Sequence[Any], depth: int
) -> tuple[sql.Composed, list[Any]]:
    """`kw(id, score, rank)`: the `depth` best BM25 rows that pass the filter (needs `terms` and `words`)."""
    score, score_params = bm25_expression(stats, "c")
    statement = sql.SQL(
        "kw AS ("
        " SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS rank FROM ("
        " SELECT c.id, {score} AS score FROM {t} AS c, words"
        " WHERE words.query IS NOT NULL AND c.fts @@ words.query AND {where}"
        " ORDER BY score DESC, c.id LIMIT %s) AS s)"
    ).format(score=score, t=table, where=where)
    return statement, [*score_params, *where_params, depth]
