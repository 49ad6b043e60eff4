"""Keep each store's planner statistics current after loads, and copy out what BM25 needs from them.

A freshly loaded table has no statistics until autovacuum gets to it (it wakes once a minute and then has every
table of the cluster to look at). Until then the planner does not know the table is big and sorts the whole
table instead of walking the HNSW index: measured from outside, 4,000 rows x 768 dimensions took 29-37 ms a
search right after a load and 4-7 ms after ANALYZE, and the gap grows with the table. So whoever writes rows
(the ingestion worker after each file, the prototype's /embeddings routes) calls `keep_current` afterwards: it
runs ANALYZE when the table changed by more than `CHANGE_FRACTION` of its rows (at least `MIN_CHANGED_ROWS`)
since the last one, or was never analyzed. The test reads the plan (tests/search/test_statistics.py).

The same ANALYZE gives keyword search its document frequencies: the most common lexemes of `fts` and the
fraction of rows holding each (pg_stats.most_common_elems), which are copied into `text_stats`, with the row
count and the mean lexemes per row, in one transaction.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import psycopg
from psycopg import sql

from vectorstore.storage import stores

log = logging.getLogger("vectorstore")

CHANGE_FRACTION = 0.1
MIN_CHANGED_ROWS = 50
# Rows read to estimate the mean number of lexemes per row.
LENGTH_SAMPLE_ROWS = 20000


async def flush_table_counters(conn: psycopg.AsyncConnection[Any]) -> None:
    """Make this backend's row counters visible to `keep_current` as soon as its transaction ends.

    PostgreSQL publishes a backend's table counters (pg_stat_user_tables) at most once a second; a writer calls
    this inside its transaction so the check that follows its commit sees its own rows.
    """
    if conn.info.server_version >= 150000:
        await conn.execute("SELECT pg_stat_force_next_flush()")


async def needs_analyze(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    cur = await conn.execute(
        "SELECT n_mod_since_analyze, greatest(c.reltuples, 0), coalesce(last_analyze, last_autoanalyze) IS NULL"
        " FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid WHERE s.relid = to_regclass(%s)",
        [table],
    )
    row = await cur.fetchone()
    if row is None:
        return False
    changed, rows, never = int(row[0] or 0), float(row[1]), bool(row[2])
    if never:
        return changed > 0
    return changed >= max(MIN_CHANGED_ROWS, CHANGE_FRACTION * rows)


async def keep_current(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, *, force: bool = False) -> bool:
    """ANALYZE the store's table if it changed materially (or `force`), then refresh its text statistics.

    `conn` must be idle and in autocommit. Returns whether it analyzed. Two writers finishing at once don't
    both analyze: the second finds the lock taken and leaves it to the first.
    """
    if not force and not await needs_analyze(conn, record.table_name):
        return False
    async with conn.transaction():
        await _bound_idle(conn)
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_key(record.table_name)])
        row = await cur.fetchone()
        if not row or not row[0]:
            return False
        await conn.execute(sql.SQL("ANALYZE {t}").format(t=sql.Identifier(record.table_name)))
        await refresh_text_stats(conn, record)
    log.info("statistics: analyzed store %s", record.id)
    return True


async def after_write(conn: psycopg.AsyncConnection[Any], store_id: str) -> None:
    """`keep_current` for a writer whose rows are committed. It never fails the writer: the rows are in, and
    stale statistics only slow searches until the next time. Losing the database still propagates."""
    try:
        store = await stores.get(conn, store_id)
        if store is not None:
            await keep_current(conn, store)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        log.warning("statistics of store %s not refreshed: %s", store_id, str(exc).strip()[:200])


def _lock_key(table: str) -> int:
    """A 64-bit advisory lock key per table, apart from the keys of migrations and reconcile."""
    return int.from_bytes(hashlib.sha256(b"vectorstore-analyze:" + table.encode()).digest()[:8], "big", signed=True)


async def refresh_text_stats(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """Copy the store's row count, and for a table with `fts` its lexeme frequencies and mean lexemes per row,
    into the registry (in the caller's transaction, after an ANALYZE)."""
    cur = await conn.execute(
        "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = to_regclass(%s)", [record.table_name]
    )
    row = await cur.fetchone()
    rows = float(row[0]) if row else 0.0
    if record.text_search != "ready":
        await conn.execute("UPDATE vector_stores SET analyzed_rows = %s WHERE id = %s", [rows, record.id])
        return
    await conn.execute("DELETE FROM text_stats WHERE vector_store_id = %s", [record.id])
    await conn.execute(
        "INSERT INTO text_stats (vector_store_id, lexeme, freq)"
        " SELECT %s, e.lexeme, e.freq FROM pg_stats AS s,"
        " unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(lexeme, freq)"
        " WHERE s.schemaname = current_schema() AND s.tablename = %s AND s.attname = 'fts'"
        " AND e.lexeme IS NOT NULL",
        [record.id, record.table_name],
    )
    sample_percent = min(100.0, LENGTH_SAMPLE_ROWS * 100.0 / max(rows, 1.0))
    await conn.execute(
        sql.SQL(
            "UPDATE vector_stores SET analyzed_rows = %s,"
            # most_common_elem_freqs ends with the minimum and maximum of the listed frequencies.
            " text_min_freq = coalesce((SELECT s.most_common_elem_freqs[array_length(s.most_common_elems, 1) + 1]"
            " FROM pg_stats AS s WHERE s.schemaname = current_schema() AND s.tablename = %s AND s.attname = 'fts'),"
            " 0),"
            " text_avg_length = coalesce((SELECT avg(length(fts)) FROM {t} TABLESAMPLE SYSTEM (%s)), 0)"
            " WHERE id = %s"
        ).format(t=sql.Identifier(record.table_name)),
        [rows, record.table_name, sample_percent, record.id],
    )


# A safeguard, not a cure. A transaction of this module once sat "idle in transaction" for minutes during a hung
# test (the postings' renormalisation, gone since migration 0420, which held its table in SHARE mode). Nothing
# between its statements awaits anything but the connection itself, and every caller's connection is closed or
# returned to the pool on any way out; the likely cause was the test's search load spinning without yielding,
# which starved the event loop this transaction's next statement was waiting in (fixed in tests/migration).
# Should anything starve a server's loop again, PostgreSQL ends the session after this long idle inside these
# transactions, which rolls them back; the caller gets IdleInTransactionSessionTimeout on a closed connection
# (`after_write` logs it; the worker's next statement finds the connection gone and it reconnects).
IDLE_IN_TRANSACTION_TIMEOUT = "30s"


async def _bound_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """In the caller's transaction: PostgreSQL ends the session if the client leaves it idle for too long."""
    await conn.execute(
        sql.SQL("SET LOCAL idle_in_transaction_session_timeout = {}").format(sql.Literal(IDLE_IN_TRANSACTION_TIMEOUT))
    )
