"""Give a store's table from before the postings its `<t>_impacts` (migration 0410), while it stays searchable:
a table from before any postings, and one with 0400's `<t>_postings` (text lexemes, two b-trees), which is
dropped once its replacement is complete.

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
3. Mark the table ready (its state row), then drop 0400's postings table and triggers if it has them (again
   with `lock_timeout`; a busy table leaves them for the next pass, searches already use the new ones).

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
    """The table has complete 0410 postings and no 0400 ones left."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [tables.legacy_postings_table(table)])
    row = await cur.fetchone()
    return bool(row and not row[0]) and await _marked_ready(conn, table)


async def _marked_ready(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [tables.postings_table(table)])
    row = await cur.fetchone()
    if not row or not row[0]:
        return False
    cur = await conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {p} WHERE lexeme = 0 AND id = '')").format(
            p=sql.Identifier(tables.postings_table(table))
        )
    )
    ready = await cur.fetchone()
    return bool(ready and ready[0])


async def pending(conn: psycopg.AsyncConnection[Any]) -> list[stores.StoreRecord]:
    """Stores whose `fts` is ready and whose postings are not (yet) complete in the 0410 layout."""
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
                " written AS (INSERT INTO {p} (lexeme, impact, id)"
                " SELECT n.lexeme, n.impact, n.id FROM ({new}) AS n"
                " WHERE NOT EXISTS (SELECT 1 FROM {p} AS q"
                ' WHERE q.lexeme = n.lexeme AND q.impact = n.impact AND q.id = n.id COLLATE "C")'
                " ORDER BY 1, 2 DESC, 3)"
                " SELECT max(id) FROM batch"
            ).format(
                t=t,
                p=p,
                new=tables.postings_select(
                    sql.SQL("batch"),
                    sql.SQL("(SELECT impact FROM {p} WHERE lexeme = 0 AND id IS NULL)").format(p=p),
                ),
            ),
            [after, BACKFILL_BATCH],
        )
        row = await cur.fetchone()
    return str(row[0]) if row and row[0] is not None else None


async def mark_ready(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 3."""
    await conn.execute(tables.postings_ready_statement(record.table_name))


async def drop_legacy(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 3, after `mark_ready`: 0400's postings and triggers go, in one short transaction."""
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        for statement in tables.drop_legacy_postings_statements(record.table_name):
            await conn.execute(statement)


async def upgrade(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> bool:
    """All steps for one store on `conn` (autocommit, idle). False when another replica holds it, or when its
    table is locked for longer than LOCK_TIMEOUT (tried again later)."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [_lock_key(record.id)])
    row = await cur.fetchone()
    if not row or not row[0]:
        return False
    try:
        batches = 0
        if not await _marked_ready(conn, record.table_name):
            try:
                await create(conn, record)
            except pg_errors.LockNotAvailable:
                log.info("postings upgrade of store %s postponed: its table is busy", record.id)
                return False
            last: str | None = ""
            while last is not None:
                last = await backfill_batch(conn, record, last)
                batches += 1
            await mark_ready(conn, record)
        try:
            await drop_legacy(conn, record)
        except pg_errors.LockNotAvailable:
            log.info("postings upgrade of store %s: the old postings stay until its table is not busy", record.id)
            return False
        log.info("postings: store %s upgraded (%d batches)", record.id, max(batches - 1, 0))
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", [_lock_key(record.id)])
