"""Keyword search's exact BM25 top k from packed postings (migration 0420), scored in the server.

Each chunk table `<t>` has `<t>_blocks (lexeme, seg, n, postings)` (vectorstore/storage/tables.py): for each
lexeme a few rows, each a run of 8-byte postings `ord << 32 | tf << 16 | dl`. A search is two statements:

1. `fetch_statement`: the query's lexemes (`to_tsvector` in the store's configuration, at most
   text.MAX_TERMS, the rarest), every row of theirs, and the ords deleted since the last compaction
   (`<t>_gone`). PostgreSQL only reads: an index probe a row and uncompressed TOAST (STORAGE EXTERNAL).
2. `score` (here, numpy): each term's postings minus the deleted ones give its exact document frequency and,
   with the store's live row count and mean length (`<t>_totals`), each chunk's BM25, the same formula as
   text.bm25_expression; the k best ords (with every tie at the k-th score) go back to PostgreSQL as arrays,
   where `keyword_ctes` finds their rows through the unique index on `ord` and orders them by score, then id,
   as the GIN path does.

A store's common words have long lists that nearly every query reads: the process keeps those rows decoded
(search/postings_cache.py), tells the fetch which ones it holds, and the fetch returns them without their
postings. The result is the same either way; only where the postings come from changes.

Why not SQL: scoring costs SQL about a microsecond a posting and numpy about a nanosecond, so reading every
posting of every query term and summing them all is exact and cheaper than any threshold algorithm in SQL was
(0400 and 0410 read a few hundred postings a term but paid microseconds for each, and several milliseconds for
each query's bookkeeping: docs/benchmarks.md). The cost grows with the query terms' document frequencies: about
8 bytes read and a few nanoseconds a posting.

Filtered keyword legs keep the GIN path (text.py): a filter is evaluated on the row, and the GIN path with the
filter in the same scan is what keeps "`limit` rows whenever that many match". So do stores whose postings are
not complete yet (an old store being upgraded, search/postings_upgrade.py). The row count and mean length are
exact too: `<t>_totals` holds each writing statement's chunk count and summed lengths (deletes subtract), so
unlike the GIN path the ranking doesn't wait for an ANALYZE.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from vectorstore.observability import metrics
from vectorstore.search import postings_cache, text
from vectorstore.storage.database import autocommit
from vectorstore.storage.tables import Layout, blocks_table, gone_table, totals_table

NOT_READY_RECHECK_SECONDS = 10.0
MAX_TIES = 1000
"""Chunks tied with the k-th score sent back beyond k: ties are ordered by id in SQL, as on the GIN path."""

_POSTING = np.dtype(">u8")
_FIELDS = np.dtype([("ord", ">u4"), ("tf", ">u2"), ("dl", ">u2")])
"""A posting's 8 bytes as migration 0420 packs them (ord << 32 | tf << 16 | dl, big-endian)."""
_ready: set[str] = set()
_not_ready_checked: dict[str, float] = {}


