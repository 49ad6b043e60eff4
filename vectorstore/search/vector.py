"""Nearest-neighbour search over one store's table, with filters, through the HNSW index.

A WHERE filter is applied after the index scan, so plain HNSW returns too few rows for selective filters.
pgvector 0.8's iterative scan keeps scanning until LIMIT rows pass the filter; `relaxed_order` may return
rows slightly out of order, so the outer query sorts the (small) result again. `ef_search` is raised to at
least the number of results wanted.

A binary-quantized store (`index.quantization: binary`) indexes `binary_quantize(embedding)`: the index walk
orders candidates by the Hamming distance of their sign bits, `BINARY_RESCORE_FACTOR` times as many as asked
for (at least `MIN_BINARY_CANDIDATES`, and at least the store's `ef_search`), and the same statement rescores
them with the full vectors.

The settings are session-level on the pooled connection and sent only when they differ from what that
connection already has (remembered per connection), so a typical search is one statement, one round trip, in
autocommit: measured in bench/search_http.py, a transaction with SET LOCAL cost 3-4 round trips per search.
The hnsw.* settings only affect HNSW scans, so other users of the connection are unaffected.

An approximate search also runs with `enable_seqscan` off, set local to the implicit transaction of one
pipeline (one round trip; the statements sent before a Sync form one transaction, so it needs no BEGIN or
COMMIT, whose handling in psycopg cost the server 0.16 ms of CPU a search). The planner would otherwise scan
the whole table at some sizes and `ef_search` values. Its cost of a sequential scan leaves out reading the
vectors from TOAST (a 768-d vector is 3 KB, out of line; the heap row is ~100 bytes), and pgvector's HNSW
estimate only corrects for that once the pages the walk reads outnumber the heap's. In between the table scan
looks cheaper: at 40,000 x 768, `ef_search` 100 and 128 were planned as a scan and sort (cost 2,384 against the
index's ~2,400-2,700; 600-800 ms a search, where 64 and 200 took a few ms on the index). The setting ends with
that transaction, so it never reaches another user of the pooled connection. Exact searches (`exact`, the
`+ 0` form) keep the planner's choice.

An unfiltered search walks the index in one pass: the same local setting turns the iterative scan off for it
(`ONE_WALK`). Iterating keeps every candidate the walk passes over in a heap for a next round, which an
unfiltered search only needs when dead or not-yet-visible rows are among its `ef_search` candidates; one walk
cost PostgreSQL 0.1-0.4 ms less a search at 6,308 x 384 and 0.5-1.3 ms at 501,115, and returned the same rows
(bench/search_parts.py; docs/benchmarks.md, fifth round). When that pass comes back with fewer rows than
asked, the search runs again with the iterative scan, so dead rows never shorten a page. Binary-quantized
stores keep iterating: their walk feeds the rescoring, whose depth dead rows would quietly shorten.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from vectorstore.observability import metrics
from vectorstore.storage.database import autocommit
from vectorstore.storage.tables import Layout

# Stores of at most this many rows (at their last ANALYZE) are searched exactly, by scanning the table: it
# can't miss, and at this size it costs about 1 ms (bench/recall.py measured 1 us per row at 384 dimensions).
# Past it the scan grows linearly while HNSW stays near 1 ms (5,226 rows x 384: 5.1 ms exact, 1.3 ms HNSW).
EXACT_MAX_ROWS = 1000


# Binary quantization keeps one bit of each dimension: the Hamming order is coarse, so each search over-fetches
# candidates and rescores them exactly. bench/large_stores.py (500,000 x 768, clustered): recall@10 0.31 with
# 40 candidates, 0.53 with 100, 0.79 with 200, 0.95 with 400 (10 ms a search on one core); raising the store's
# ef_search raises the candidates too.
BINARY_RESCORE_FACTOR = 10
MIN_BINARY_CANDIDATES = 400


# pgvector accepts hnsw.ef_search from 1 to 1,000; past that PostgreSQL refuses the setting.
MAX_EF_SEARCH = 1000


def binary_candidates(limit: int, ef_search: int = 0) -> int:
    return min(MAX_EF_SEARCH, max(MIN_BINARY_CANDIDATES, ef_search, BINARY_RESCORE_FACTOR * limit))


def exact_is_cheap(rows: float) -> bool:
    """Whether a table this size is searched by scanning it (0 rows: never analyzed, size unknown)."""
    return 0 < rows <= EXACT_MAX_ROWS


# Index scans stop after this many tuples even when the filter keeps rejecting rows (pgvector's default is
# 20,000); beyond it a filter so selective is better served by the GIN index the planner can choose.
MAX_SCAN_TUPLES = 20000

# (ef_search, iterative_scan, max_scan_tuples) last set on each pooled connection. Valid while nothing resets
# sessions: if the pool ever gets a `reset=` running RESET ALL / DISCARD ALL, clear the entry there too.
_applied: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], tuple[str, str, str]] = weakref.WeakKeyDictionary()


NO_FILTER = sql.SQL("TRUE")

NO_TABLE_SCAN = "SELECT set_config('enable_seqscan', 'off', true)"
"""Local to the transaction: sent in a pipeline of the autocommit connection, that is the pipeline's own."""
ONE_WALK = "SELECT set_config('enable_seqscan', 'off', true), set_config('hnsw.iterative_scan', 'off', true)"
"""NO_TABLE_SCAN, and the index walked once, without the iterative scan (the module says when)."""
ONE_WALK_ONLY = "SELECT set_config('hnsw.iterative_scan', 'off', true)"
"""The one walk without the guard: what a plan shown unguarded (`no_table_scan=False`) is planned with."""


