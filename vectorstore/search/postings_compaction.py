"""Merge the rows each write adds to a store's keyword postings (migration 0420) into a few rows a lexeme.

Every statement that writes chunks adds one row to `<t>_blocks` per lexeme it holds (seg >= 2), and a delete
records the chunk in `<t>_gone` and leaves its postings. A search reads every row of its terms and drops the
gone ords, so both cost it time as they pile up. Compaction, in the background (search/service.py), has two
levels, as a log-structured merge does:

- minor (once MINOR_SEGMENTS statements or MINOR_ROWS rows are waiting): the recent rows and the seg-1 rows of
  the same lexemes become one seg-1 row a lexeme. It rewrites only what was written since the last major one.
- major (when the seg-1 rows hold more than MAJOR_RATIO of the base's postings, or chunks are gone): every row
  of each lexeme involved becomes one seg-0 row without the gone chunks' postings, and those gone rows are
  dropped. A gone row names its chunk's lexemes, so only their rows are rewritten.

Each runs in one REPEATABLE READ transaction under a per-store advisory lock: the rows it deletes are exactly
the rows it read and merged, rows written meanwhile stay for the next pass, and a search sees either the rows
before or after. A chunk's gone row is visible only after its insert committed, so every posting of a gone
chunk is among the rows a major compaction read: forgetting the gone rows it read is safe.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from vectorstore.storage import stores, tables

log = logging.getLogger("vectorstore")

MINOR_SEGMENTS = 16
"""Statements' rows waiting before a minor compaction: a common lexeme has about one row from each."""
MINOR_ROWS = 50_000
MAJOR_RATIO = 0.25
MAJOR_GONE = 200
"""Deleted chunks that make a major compaction due at once (fewer wait for the next one that is due anyway,
or for writes to stop: see `due`)."""

_POSTING = np.dtype(">u8")


def _lock_key(store_id: str) -> int:
    digest = hashlib.sha256(b"vectorstore-compaction:" + store_id.encode()).digest()[:8]
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class Backlog:
    segments: int
    rows: int
    gone: int


