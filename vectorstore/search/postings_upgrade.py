"""Give a store's table from before migration 0420 its `ord` column and packed postings while it stays
searchable: a table from before any postings, one with 0400's `<t>_postings` and one with 0410's `<t>_impacts`,
whose old postings are dropped once the new ones are complete.

Until a table's postings are complete its keyword and hybrid searches take the GIN path (search/postings.py
checks the ready row of its blocks), so nothing is lost meanwhile. In the background after startup
(search/service.py), each such store whose `fts` is ready is upgraded in steps that never hold a lock long:

1. One short transaction (with `lock_timeout`, so a busy table only postpones it): add the nullable `ord`
   column (no rewrite) and its sequence as the default, the blocks and gone tables and the triggers; from its
   commit on, every new row gets an ord and its postings.
2. Give the rows written before an ord, BACKFILL_BATCH rows a transaction (`FOR UPDATE SKIP LOCKED`): the
   update trigger writes the postings of each row that gains one. This rewrites each old row once (and its
   index entries), the price of keying postings by a small integer.
3. `CREATE UNIQUE INDEX CONCURRENTLY` on `ord` (a leftover invalid one from an interrupted build is dropped
   first), mark the table ready, then drop 0400's and 0410's postings and triggers if it has them (again with
   `lock_timeout`; a busy table leaves them for the next pass, searches already use the new ones).

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
    """The table has complete 0420 postings and no older ones left."""
    cur = await conn.execute(
        "SELECT to_regclass(%s) IS NULL AND to_regclass(%s) IS NULL",
        [tables.legacy_postings_table(table), tables.impacts_table(table)],
    )
    row = await cur.fetchone()
    return bool(row and row[0]) and await _marked_ready(conn, table)


async def _marked_ready(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [tables.blocks_table(table)])
    row = await cur.fetchone()
    if not row or not row[0]:
        return False
    cur = await conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {b} WHERE lexeme = '' AND seg = 0)").format(
            b=sql.Identifier(tables.blocks_table(table))
        )
    )
    ready = await cur.fetchone()
    return bool(ready and ready[0])


async def pending(conn: psycopg.AsyncConnection[Any]) -> list[stores.StoreRecord]:
    """Stores whose `fts` is ready and whose postings are not (yet) complete in the 0420 layout."""
    return [
        record
        for record in await stores.all_stores(conn)
        if record.text_search == "ready" and not await is_complete(conn, record.table_name)
    ]


async def create(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 1, in one short transaction (idempotent)."""
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        for statement in tables.postings_statements(record.layout, ready=False):
            await conn.execute(statement)


async def backfill_batch(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> int:
    """Step 2, one batch; returns the rows given an ord (0 when done)."""
    cur = await conn.execute(
        sql.SQL(
            "UPDATE {t} SET ord = nextval({seq})"
            " WHERE id IN (SELECT id FROM {t} WHERE ord IS NULL LIMIT %s FOR UPDATE SKIP LOCKED)"
        ).format(t=sql.Identifier(record.table_name), seq=sql.Literal(tables.ord_sequence(record.table_name))),
        [BACKFILL_BATCH],
    )
    return cur.rowcount


async def build_index(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 3, outside any transaction (CREATE INDEX CONCURRENTLY can't run in one)."""
    await tables.build_index_concurrently(
        conn,
        tables.ord_index_name(record.table_name),
        tables.ord_index_statement(record.table_name, concurrently=True),
    )


async def mark_ready(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 3."""
    await conn.execute(tables.postings_ready_statement(record.table_name))


async def drop_older(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Step 3, after `mark_ready`: 0400's and 0410's postings and triggers go, in one short transaction."""
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        for statement in tables.drop_older_postings_statements(record.table_name):
            await conn.execute(statement)


async def upgrade(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> bool:
    """All steps for one store on `conn` (autocommit, idle). False when another replica holds it, or when its
    table is locked for longer than LOCK_TIMEOUT (tried again later)."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [_lock_key(record.id)])
    row = await cur.fetchone()
    if not row or not row[0]:
        return False
    try:
        filled = 0
        if not await _marked_ready(conn, record.table_name):
            try:
                await create(conn, record)
            except pg_errors.LockNotAvailable:
                log.info("postings upgrade of store %s postponed: its table is busy", record.id)
                return False
            while batch := await backfill_batch(conn, record):
                filled += batch
            await build_index(conn, record)
            await mark_ready(conn, record)
        try:
            await drop_older(conn, record)
        except pg_errors.LockNotAvailable:
            log.info("postings upgrade of store %s: the old postings stay until its table is not busy", record.id)
            return False
        log.info("postings: store %s upgraded (%d rows given postings)", record.id, filled)
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", [_lock_key(record.id)])