def one_pass(layout: Layout, where: sql.Composable, *, exact: bool) -> bool:
    """Whether a search may walk the index in one pass: unfiltered, approximate, not binary-quantized. The
    caller runs it again iteratively (`one_pass=False`) when that pass returns fewer rows than it asked for."""
    return where is NO_FILTER and not exact and layout.quantization != "binary"


@dataclass(frozen=True)
class Hit:
    id: str
    file_id: str | None
    filename: str | None
    content: str
    attributes: dict[str, Any]
    distance: float
    score: float


def score_of(distance: str, value: float) -> float:
    """Map a pgvector distance to a 0-1 score where higher is closer.

    cosine: the cosine similarity (1 - distance), negatives clamped to 0; inner_product: the inner product
    (pgvector's `<#>` is its negative), clamped to 0-1 (equal to cosine for unit vectors); l2: 1 / (1 + d).
    """
    if distance == "cosine":
        score = 1.0 - value
    elif distance == "inner_product":
        score = -value
    else:
        score = 1.0 / (1.0 + value)
    return min(1.0, max(0.0, score))


_UNFILTERED: dict[tuple[str, str, str, bool], sql.Composed] = {}


def search_statement(layout: Layout, where: sql.Composable, *, exact: bool = False) -> sql.Composed:
    if where is NO_FILTER:
        # Composing costs ~0.15 ms a search; the unfiltered statement only depends on table and operator.
        key = (layout.table, layout.distance, layout.quantization, exact)
        cached = _UNFILTERED.get(key)
        if cached is None:
            if len(_UNFILTERED) > 10000:
                _UNFILTERED.clear()
            cached = _UNFILTERED[key] = _compose(layout, where, exact)
        return cached
    return _compose(layout, where, exact)


def order_expression(layout: Layout, *, exact: bool) -> sql.Composed:
    """What a nearest-neighbour ORDER BY sorts on. `exact` adds `+ 0`: the HNSW index can only serve the bare
    `embedding <op> q`, so the planner scans the table and keeps the top rows, which is exact (and for a small
    table about as fast as the index)."""
    bare = sql.SQL("embedding {op} %s").format(op=layout.operator)
    return sql.SQL("({bare}) + 0").format(bare=bare) if exact else bare


