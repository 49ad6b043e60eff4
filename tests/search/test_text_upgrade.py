"""A store from before keyword search is upgraded in place, and stays searchable while it happens."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fakeembed import fake_vector
from psycopg import sql

from search.conftest import DIMS, add_rows, connect, drop_postings, new_store
from vectorstore.search import hybrid, service, text, text_upgrade
from vectorstore.search.vector import run_search
from vectorstore.storage import stores, tables

TEXTS = [f"legacy note {i} on compressor stall" for i in range(40)] + ["the only mention of flutter"]


async def legacy_store(conn: psycopg.AsyncConnection[Any]) -> stores.StoreRecord:
    """A store as version 0.1 left it: no `fts`, no GIN index, marked `upgrading` by migration 0002."""
    record = await new_store(conn)
    await add_rows(conn, record, TEXTS)
    await drop_postings(conn, record)
    await conn.execute(sql.SQL("ALTER TABLE {t} DROP COLUMN fts").format(t=sql.Identifier(record.table_name)))
    await conn.execute("UPDATE vector_stores SET text_search = 'upgrading' WHERE id = %s", [record.id])
    await conn.execute("DELETE FROM text_stats WHERE vector_store_id = %s", [record.id])
    current = await stores.get(conn, record.id)
    assert current is not None and current.text_search == "upgrading"
    return current


async def vector_search_works(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    hits = await run_search(conn, record.layout, fake_vector(TEXTS[3], DIMS), limit=3, ef_search=40)
    assert hits[0].content == TEXTS[3]


async def keyword_hits(conn: psycopg.AsyncConnection[Any], store_id: str, query: str) -> list[str]:
    record = await stores.get(conn, store_id)
    assert record is not None
    stats = text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)
    return [hit.content for hit in (await hybrid.run_keyword(conn, record.layout, stats, query, limit=5)).hits]


async def test_upgrade_step_by_step_keeps_the_store_searchable(
    db: psycopg.AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = await legacy_store(db)
    await vector_search_works(db, record)

    await text_upgrade.add_column_and_trigger(db, record)
    # Rows written from now on get their tsvector from the trigger.
    async with db.transaction():
        await tables.copy_chunks(
            db, record.layout, [tables.ChunkRow("new", "a fresh row about flutter", fake_vector("n", DIMS))]
        )
    cur = await db.execute(
        sql.SQL("SELECT fts IS NOT NULL FROM {t} WHERE id = 'new'").format(t=sql.Identifier(record.table_name))
    )
    assert await cur.fetchone() == (True,)

    monkeypatch.setattr(text_upgrade, "BACKFILL_BATCH", 7)
    batches = 0
    while await text_upgrade.backfill_batch(db, record):
        batches += 1
        await vector_search_works(db, record)
    assert batches == 6  # 41 rows, 7 at a time

    await text_upgrade.build_index(db, record)
    assert await index_valid(db, record) is True
    assert await text_upgrade.upgrade(db, record)
    upgraded = await stores.get(db, record.id)
    assert upgraded is not None and upgraded.text_search == "ready" and upgraded.analyzed_rows == len(TEXTS) + 1
    assert await keyword_hits(db, record.id, "flutter") == ["the only mention of flutter", "a fresh row about flutter"]
    assert await text_upgrade.pending(db) == []


async def test_a_busy_table_postpones_the_upgrade(
    db: psycopg.AsyncConnection[Any], fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = await legacy_store(db)
    monkeypatch.setattr(text_upgrade, "LOCK_TIMEOUT", "200ms")
    holder = await connect(fresh_dsn)
    try:
        await holder.execute("BEGIN")
        await holder.execute(sql.SQL("LOCK TABLE {t} IN ACCESS SHARE MODE").format(t=sql.Identifier(record.table_name)))
        assert not await text_upgrade.upgrade(db, record)
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    await service.upgrade_all(fresh_dsn)
    assert await keyword_hits(db, record.id, "flutter") == ["the only mention of flutter"]


async def test_an_interrupted_index_build_is_redone(db: psycopg.AsyncConnection[Any], fresh_dsn: str) -> None:
    record = await legacy_store(db)
    await text_upgrade.add_column_and_trigger(db, record)
    while await text_upgrade.backfill_batch(db, record):
        pass
    # Interrupt a concurrent build for real: it waits for an older snapshot, and its statement times out,
    # which leaves the index behind, invalid.
    holder = await connect(fresh_dsn)
    try:
        await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await holder.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=sql.Identifier(record.table_name)))
        await db.execute("SET statement_timeout = '500ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            await db.execute(tables.fts_index_statement(record.layout, concurrently=True))
        await db.execute("RESET statement_timeout")
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    assert await index_valid(db, record) is False
    await text_upgrade.build_index(db, record)
    assert await index_valid(db, record) is True


async def index_valid(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> bool | None:
    cur = await conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [tables.fts_index_name(record.table_name)]
    )
    row = await cur.fetchone()
    return None if row is None else bool(row[0])
