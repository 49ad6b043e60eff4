"""Writers keep the planner's statistics current: read in the plan's row estimates, never in timings."""

from __future__ import annotations

import json
import random
from typing import Any

import psycopg

from search.conftest import add_rows, new_store
from vectorstore.search import statistics
from vectorstore.search.vector import NO_FILTER, search_statement
from vectorstore.storage import stores, tables

DIMS = 16


async def estimated_rows(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> float:
    """The row count the planner assumes for the store's table when it plans a search."""
    query = record.layout.to_db([1.0] + [0.0] * (record.dimensions - 1))
    statement = search_statement(record.layout, NO_FILTER)
    cur = await conn.execute(b"EXPLAIN (FORMAT JSON) " + statement.as_bytes(conn), [query, query, 10])
    row = await cur.fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])

    def scans(node: dict[str, Any]) -> list[dict[str, Any]]:
        found = [node] if node.get("Relation Name") == record.table_name else []
        for child in node.get("Plans", []):
            found += scans(child)
        return found

    [scan] = scans(plan[0]["Plan"])
    assert scan["Node Type"] == "Index Scan" and scan["Index Name"].endswith("_hnsw")
    return float(scan["Plan Rows"])


async def test_a_load_is_followed_by_analyze(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db, dims=DIMS)
    rng = random.Random(7)
    rows = [
        tables.ChunkRow(id=f"r{i}", content=f"row {i}", embedding=[rng.gauss(0, 1) for _ in range(DIMS)])
        for i in range(3000)
    ]
    async with db.transaction():
        await tables.copy_chunks(db, record.layout, rows)
        await statistics.flush_table_counters(db)
    # Straight after the load the planner guesses from the table's size on disk.
    assert await estimated_rows(db, record) != 3000
    await statistics.after_write(db, record.id)
    assert await estimated_rows(db, record) == 3000
    current = await stores.get(db, record.id)
    assert current is not None and current.analyzed_rows == 3000
    # A small change afterwards does not analyze again; a material one does.
    await add_rows(db, current, ["one more row"], prefix="s")  # add_rows forces an ANALYZE itself
    async with db.transaction():
        await tables.copy_chunks(db, record.layout, [tables.ChunkRow("x1", "x", rows[0].embedding)])
        await statistics.flush_table_counters(db)
    assert not await statistics.keep_current(db, current)
    more = [tables.ChunkRow(f"m{i}", "m", rows[i].embedding) for i in range(400)]
    async with db.transaction():
        await tables.copy_chunks(db, record.layout, more)
        await statistics.flush_table_counters(db)
    assert await statistics.keep_current(db, current)
    assert await estimated_rows(db, record) == 3000 + 1 + 1 + 400
