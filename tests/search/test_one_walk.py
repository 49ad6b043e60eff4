"""An unfiltered search walks the index once, and again iteratively when dead rows left that walk short.

The single walk (search/vector.py, `ONE_WALK`) returns at most `ef_search` index entries, and the executor drops
those whose rows are dead. Here the 200 rows nearest the query are deleted and not vacuumed, so a single walk of
`ef_search` 100 finds almost nothing alive (checked below, so the tests can't pass vacuously); vector and hybrid
searches must still return full pages, from the rows that are alive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from search.test_index_plan import small_store
from vectorstore.search import hybrid, text, vector
from vectorstore.storage import stores

EF_SEARCH = 100
DEAD = 200


async def _kill_the_nearest(db: psycopg.AsyncConnection[Any]) -> tuple[stores.StoreRecord, list[float], list[str]]:
    """The store of test_index_plan with the DEAD rows nearest `data[7]` deleted (autovacuum off for the table);
    the query, and the ids of the 10 nearest rows still alive, by exact search."""
    record, data = await small_store(db)
    query = data[7]
    order = np.argsort(-(data @ query))  # cosine on unit vectors: nearest first
    dead, alive = order[:DEAD], order[DEAD : DEAD + 10]
    table = sql.Identifier(record.table_name)
    await db.execute(sql.SQL("ALTER TABLE {t} SET (autovacuum_enabled = false)").format(t=table))
    await db.execute(sql.SQL("DELETE FROM {t} WHERE id = ANY(%s)").format(t=table), [[f"r{i}" for i in dead]])
    return record, query.tolist(), [f"r{i}" for i in alive]


async def test_a_vector_search_short_of_live_rows_walks_again_iteratively(db: psycopg.AsyncConnection[Any]) -> None:
    record, query, alive = await _kill_the_nearest(db)
    layout = record.layout
    assert vector.one_pass(layout, vector.NO_FILTER, exact=False)

    single_walk = await vector.execute(
        db,
        vector.search_statement(layout, vector.NO_FILTER),
        vector.nearest_params(layout, layout.to_db(query), [], 10, exact=False),
        ef_search=EF_SEARCH,
        no_table_scan=True,
        one_pass=True,
    )
    assert len(single_walk) < 10, single_walk

    hits = await vector.find_nearest(db, layout, query, limit=10, ef_search=EF_SEARCH)
    assert len(hits) == 10
    assert len({hit.id for hit in hits} & set(alive)) >= 8, (hits, alive)

    # Both settings are the search's own: the pooled connection keeps iterating and using table scans elsewhere.
    cur = await db.execute("SELECT current_setting('hnsw.iterative_scan'), current_setting('enable_seqscan')")
    assert await cur.fetchone() == ("relaxed_order", "on")


async def test_a_hybrid_vector_leg_short_of_live_rows_walks_again_iteratively(
    db: psycopg.AsyncConnection[Any],
) -> None:
    record, query, alive = await _kill_the_nearest(db)
    layout = record.layout
    stats = text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)
    depth = hybrid.depth_for(10)
    # A query without an indexable term: the keyword leg is empty, so the page is the vector leg alone.
    no_terms = "the"

    statement, params = hybrid.hybrid_statement(
        layout, stats, no_terms, layout.to_db(query), vector.NO_FILTER, [],
        limit=10, depth=depth, weights=hybrid.Weights(), exact=False, ef_search=EF_SEARCH,
    )  # fmt: skip
    single_walk = await vector.execute(db, statement, params, ef_search=EF_SEARCH, no_table_scan=True, one_pass=True)
    assert len(single_walk) < 10, single_walk

    result = await hybrid.run_hybrid(db, layout, stats, no_terms, query, limit=10, depth=depth, ef_search=EF_SEARCH)
    assert result.terms == 0 and len(result.hits) == 10
    assert len({hit.id for hit in result.hits} & set(alive)) >= 8, (result.hits, alive)

    # With terms, the fused page is full too, and the settings stay inside the search's transaction.
    fused = await hybrid.run_hybrid(db, layout, stats, "row", query, limit=10, depth=depth, ef_search=EF_SEARCH)
    assert fused.keyword_rows > 0 and len(fused.hits) == 10
    cur = await db.execute("SELECT current_setting('hnsw.iterative_scan'), current_setting('enable_seqscan')")
    assert await cur.fetchone() == ("relaxed_order", "on")


async def test_a_full_single_walk_is_what_the_iterative_scan_returns(db: psycopg.AsyncConnection[Any]) -> None:
    """Without dead rows, one walk gives the same rows in the same order as the iterative scan it replaces."""
    record, data = await small_store(db)
    layout = record.layout
    statement = vector.search_statement(layout, vector.NO_FILTER)
    for row in range(0, 1100, 37):
        params = vector.nearest_params(layout, layout.to_db(data[row].tolist()), [], 10, exact=False)
        walks = [
            await vector.execute(db, statement, params, ef_search=EF_SEARCH, no_table_scan=True, one_pass=single)
            for single in (True, False)
        ]
        assert len(walks[0]) == 10 and walks[0] == walks[1], row
