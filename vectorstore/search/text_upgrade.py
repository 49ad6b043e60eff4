"""Give a store's table from before keyword search its `fts` column and GIN index, without taking it offline.

A table created by this version has `fts` as a stored generated column (tables.py). Adding one to an existing
table would rewrite it, HNSW index included, under an ACCESS EXCLUSIVE lock: minutes of a store that can't
be searched or written on a large table. Migration 0002 marks such stores `upgrading`; then, in the background
after startup, each is upgraded in steps that never hold a lock for long:

1. `ADD COLUMN fts tsvector` (nullable, no default: a catalog change) and a trigger that fills it for every row
   written from then on. Both take a short lock, with `lock_timeout` so a long query only postpones them.
2. Backfill the rows written before, `BACKFILL_BATCH` at a time, each batch its own short transaction.
3. `CREATE INDEX CONCURRENTLY` the GIN index (reads and writes go on meanwhile; an invalid leftover from an
   interrupted attempt is dropped first).
4. ANALYZE, copy the text statistics, and mark the store `ready`.

Until then the store answers keyword and hybrid searches with its vector ranking. Every step can be repeated,
so a replica that dies halfway leaves work the next one finishes; an advisory lock per store keeps two
replicas from doing it at once.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from vectorstore.search import statistics
from vectorstore.storage import stores, tables

log = logging.getLogger("vectorstore")

BACKFILL_BATCH = 500
LOCK_TIMEOUT = "2s"


def _lock_key(store_id: str) -> int:
    return int.from_bytes(hashlib.sha256(b"vectorstore-fts:" + store_id.encode()).digest()[:8], "big", signed=True)


async def pending(conn: psycopg.AsyncConnection[Any]) -> list[stores.StoreRecord]:
    return [record for record in await stores.all_stores(conn) if record.text_search != "ready"]


async def _has_column(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'fts' AND NOT attisdropped",
        [table],
    )
    return await cur.fetchone() is not None


async def add_column_and_trigger(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 1, in one short transaction (idempotent)."""
    t = sql.Identifier(record.table_name)
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        if not await _has_column(conn, record.table_name):
            await conn.execute(sql.SQL("ALTER TABLE {t} ADD COLUMN fts tsvector").format(t=t))
            await conn.execute(
                sql.SQL("ALTER TABLE {t} ALTER COLUMN fts SET STATISTICS {n}").format(
                    t=t, n=sql.Literal(tables.FTS_STATISTICS_TARGET)
                )
            )
        await conn.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {name} BEFORE INSERT OR UPDATE OF content ON {t}"
                " FOR EACH ROW EXECUTE FUNCTION vectorstore_fill_fts({language})"
            ).format(name=sql.Identifier(f"{record.table_name}_fts"), t=t, language=sql.Literal(record.language))
        )


async def backfill_batch(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> int:
    """Step 2, one batch; returns the rows filled (0 when done)."""
    cur = await conn.execute(
        sql.SQL(
            "UPDATE {t} SET fts = to_tsvector(%s::regconfig, content)"
            " WHERE id IN (SELECT id FROM {t} WHERE fts IS NULL LIMIT %s FOR UPDATE SKIP LOCKED)"
        ).format(t=sql.Identifier(record.table_name)),
        [record.language, BACKFILL_BATCH],
    )
    return cur.rowcount


async def build_index(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 3, outside any transaction (CREATE INDEX CONCURRENTLY can't run in one)."""
    await tables.build_index_concurrently(
        conn, tables.fts_index_name(record.table_name), tables.fts_index_statement(record.layout, concurrently=True)
    )


async def upgrade(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> bool:
    """All steps for one store on `conn` (autocommit, idle). False when another replica holds it, or when its
    table is locked for longer than LOCK_TIMEOUT (tried again later)."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [_lock_key(record.id)])
    row = await cur.fetchone()
    if not row or not row[0]:
        return False
    try:
        try:
            await add_column_and_trigger(conn, record)
        except pg_errors.LockNotAvailable:
            log.info("text search upgrade of store %s postponed: its table is busy", record.id)
            return False
        filled = 0
        while batch := await backfill_batch(conn, record):
            filled += batch
        await build_index(conn, record)
        await conn.execute("UPDATE vector_stores SET text_search = 'ready' WHERE id = %s", [record.id])
        current = await stores.get(conn, record.id)
        if current is not None:
            await statistics.keep_current(conn, current, force=True)
        log.info("text search: store %s upgraded (%d rows indexed)", record.id, filled)
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", [_lock_key(record.id)])