def nearest(
    layout: Layout,
    where: sql.Composable,
    columns: sql.Composable,
    *,
    exact: bool,
    limit: int | None = None,
    ef_search: int = 0,
    binary_depth: int | None = None,
) -> sql.Composed:
    """`SELECT <columns>, distance` of the nearest rows that pass `where`, closest first (roughly: iterative
    scans may return rows slightly out of order). Its parameters are `nearest_params`.

    With `limit`, the row counts are written into the statement rather than passed as parameters (pass the
    same `limit` to `nearest_params`): a generic plan of a prepared statement that does not know its LIMIT
    estimates a tenth of the table and sorts all of it instead of walking the index."""
    if limit is not None:
        count: sql.Composable = sql.Literal(limit)
        candidates: sql.Composable = sql.Literal(rescore_depth(limit, ef_search, binary_depth))
    else:
        count = candidates = sql.SQL("%s")
    if layout.quantization == "binary" and not exact:
        return sql.SQL(
            "SELECT {columns}, embedding {op} %s AS distance FROM ("
            " SELECT {columns}, embedding FROM {t} WHERE {where}"
            " ORDER BY {quantized} <~> binary_quantize(%s)::bit({dims}) LIMIT {candidates}) AS candidates"
            " ORDER BY distance LIMIT {count}"
        ).format(
            candidates=candidates,
            count=count,
            columns=columns,
            op=layout.operator,
            t=layout.ident,
            where=where,
            quantized=layout.quantized,
            dims=sql.Literal(layout.dimensions),
        )
    return sql.SQL(
        "SELECT {columns}, embedding {op} %s AS distance FROM {t} WHERE {where} ORDER BY {order} LIMIT {count}"
    ).format(
        count=count,
        columns=columns,
        op=layout.operator,
        t=layout.ident,
        where=where,
        order=order_expression(layout, exact=exact),
    )


def nearest_params(
    layout: Layout,
    query: Any,
    where_params: Sequence[Any],
    limit: int,
    *,
    exact: bool,
    ef_search: int = 0,
    literal_limit: bool = False,
    binary_depth: int | None = None,
) -> list[Any]:
    """`binary_depth`: the candidates a binary store rescores, when calibrated (vectorstore/calibration);
    None keeps the fixed rule of `binary_candidates`."""
    if layout.quantization == "binary" and not exact:
        counts = [] if literal_limit else [rescore_depth(limit, ef_search, binary_depth), limit]
        return [query, *where_params, query, *counts]
    return [query, *where_params, query, *([] if literal_limit else [limit])]


def rescore_depth(limit: int, ef_search: int, binary_depth: int | None) -> int:
    if binary_depth is None:
        return binary_candidates(limit, ef_search)
    return min(MAX_EF_SEARCH, max(limit, binary_depth))


def index_ef_search(layout: Layout, ef_search: int, limit: int, binary_depth: int | None = None) -> int:
    """The `hnsw.ef_search` a search of `limit` rows needs: at least what the index walk must return."""
    wanted = rescore_depth(limit, ef_search, binary_depth) if layout.quantization == "binary" else limit
    return min(MAX_EF_SEARCH, max(ef_search, wanted))


_HIT_COLUMNS = sql.SQL("id, file_id, filename, content, attributes")


def _compose(layout: Layout, where: sql.Composable, exact: bool) -> sql.Composed:
    return sql.SQL(
        "SELECT id, file_id, filename, content, attributes, distance FROM ({nearest}) AS hits ORDER BY distance"
    ).format(nearest=nearest(layout, where, _HIT_COLUMNS, exact=exact))


async def find_nearest(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    embedding: Sequence[float],
    *,
    limit: int,
    ef_search: int,
    where: sql.Composable = NO_FILTER,
    where_params: Sequence[Any] = (),
    iterative: str = "relaxed_order",
    exact: bool = False,
    max_scan_tuples: int = MAX_SCAN_TUPLES,
    binary_depth: int | None = None,
) -> list[Hit]:
    """Run the search on `conn` (idle, not in a transaction) and return hits, closest first. Not timed:
    `run_search` is the one searches use; the recall calibration measures through this one."""
    rows = await _run_nearest(
        conn, layout, embedding, None, limit, ef_search, where, where_params, iterative, exact, max_scan_tuples,
        binary_depth,
    )  # fmt: skip
    return [Hit(str(r[0]), r[1], r[2], r[3], r[4], float(r[5]), score_of(layout.distance, float(r[5]))) for r in rows]


