"""Give a store's table from before the postings (migration 0400) its `<t>_postings`, while it stays searchable.

Until a table's postings are complete its keyword and hybrid searches take the GIN path (search/postings.py
checks the reference row's ready flag), so nothing is lost meanwhile. In the background after startup
(search/service.py), each such store whose `fts` is ready is upgraded in steps that never hold a lock long:

1. One short transaction (with `lock_timeout`, so a busy table only postpones it): create the postings table,
   its indexes (instant on an empty table), the reference row marked not ready, and the triggers; from its
   commit on, every write to the chunk table keeps its postings.
2. Backfill the rows written before, `BACKFILL_BATCH` chunk rows at a time in id order, each batch its own
   transaction. A batch locks its rows FOR KEY SHARE (a concurrent delete waits for it rather than leaving
   postings behind) and skips any (lexeme, id) already there, which the trigger wrote for rows committed
   after step 1.
3. Mark the reference row ready.

Every step can be repeated, so a replica that dies halfway leaves work the next one finishes; an advisory
lock per store keeps two replicas from doing it at once.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from vectorstore.storage import stores, tables

log = logging.getLogger("vectorstore")

BACKFILL_BATCH = 500
LOCK_TIMEOUT = "2s"


def _lock_key(store_id: str) -> int:
    return int.from_bytes(hashlib.sha256(b"vectorstore-postings:" + store_id.encode()).digest()[:8], "big", signed=True)


async def is_complete(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [tables.postings_table(table)])
    row = await cur.fetchone()
    if not row or not row[0]:
        return False
    cur = await conn.execute(
        sql.SQL("SELECT tf FROM {p} WHERE lexeme = '' AND id IS NULL").format(
            p=sql.Identifier(tables.postings_table(table))
        )
    )
    ref = await cur.fetchone()
    return bool(ref and ref[0] == 1)


async def pending(conn: psycopg.AsyncConnection[Any]) -> list[stores.StoreRecord]:
    """Stores whose `fts` is ready and whose postings are not (yet) complete."""
    return [
        record
        for record in await stores.all_stores(conn)
        if record.text_search == "ready" and not await is_complete(conn, record.table_name)
    ]


async def create(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 1, in one short transaction (idempotent)."""
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        for statement in tables.postings_statements(
            record.layout, ready=False, avgdl=record.text_avg_length or tables.DEFAULT_POSTINGS_AVGDL
        ):
            await conn.execute(statement)


async def backfill_batch(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, after: str) -> str | None:
    """Step 2, one batch of chunk rows with ids after `after`; returns the last id done (None when done)."""
    t = sql.Identifier(record.table_name)
    p = sql.Identifier(tables.postings_table(record.table_name))
    async with conn.transaction():
        cur = await conn.execute(
            sql.SQL(
                "WITH batch AS MATERIALIZED ("
                " SELECT id, fts FROM {t} WHERE id > %s ORDER BY id LIMIT %s FOR KEY SHARE),"
                " ref AS (SELECT impact FROM {p} WHERE lexeme = '' AND id IS NULL),"
                " written AS (INSERT INTO {p} (lexeme, impact, id, tf, dl)"
                " SELECT u.lexeme, vectorstore_bm25_impact(u.tf, length(b.fts), ref.impact), b.id, u.tf,"
                " length(b.fts)"
                " FROM batch AS b CROSS JOIN ref,"
                " LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf FROM unnest(b.fts)) AS u"
                " WHERE b.fts IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM {p} AS q WHERE q.lexeme = u.lexeme AND q.id = b.id))"
                " SELECT max(id) FROM batch"
            ).format(t=t, p=p),
            [after, BACKFILL_BATCH],
        )
        row = await cur.fetchone()
    return str(row[0]) if row and row[0] is not None else None


async def mark_ready(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 3."""
    await conn.execute(
        sql.SQL("UPDATE {p} SET tf = 1 WHERE lexeme = '' AND id IS NULL").format(
            p=sql.Identifier(tables.postings_table(record.table_name))
        )
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
            await create(conn, record)
        except pg_errors.LockNotAvailable:
            log.info("postings upgrade of store %s postponed: its table is busy", record.id)
            return False
        last: str | None = ""
        batches = 0
        while last is not None:
            last = await backfill_batch(conn, record, last)
            batches += 1
        await mark_ready(conn, record)
        log.info("postings: store %s upgraded (%d batches)", record.id, batches - 1)
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", [_lock_key(record.id)])