async def is_ready(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    """Whether `table` has postings for every chunk (remembered once true; a `False` is re-read at most every
    NOT_READY_RECHECK_SECONDS, so a store being upgraded costs one small query now and then)."""
    if table in _ready:
        return True
    checked = _not_ready_checked.get(table)
    if checked is not None and time.monotonic() - checked < NOT_READY_RECHECK_SECONDS:
        return False
    probe = sql.SQL("SELECT 1 FROM {b} WHERE lexeme = '' AND seg = 0").format(b=sql.Identifier(blocks_table(table)))
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


def usable(where: sql.Composable, no_filter: sql.Composable) -> bool:
    """The postings path serves searches without a filter (a filter is evaluated on the row: the GIN path)."""
    return where is no_filter


@functools.lru_cache(maxsize=256)
def fetch_statement(layout: Layout) -> sql.Composed:
    """Rows `(lexeme, postings, extra, kind, seg, xmin, key, n)`: (kind 0) every block row of the query's lexemes (at
    most MAX_TERMS, the rarest), a lexeme with none as one row with NULL postings; then in `extra` (kind 1) the
    packed ords deleted since the last compaction and (kind 2) the store's live chunk count and summed lengths
    (two int8s). A row of at least the given number of postings has a `key` (NULL for smaller ones, and for all
    when that number is NULL), and its postings are NULL when the key is among those the caller holds decoded
    (postings_cache.py). Parameters: the configuration, the query text, the held keys (an int8[] literal, `{}`
    for none), the size of the rows worth a key (NULL: none is)."""
    return sql.SQL(
        "WITH q AS MATERIALIZED ("
        ' SELECT l.lexeme, (SELECT coalesce(sum(b.n), 0) FROM {b} AS b WHERE b.lexeme = l.lexeme COLLATE "C") AS n'
        " FROM unnest(to_tsvector(%s::regconfig, %s)) AS l),"
        " chosen AS MATERIALIZED (SELECT lexeme FROM q ORDER BY n, lexeme LIMIT {max_terms})"
        # A held row's postings are never read: the CASE doesn't fetch the TOASTed value when it is NULL.
        " SELECT c.lexeme, CASE WHEN b.key = ANY(%s::int8[]) THEN NULL ELSE b.postings END AS postings,"
        " NULL::bytea AS extra, 0 AS kind, b.seg, b.row_xmin, b.key, b.n FROM chosen AS c"
        # LATERAL: one index probe a lexeme, whatever the planner believes of the table's size.
        " LEFT JOIN LATERAL (SELECT postings, seg, n, xmin::text::int8 AS row_xmin, CASE WHEN n >= %s::int"
        " THEN hashtextextended(lexeme || ':' || seg || ':' || xmin::text || ':' || ctid::text, 0) END AS key"
        ' FROM {b} WHERE lexeme = c.lexeme COLLATE "C") AS b ON true'
        " UNION ALL SELECT NULL, NULL, (SELECT string_agg(int8send(ord), ''::bytea) FROM {g}), 1,"
        " NULL, NULL, NULL, NULL"
        # The store's live chunks and their summed lengths, packed as two int8s after the gone ords' row.
        " UNION ALL SELECT NULL, NULL, (SELECT int8send(coalesce(sum(chunks), 0)::bigint)"
        " || int8send(coalesce(sum(lengths), 0)::bigint) FROM {s}), 2, NULL, NULL, NULL, NULL"
    ).format(
        b=sql.Identifier(blocks_table(layout.table)),
        g=sql.Identifier(gone_table(layout.table)),
        s=sql.Identifier(totals_table(layout.table)),
        max_terms=sql.Literal(text.MAX_TERMS),
    )


class HeldRowChanged(Exception):
    """The fetch left out a row's postings for a key the search's cache holds under another identity (a hash
    collision): the search reads its rows again without the cache."""


@dataclass(frozen=True)
class Scored:
    """The keyword leg computed in the server: the query's terms and the k best chunks by BM25."""

    words: list[str]
    idfs: list[float]
    ords: list[int]
    scores: list[float]


def idf(rows: float, df: int) -> float:
    return math.log(1 + max(rows - df + 0.5, 0.0) / (df + 0.5))


def decode(lexeme: str, seg: int, xmin: int, packed: bytes) -> postings_cache.DecodedRow:
    """A block row's packed postings, decoded (kept by the cache when the row is large)."""
    fields = np.frombuffer(packed, dtype=_FIELDS)
    return postings_cache.DecodedRow(lexeme, seg, xmin, fields["ord"], fields["tf"], fields["dl"])


def score(
    rows: Sequence[Any],
    stats: text.TextStats,
    k: int,
    held: Mapping[int, postings_cache.DecodedRow] | None = None,
    keep: Callable[[int, postings_cache.DecodedRow], None] | None = None,
) -> Scored:
    """BM25 of every chunk holding a query term, from the rows of `fetch_statement`; the k best (and ties).
    `held`: the decoded rows the fetch was told to leave out, by key; `keep(key, row)` is given each row read
    that has a key (one worth caching).

    Each term's rows read are decoded together, as small arrays are cheapest in few numpy calls; the rows kept
    decoded (postings_cache.DecodedRow) add the weights they keep for the store's statistics. A search that
    holds no rows sums everything it read in one bincount."""
    packed_runs: dict[str, list[bytes]] = {}
    decoded_runs: dict[str, list[postings_cache.DecodedRow]] = {}
    gone = np.empty(0, dtype=np.int64)
    live: tuple[int, int] = (0, 0)
    for row in rows:
        lexeme, packed, extra, kind = row[:4]
        if kind == 2:
            live = (int.from_bytes(extra[:8], "big", signed=True), int.from_bytes(extra[8:], "big", signed=True))
            continue
        if kind == 1:
            if extra:
                gone = np.unique(np.frombuffer(extra, dtype=_POSTING).astype(np.int64))
            continue
        packed_runs.setdefault(lexeme, [])
        key = row[6] if len(row) > 6 else None
        if key is None:
            if packed:
                packed_runs[lexeme].append(packed)
            continue
        if packed is None:
            decoded = (held or {}).get(key)
            if decoded is None or not decoded.is_row(lexeme, row[4], row[5], row[7]):
                raise HeldRowChanged(lexeme)
        else:
            decoded = decode(lexeme, row[4], row[5], packed)
            if keep is not None:
                keep(key, decoded)
        decoded_runs.setdefault(lexeme, []).append(decoded)
    words = sorted(packed_runs)
    idfs: list[float] = []
    # Each term's postings read (ords, weights) and its held rows, in word order: every chunk's score is then
    # summed in the same order wherever its postings came from, so equal scores stay equal (ties are ordered
    # by id in SQL) and a search gives the same floats through the cache as without it.
    parts: list[tuple[Any, Any] | tuple[postings_cache.DecodedRow, float]] = []
    # Exact N and mean length from the totals the triggers keep; ANALYZE's (`stats`) only if they are empty.
    n_rows, avgdl = (float(live[0]), live[1] / live[0]) if live[0] > 0 else (stats.rows, stats.avg_length)
    avgdl = avgdl if avgdl > 0 else 1.0  # every chunk empty of lexemes: dl is 0 for all, the ratio moot
    # Every term's postings read are decoded, filtered and weighed together, in word order: a few numpy calls a
    # search instead of a few a term, whose fixed cost outweighed the arithmetic on lists this short.
    ords_read, tf_read, dl_read, read_sizes = _read_postings([packed_runs[word] for word in words])
    if gone.size and ords_read.size:
        alive = ~np.isin(ords_read, gone)
        ends = np.cumsum(read_sizes)
        alive_before = np.concatenate(([0], np.cumsum(alive)))
        read_sizes = alive_before[ends] - alive_before[ends - read_sizes]
        ords_read, tf_read, dl_read = ords_read[alive], tf_read[alive], dl_read[alive]
    held_by_word = [[row for row in decoded_runs.get(word, ()) if row.postings] for word in words]
    for size, held_rows in zip(read_sizes.tolist(), held_by_word, strict=True):
        idfs.append(idf(n_rows, size + sum(row.postings - row.count_among(gone) for row in held_rows)))
    # Each posting's term idf: the same float64 products as a term's scalar, so the same weights to the bit.
    weights_read = postings_cache.bm25_weights(tf_read, dl_read, np.repeat(idfs, read_sizes), avgdl)
    postings_count, top = int(ords_read.size), int(ords_read.max()) if ords_read.size else 0
    start = 0
    for size, held_rows, term_idf in zip(read_sizes.tolist(), held_by_word, idfs, strict=True):
        if size:
            parts.append((ords_read[start : start + size], weights_read[start : start + size]))
            start += size
        for row in held_rows:
            parts.append((row, term_idf))
            postings_count, top = postings_count + row.postings, max(top, row.hi)
    if not parts:
        return Scored(words, idfs, [], [])
    # Every weight is positive unless a term's idf is 0 (it is in every chunk): then matches are counted apart.
    zero_weight = any(term_idf <= 0 for term_idf in idfs)
    held_any = any(isinstance(part[0], postings_cache.DecodedRow) for part in parts)
    if top < 8 * postings_count + 65536:
        # Dense: one slot per ord up to the largest (cheap while ords are not much sparser than the postings). A
        # held row kept dense adds its weights in one pass.
        gone_here = gone[gone <= top]
        if held_any:
            with _zeroed(top + 1) as sums:
                for part in parts:
                    if isinstance(part[0], postings_cache.DecodedRow):
                        part[0].add_to(sums, part[1], avgdl)
                    else:
                        sums[part[0]] += part[1]  # a chunk has one posting a term: no index repeats
                sums[gone_here] = 0.0  # held rows keep the deleted chunks' postings until compaction
                candidates, totals = _matches(sums, parts, k, gone_here, zero_weight)
        else:
            # Only rows read: one pass over them all, still in word order (bincount adds in array order).
            sums = np.bincount(ords_read, weights=weights_read, minlength=top + 1).astype(np.float64, copy=False)
            candidates, totals = _matches(sums, parts, k, gone_here, zero_weight)
    else:
        pairs = [
            part[0].pairs(part[1], avgdl) if isinstance(part[0], postings_cache.DecodedRow) else part for part in parts
        ]
        candidates, inverse = np.unique(np.concatenate([pair[0] for pair in pairs]), return_inverse=True)
        weights = np.concatenate([pair[1] for pair in pairs])
        totals = np.bincount(inverse, weights=weights).astype(np.float64, copy=False)
        if gone.size and held_any:
            alive = ~np.isin(candidates, gone)
            candidates, totals = candidates[alive], totals[alive]
    if candidates.size > k:
        kth = np.partition(totals, candidates.size - k)[candidates.size - k]
        chosen = np.flatnonzero(totals >= kth)
        if chosen.size > k + MAX_TIES:
            chosen = chosen[np.argsort(-totals[chosen], kind="stable")[: k + MAX_TIES]]
        candidates, totals = candidates[chosen], totals[chosen]
    return Scored(words, idfs, [int(o) for o in candidates], [float(s) for s in totals])


def _matches(sums: Any, parts: Sequence[Any], k: int, gone: Any, zero_weight: bool) -> tuple[Any, Any]:
    """The chunks of `sums` (the deleted ones at 0) that can be among the k best, and their scores, copied out of
    `sums`. With a term of idf 0, every chunk holding a query term matches, whatever its score."""
    if zero_weight:
        matched = np.zeros(sums.size, dtype=np.bool_)
        for part in parts:
            if isinstance(part[0], postings_cache.DecodedRow):
                part[0].mark(matched)
            else:
                matched[part[0]] = True
        matched[gone] = False
        candidates = np.flatnonzero(matched)
    else:
        bound = _lower_bound_of_kth(sums, k)
        candidates = np.flatnonzero(sums >= bound if bound > 0 else sums > 0)
    return candidates, sums[candidates]


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.sums = np.zeros(0, dtype=np.float64)


_scratch = _Scratch()
SCRATCH_SLOTS = 1 << 23
"""Up to this many ords (64 MB of sums), a thread keeps its sums array between searches."""


@contextlib.contextmanager
def _zeroed(size: int) -> Iterator[npt.NDArray[np.float64]]:
    """`size` float64 zeros for a search's sums: the thread's own array, kept between searches and zeroed again
    after each, however the search ends. A fresh array cost up to 3 ms a search at 501,115 chunks (4 MB), in page
    faults, whenever the allocator had handed the last one back to the system; zeroing the kept one costs about
    0.2 ms."""
    if size > SCRATCH_SLOTS:
        yield np.zeros(size, dtype=np.float64)
        return
    if _scratch.sums.size < size:
        _scratch.sums = np.zeros(size, dtype=np.float64)
    sums = _scratch.sums[:size]
    try:
        yield sums
    finally:
        sums.fill(0.0)


def _read_postings(runs: Sequence[list[bytes]]) -> tuple[Any, Any, Any, npt.NDArray[np.int64]]:
    """Each term's postings from the rows read as bytes (`runs`, a list of rows a term), decoded in one pass:
    `(ords, tf, dl)` of every term, one after the other, and how many postings each term has."""
    sizes = np.array([sum(len(row) for row in rows) // _POSTING.itemsize for rows in runs], dtype=np.int64)
    fields = np.frombuffer(b"".join(row for rows in runs for row in rows), dtype=_FIELDS)
    return fields["ord"].astype(np.int64), fields["tf"], fields["dl"], sizes


SAMPLED_FROM = 1 << 16
"""Chunks (ords) from which the k-th score is first bounded from a sample (`_lower_bound_of_kth`)."""
SAMPLE_STRIDE = 32


def _lower_bound_of_kth(sums: Any, k: int) -> float:
    """A score no larger than the k-th best in `sums`: the k-th best of every SAMPLE_STRIDE-th chunk's (a subset's
    k-th best can't exceed the whole's); 0 when there is no sample or it holds fewer than k matches. Selecting the
    k best of 400,000 matching chunks took 3.6 ms at 501,115 chunks; keeping first only those at or above this
    bound leaves a few thousand."""
    if sums.size < SAMPLED_FROM:
        return 0.0
    # The sampled chunks that matched only: numpy's selection took about 1.4 ms on a sample of mostly zeros (a
    # query of rare words on a large store), against 0.03 ms on its matches alone.
    sample = sums[::SAMPLE_STRIDE]
    sample = sample[sample > 0]
    if sample.size < k:
        return 0.0
    return float(np.partition(sample, sample.size - k)[sample.size - k])


async def fetch_and_score(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    stats: text.TextStats,
    query_text: str,
    k: int,
    cache: postings_cache.PostingsCache | None = None,
) -> Scored:
    """Read the query's postings (without those `cache` holds decoded) and score them; keep in `cache` the
    large rows read."""
    active = cache if cache is not None and cache.enabled else None
    table = layout.table
    held = active.rows(table) if active is not None else {}
    keep = functools.partial(active.put, table) if active is not None else None
    keys = active.keys_literal(table) if active is not None and held else "{}"
    worth = active.min_postings if active is not None else None
    rows = await _fetch(conn, layout, query_text, keys, worth)
    try:
        scored = score(rows, stats, k, held, keep)
    except HeldRowChanged:
        rows = await _fetch(conn, layout, query_text, "{}", worth)
        scored = score(rows, stats, k, None, keep)
    from_cache = from_database = 0
    for row in rows:
        if row[3] != 0:
            continue
        if row[1] is not None:
            from_database += len(row[1]) // _POSTING.itemsize
        elif active is not None and row[6] is not None:  # a held row the fetch left out
            active.touch(table, row[6])
            from_cache += held[row[6]].postings
    metrics.count_keyword_postings(from_cache, from_database)
    return scored


async def _fetch(
    conn: psycopg.AsyncConnection[Any], layout: Layout, query_text: str, keys: str, worth: int | None
) -> list[Any]:
    # In autocommit, as vector.execute runs the search after it: a pool connection would otherwise be left in a
    # transaction, where the search's settings can't be sent the way that function sends them.
    async with autocommit(conn):
        cur = await conn.execute(fetch_statement(layout), [layout.language, query_text, keys, worth], binary=True)
        return await cur.fetchall()


@functools.lru_cache(maxsize=256)
def keyword_ctes(layout: Layout, k: int) -> sql.Composed:
    """`terms(word, idf)` and `kw(id, score, rank)`, the k best rows, from what `score` found (`keyword_params`).
    The same text for every query of a store and k, so it is composed once (hybrid.py says why)."""
    return sql.SQL(
        "terms AS (SELECT * FROM unnest(%s::text[], %s::float8[]) AS u(word, idf)),"
        " kw AS ("
        " SELECT c.id, s.score, row_number() OVER (ORDER BY s.score DESC, c.id) AS rank"
        " FROM unnest(%s::bigint[], %s::float8[]) AS s(ord, score) JOIN {t} AS c ON c.ord = s.ord"
        " ORDER BY s.score DESC, c.id LIMIT {k})"
    ).format(t=layout.ident, k=sql.Literal(k))


def keyword_params(scored: Scored) -> list[Any]:
    """The parameters of `keyword_ctes`."""
    return [scored.words, array_literal(scored.idfs), array_literal(scored.ords), array_literal(scored.scores)]


def array_literal(numbers: Sequence[int] | Sequence[float]) -> str:
    """`{1,2.5}`: numbers sent as one array literal, which the statement casts. psycopg dumps a list element by
    element in Python (about 0.1 ms for a hybrid search's three arrays); `repr` of a float reads back exactly."""
    return "{" + ",".join(map(repr, numbers)) + "}"


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