async def explain_nearest(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    embedding: Sequence[float],
    *,
    limit: int,
    ef_search: int,
    where: sql.Composable = NO_FILTER,
    where_params: Sequence[Any] = (),
    exact: bool = False,
    max_scan_tuples: int = MAX_SCAN_TUPLES,
    binary_depth: int | None = None,
    no_table_scan: bool | None = None,
) -> str:
    """The plan (`EXPLAIN`, text) of the statement `find_nearest` runs, planned exactly as it is planned there:
    same statement, parameters, settings and transaction. `no_table_scan=False` plans it without the guard
    against a table scan (to show what the planner would do unguarded)."""
    rows = await _run_nearest(
        conn, layout, embedding, sql.SQL("EXPLAIN "), limit, ef_search, where, where_params, "relaxed_order", exact,
        max_scan_tuples, binary_depth, no_table_scan,
    )  # fmt: skip
    return "\n".join(str(row[0]) for row in rows)


async def _run_nearest(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    embedding: Sequence[float],
    prefix: sql.Composable | None,
    limit: int,
    ef_search: int,
    where: sql.Composable,
    where_params: Sequence[Any],
    iterative: str,
    exact: bool,
    max_scan_tuples: int,
    binary_depth: int | None,
    no_table_scan: bool | None = None,
) -> list[TupleRow]:
    query = layout.to_db(embedding)
    params = nearest_params(
        layout, query, where_params, limit, exact=exact, ef_search=ef_search, binary_depth=binary_depth
    )
    return await execute(
        conn,
        search_statement(layout, where, exact=exact),
        params,
        prefix=prefix,
        ef_search=index_ef_search(layout, ef_search, limit, binary_depth),
        iterative=iterative,
        max_scan_tuples=max_scan_tuples,
        no_table_scan=not exact if no_table_scan is None else no_table_scan,
        one_pass=one_pass(layout, where, exact=exact) and iterative != "off",
        came_short=lambda rows: len(rows) < limit,
    )


run_search = metrics.timed_search(find_nearest)


async def execute(
    conn: psycopg.AsyncConnection[Any],
    statement: sql.Composed,
    params: Sequence[Any],
    *,
    ef_search: int,
    iterative: str = "relaxed_order",
    max_scan_tuples: int = MAX_SCAN_TUPLES,
    no_table_scan: bool = False,
    prefix: sql.Composable | None = None,
    one_pass: bool = False,
    came_short: Callable[[list[TupleRow]], bool] | None = None,
) -> list[TupleRow]:
    """Run one search statement in autocommit with the HNSW settings it needs, sent only when they change.
    `no_table_scan`: plan it with `enable_seqscan` off, local to its own transaction (the module says why);
    `one_pass`: walk the index once, without the iterative scan, set the same way (`ONE_WALK`); when
    `came_short(rows)` says that walk returned fewer rows than the search asked for, it runs again with the
    iterative scan, which goes past the dead or not-yet-visible rows among the walk's candidates.
    `prefix` (`EXPLAIN `): run it in front of the statement, to see the plan of exactly what a search runs."""
    run = functools.partial(_execute, conn, statement, params, ef_search, iterative, max_scan_tuples, no_table_scan)
    rows = await run(prefix, one_pass)
    if one_pass and prefix is None and came_short is not None and came_short(rows):
        rows = await run(None, False)
    return rows


async def _execute(
    conn: psycopg.AsyncConnection[Any],
    statement: sql.Composed,
    params: Sequence[Any],
    ef_search: int,
    iterative: str,
    max_scan_tuples: int,
    no_table_scan: bool,
    prefix: sql.Composable | None,
    one_pass: bool,
) -> list[TupleRow]:
    if prefix is not None:
        statement = sql.Composed([prefix, statement])
    wanted = (str(ef_search), iterative, str(max_scan_tuples))
    async with autocommit(conn):
        if _applied.get(conn) != wanted:
            await conn.execute(
                "SELECT set_config('hnsw.ef_search', %s, false), set_config('hnsw.iterative_scan', %s, false),"
                " set_config('hnsw.max_scan_tuples', %s, false)",
                list(wanted),
            )
            _applied[conn] = wanted
        local = (ONE_WALK if one_pass else NO_TABLE_SCAN) if no_table_scan else ONE_WALK_ONLY if one_pass else None
        if local is None:
            cur: psycopg.AsyncCursor[TupleRow] = await conn.execute(statement, params)
            return await cur.fetchall()
        # The local settings and the search go out together and come back together, one implicit transaction.
        async with conn.pipeline():
            await conn.execute(local)
            cur = await conn.execute(statement, params)
        return await cur.fetchall()
