"""Writers keep the planner's statistics current: read in the plan's row estimates, never in timings."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql

from search.conftest import add_rows, connect, new_store
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


class _Stalling:
    """A connection whose client stops for a while once it holds the table, as a starved event loop would."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], seconds: float) -> None:
        self.conn = conn
        self.seconds = seconds

    def transaction(self) -> Any:
        return self.conn.transaction()

    async def execute(self, query: Any, params: Any = None) -> Any:
        cur = await self.conn.execute(query, params)
        text = query.as_string(self.conn) if isinstance(query, sql.Composable) else str(query)
        if text.startswith("ANALYZE"):
            await asyncio.sleep(self.seconds)
        return cur


async def test_an_analyze_left_idle_is_ended_and_frees_its_table(
    db: psycopg.AsyncConnection[Any], fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = await new_store(db)
    await add_rows(db, record, [f"lantern {i} harbour ferry mooring" for i in range(60)])
    record = await stores.get(db, record.id) or record
    cur = await db.execute("SELECT text_avg_length FROM vector_stores WHERE id = %s", [record.id])
    before = await cur.fetchone()
    monkeypatch.setattr(statistics, "IDLE_IN_TRANSACTION_TIMEOUT", "300ms")
    stalled = await connect(fresh_dsn)
    try:
        with pytest.raises((psycopg.errors.IdleInTransactionSessionTimeout, psycopg.OperationalError)):
            await statistics.keep_current(cast(Any, _Stalling(stalled, 2.0)), record, force=True)
        # The server ended the session and rolled its transaction back: writers of the store get through at once.
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as writer:
            await writer.execute("SET lock_timeout = '1s'")
            await writer.execute(sql.SQL("DELETE FROM {t} WHERE id = 'r0'").format(t=sql.Identifier(record.table_name)))
        cur = await db.execute("SELECT text_avg_length FROM vector_stores WHERE id = %s", [record.id])
        assert await cur.fetchone() == before  # nothing half-written
    finally:
        await stalled.close()