async def backlog(conn: psycopg.AsyncConnection[Any], table: str) -> Backlog | None:
    """What is waiting in `table`'s postings; None when it has no 0420 postings."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [tables.blocks_table(table)])
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute(
        sql.SQL(
            "SELECT (SELECT count(DISTINCT seg) FROM {b} WHERE seg >= 2),"
            " (SELECT count(*) FROM (SELECT 1 FROM {b} WHERE seg >= 2 LIMIT {cap}) AS r),"
            " (SELECT count(*) FROM (SELECT 1 FROM {g} LIMIT {cap}) AS g)"
        ).format(
            b=sql.Identifier(tables.blocks_table(table)),
            g=sql.Identifier(tables.gone_table(table)),
            cap=sql.Literal(MINOR_ROWS),
        )
    )
    counts = await cur.fetchone()
    assert counts is not None
    return Backlog(int(counts[0]), int(counts[1]), int(counts[2]))


def due(waiting: Backlog) -> str | None:
    """ "major", "minor" or None. Gone chunks alone wait for MAJOR_GONE of them, or for writes to have stopped
    (no recent rows), so a store that deletes a file now and then is compacted once it is quiet."""
    if waiting.gone >= MAJOR_GONE or (waiting.gone and not waiting.rows):
        return "major"
    if waiting.segments >= MINOR_SEGMENTS or waiting.rows >= MINOR_ROWS:
        return "minor"
    return None


async def _level_sizes(conn: psycopg.AsyncConnection[Any], b: sql.Identifier) -> tuple[int, int]:
    cur = await conn.execute(
        sql.SQL(
            "SELECT coalesce(sum(n) FILTER (WHERE seg = 0), 0), coalesce(sum(n) FILTER (WHERE seg = 1), 0) FROM {b}"
        ).format(b=b)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def compact(conn: psycopg.AsyncConnection[Any], table: str, store_id: str, kind: str) -> int:
    """One compaction of `kind` ("minor" or "major") on `conn` (autocommit, idle). Returns the rows written, or
    -1 when another server holds the store's compaction. A minor one whose seg-1 rows outgrow MAJOR_RATIO of
    the base goes on as a major one."""
    b = sql.Identifier(tables.blocks_table(table))
    g = sql.Identifier(tables.gone_table(table))
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_key(store_id)])
        locked = await cur.fetchone()
        if not locked or not locked[0]:
            return -1
        if kind == "minor":
            base, recent = await _level_sizes(conn, b)
            if recent > MAJOR_RATIO * base:
                kind = "major"
        cur = await conn.execute(sql.SQL("SELECT ord, lexemes FROM {g}").format(g=g))
        gone_rows = await cur.fetchall()
        gone = np.array([int(r[0]) for r in gone_rows], dtype=np.uint64)
        if kind == "major":
            gone_lexemes = sorted({lexeme for r in gone_rows for lexeme in r[1]})
            deleted = sql.SQL(
                "DELETE FROM {b} WHERE lexeme <> '' AND lexeme IN ("
                " SELECT lexeme FROM {b} WHERE seg >= 1 UNION SELECT unnest(%s::text[]))"
                " RETURNING lexeme, postings"
            ).format(b=b)
            params: list[Any] = [gone_lexemes]
            target = 0
        else:
            deleted = sql.SQL(
                "DELETE FROM {b} WHERE seg >= 1 AND lexeme IN (SELECT lexeme FROM {b} WHERE seg >= 2)"
                " RETURNING lexeme, postings"
            ).format(b=b)
            params = []
            target = 1
        async with conn.cursor(binary=True) as bcur:
            await bcur.execute(deleted, params)
            runs: dict[str, list[bytes]] = defaultdict(list)
            for lexeme, postings in await bcur.fetchall():
                runs[lexeme].append(postings)
        written = 0
        async with (
            conn.cursor() as ccur,
            ccur.copy(sql.SQL("COPY {b} (lexeme, seg, n, postings) FROM STDIN (FORMAT BINARY)").format(b=b)) as copy,
        ):
            copy.set_types(["text", "int8", "int4", "bytea"])
            for lexeme in sorted(runs):
                packed = np.frombuffer(b"".join(runs[lexeme]), dtype=_POSTING)
                if gone.size:
                    packed = packed[~np.isin(packed >> np.uint64(32), gone)]
                if packed.size:
                    await copy.write_row((lexeme, target, int(packed.size), packed.tobytes()))
                    written += 1
        # The totals' rows become one (their sum), so a search adds up a few.
        totals = sql.Identifier(tables.totals_table(table))
        await conn.execute(
            sql.SQL(
                "WITH d AS (DELETE FROM {s} RETURNING chunks, lengths)"
                " INSERT INTO {s} (chunks, lengths) SELECT sum(chunks), sum(lengths) FROM d HAVING count(*) > 0"
            ).format(s=totals)
        )
        if kind == "major" and gone_rows:
            await conn.execute(
                sql.SQL("DELETE FROM {g} WHERE ord = ANY(%s)").format(g=g), [[int(r[0]) for r in gone_rows]]
            )
    # What autovacuum would do later, now: the rows just deleted leave dead index entries every search of their
    # lexemes would step over, and the planner's row counts are a whole table of recent rows off (measured on
    # Cranfield: 1.3 ms a fetch before, against about 0.3 after).
    await conn.execute(sql.SQL("VACUUM (ANALYZE) {b}").format(b=b))
    log.debug("postings of store %s: %s compaction, %d rows from %d lexemes", store_id, kind, written, len(runs))
    return written


async def compact_if_due(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> str | None:
    """Compact the store's postings if a compaction is due; returns its kind."""
    waiting = await backlog(conn, record.table_name)
    kind = due(waiting) if waiting is not None else None
    if kind is not None:
        await compact(conn, record.table_name, record.id, kind)
    return kind


async def compact_fully(conn: psycopg.AsyncConnection[Any], table: str, store_id: str) -> None:
    """Everything into one row a lexeme (benches and tests: what a quiet store comes to)."""
    await compact(conn, table, store_id, "minor")
    await compact(conn, table, store_id, "major")
