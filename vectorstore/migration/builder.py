"""Build a store's new generation beside the active one, replay what changed meanwhile, swap atomically.

The active generation keeps taking every write and answering every search while the new one is built: the
builder copies rows the new table lacks (re-embedding their text with the new model when the model changed,
else copying the vectors), in batches committed one by one, so a kill -9 loses at most the batch in flight and
a restart continues where the new table stops (nothing it holds is embedded again). Writes that land in the
active table meanwhile (uploads, deletes, attribute updates, source syncs, /embeddings rows) are replayed by
comparing the two tables: rows missing are copied, rows gone are deleted, changed attributes are copied over.

The swap takes the store's write lock exclusively (writers hold it shared, see storage/stores.py), replays the
last changes, checks that the new table holds exactly the active table's rows, and points `vector_stores` at
the new table in the same transaction: a search reads the registry row once, so it sees the old generation or
the new one, never a mix. The old generation is kept (`migration.keep_previous`) for a swap back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from vectorstore.errors import ApiError
from vectorstore.migration import records
from vectorstore.migration.records import Migration
from vectorstore.migration.shapes import Shape
from vectorstore.search import statistics
from vectorstore.storage import database, stores, tables

log = logging.getLogger("vectorstore")

MIGRATOR_LOCK_NAMESPACE = 0x7673_6D67  # "vsmg": held (session-level) by the one replica migrating a store
# The swap waits this long for writers in flight before it gives way and tries again (longer each time), so
# a long ingestion transaction delays the swap instead of stalling every other writer behind it.
SWAP_LOCK_TIMEOUTS_MS = (500, 1000, 2000, 5000, 10000, 30000)
# Grace before a replaced generation may be dropped even with keep_previous 0: searches that read the registry
# just before the swap (and replicas' short record caches) still finish on it.
MIN_KEEP_SECONDS = 60.0
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
CATCH_UP_PASSES = 5
SMALL_PASS = 256

Embed = Callable[[list[str], str, int], Awaitable[list[list[float]]]]
"""texts, model, dimensions -> vectors (the server's embedding client, errors redacted)."""


@dataclass(frozen=True)
class Limits:
    """`migration:` in the spec (per store, else top level)."""

    keep_previous_seconds: float = 86400.0
    concurrency: int = 2
    """Embedding requests in flight for one store's migration."""
    max_tokens_per_minute: int = 0
    """0: unlimited. Estimated tokens (4 characters a token) sent to the upstream per minute."""
    batch_size: int = 64
    """Texts per embedding request (`embedding.batch_size`)."""


class Paused(Exception):
    """The upstream refused a chunk (not a rate limit, not a transient failure): the store's migration waits."""


class Gone(Exception):
    """The migration was cancelled or replaced (its table is gone), or its store was deleted."""


def estimated_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class _TokenBucket:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.level = float(per_minute)
        self.at = time.monotonic()

    async def take(self, tokens: int) -> None:
        if self.per_minute <= 0:
            return
        # A request larger than a minute's budget waits for a full bucket, then goes (it can't be split here).
        need = min(tokens, self.per_minute)
        while True:
            now = time.monotonic()
            self.level = min(self.per_minute, self.level + (now - self.at) * self.per_minute / 60.0)
            self.at = now
            if self.level >= need:
                self.level -= tokens
                return
            await asyncio.sleep((need - self.level) * 60.0 / self.per_minute)


@dataclass
class _Row:
    id: str
    file_id: str | None
    chunk_index: int
    filename: str | None
    content: str
    attributes: dict[str, Any]
    embedding: Any


class Builder:
    """Moves one store to its migration's target. `run` returns when it swapped, paused or was cancelled."""

    def __init__(self, dsn: str, embed: Embed, limits: Limits, *, poll_seconds: float = 1.0) -> None:
        self.dsn = dsn
        self.embed = embed
        self.limits = limits
        self.bucket = _TokenBucket(limits.max_tokens_per_minute)
        self.poll_seconds = poll_seconds

    async def run(self, store_id: str) -> str:
        """Take the store's migrator lock (or return 'busy' when another replica has it) and migrate."""
        key = stores.lock_key(store_id)
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as lock_conn:
            cur = await lock_conn.execute("SELECT pg_try_advisory_lock(%s, %s)", [MIGRATOR_LOCK_NAMESPACE, key])
            row = await cur.fetchone()
            if not (row and row[0]):
                return "busy"
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                await database.configure_connection(conn)
                try:
                    return await self._migrate(conn, store_id)
                except Gone as exc:
                    log.info("migration of store %s: stopped (%s)", store_id, exc)
                    return "gone"
            # Leaving the connection releases the session lock.

    async def _migrate(self, conn: psycopg.AsyncConnection[Any], store_id: str) -> str:
        migration = await records.get(conn, store_id)
        if migration is None or migration.phase not in records.RUNNABLE or migration.build_table is None:
            return "nothing to do"
        record = await stores.get(conn, store_id)
        if record is None:
            raise Gone("the store was deleted")
        if Shape.of_record(record) != migration.source:
            raise Gone("the store's active generation is not the one this migration started from")
        source = record.layout
        target = migration.target.layout(store_id, migration.build_table)
        await self._ensure_table(conn, target)
        total = await _count(conn, source.table)
        done = await _count(conn, target.table)
        started = migration.started_at or time.time()
        await records.update(
            conn,
            store_id,
            {"phase": "building", "chunks_total": total, "chunks_done": done, "started_at": started},
        )
        log.info(
            "migration of store %s: building %s (%s; %d of %d chunks already there)",
            store_id,
            target.table,
            migration.reason or "spec changed",
            done,
            total,
        )
        try:
            # The first pass copies (nearly) everything; each later one what was written during the one before.
            # Under a steady write load that never reaches zero, so after a few passes the swap replays the
            # rest under the store's write lock.
            for _ in range(CATCH_UP_PASSES):
                copied = await self._copy_missing(conn, migration, source, target)
                copied += await self._replay(conn, source, target)
                await self._refresh_total(conn, store_id, source, target)
                if copied <= SMALL_PASS:
                    break
            await self._ensure_index(conn, target)
            await records.update(conn, store_id, {"phase": "swapping"})
            outcome = await self._swap(conn, migration, record, target)
            swapped = await stores.get(conn, store_id)
            if swapped is not None:
                # BM25's statistics and the planner's, for the new table (same rows; new tsvectors if the
                # language changed). Best effort: the store is already serving from it.
                try:
                    await statistics.keep_current(conn, swapped, force=True)
                except psycopg.Error as exc:
                    log.warning("migration of store %s: statistics: %s", store_id, str(exc).strip()[:200])
            return outcome
        except Paused as exc:
            await records.update(conn, store_id, {"phase": "paused", "last_error": str(exc)})
            log.warning("migration of store %s: paused: %s", store_id, exc)
            return "paused"
        except pg_errors.UndefinedTable as exc:
            raise Gone(f"a generation's table is gone: {str(exc).strip()[:200]}") from None

    async def _ensure_table(self, conn: psycopg.AsyncConnection[Any], layout: tables.Layout) -> None:
        if await _exists(conn, layout.table):
            return
        hnsw = tables.index_statements(layout)
        # The HNSW index is built once the rows are in (much faster than growing it row by row); the table,
        # its full-text column and its other indexes come from the same statements that make every store.
        async with conn.transaction():
            for statement in tables.create_table_statements(layout):
                if statement not in hnsw:
                    await conn.execute(statement)

    async def _ensure_index(self, conn: psycopg.AsyncConnection[Any], layout: tables.Layout) -> None:
        if await _exists(conn, f"{layout.table}_hnsw"):
            return
        started = time.perf_counter()
        for statement in tables.index_statements(layout):
            await conn.execute(statement)
        log.info(
            "migration of store %s: index of %s built in %.1fs",
            layout.store_id,
            layout.table,
            time.perf_counter() - started,
        )

    async def _refresh_total(
        self, conn: psycopg.AsyncConnection[Any], store_id: str, source: tables.Layout, target: tables.Layout
    ) -> None:
        await records.update(
            conn,
            store_id,
            {"chunks_total": await _count(conn, source.table), "chunks_done": await _count(conn, target.table)},
        )

    async def _copy_missing(
        self,
        conn: psycopg.AsyncConnection[Any],
        migration: Migration,
        source: tables.Layout,
        target: tables.Layout,
        *,
        in_transaction: bool = False,
    ) -> int:
        """Copy every row of `source` that `target` lacks; returns how many. Keyset order by id, so each batch
        costs the same however far the build is."""
        copied = 0
        after = ""
        size = max(1, self.limits.batch_size) * max(1, self.limits.concurrency)
        while True:
            rows = await _missing(conn, source, target, after, size, with_vectors=not migration.reembed)
            if not rows:
                return copied
            after = rows[-1].id
            calls = tokens = 0
            if migration.reembed:
                vectors, calls, tokens = await self._embed_rows(migration, rows)
            else:
                vectors = [_as_list(row.embedding) for row in rows]
            chunk_rows = [
                tables.ChunkRow(
                    id=row.id,
                    content=row.content,
                    embedding=vector,
                    file_id=row.file_id,
                    chunk_index=row.chunk_index,
                    filename=row.filename,
                    attributes=row.attributes,
                )
                for row, vector in zip(rows, vectors, strict=True)
            ]
            if in_transaction:
                await tables.copy_chunks(conn, target, chunk_rows)
            else:
                async with conn.transaction():
                    # The migration row first, then the table: reconcile cancelling this migration locks them
                    # in the same order (the row, then DROP TABLE), so the two wait for each other, never
                    # deadlock.
                    await _count_progress(conn, migration.store_id, len(rows), calls, tokens)
                    await tables.copy_chunks(conn, target, chunk_rows)
            copied += len(rows)

    async def _embed_rows(self, migration: Migration, rows: Sequence[_Row]) -> tuple[list[list[float]], int, int]:
        """The rows' text through the new model: `concurrency` requests at once, inside the token budget;
        429s, 5xx and lost connections wait and try again, a refusal pauses the migration."""
        size = max(1, self.limits.batch_size)
        groups = [[row.content for row in rows[i : i + size]] for i in range(0, len(rows), size)]

        async def one(texts: list[str]) -> list[list[float]]:
            tokens = sum(estimated_tokens(text) for text in texts)
            attempt = 0
            while True:
                await self.bucket.take(tokens)
                try:
                    return await self.embed(texts, migration.target.model, migration.target.dimensions)
                except ApiError as exc:
                    status = getattr(exc, "upstream_status", None)
                    # Rate limits, 5xx and lost connections pass; anything else (a 4xx refusal such as too
                    # many tokens, a wrong answer) would fail again the same way: the store waits for a person.
                    if not (status is None or status in (408, 429) or status >= 500):
                        raise Paused(f"the embedding upstream refused a batch of chunks: {exc.message}") from None
                    delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                    attempt += 1
                    log.warning(
                        "migration of store %s: embedding failed (%s); retrying in %.0fs",
                        migration.store_id,
                        exc.message,
                        delay,
                    )
                    await _note_error(self.dsn, migration.store_id, exc.message)
                    await asyncio.sleep(delay)

        results = await asyncio.gather(*(one(texts) for texts in groups))
        tokens = sum(estimated_tokens(row.content) for row in rows)
        return [vector for group in results for vector in group], len(groups), tokens

    async def _replay(self, conn: psycopg.AsyncConnection[Any], source: tables.Layout, target: tables.Layout) -> int:
        """Deletes and attribute updates made in the active table since its rows were copied; a row whose text
        changed under the same id is removed here and copied again by the next pass. Returns rows removed."""
        s, t = source.ident, target.ident
        removed = await conn.execute(
            sql.SQL("DELETE FROM {t} d WHERE NOT EXISTS (SELECT 1 FROM {s} o WHERE o.id = d.id)").format(s=s, t=t)
        )
        changed = await conn.execute(
            sql.SQL(
                "DELETE FROM {t} d USING {s} o WHERE o.id = d.id AND (o.content IS DISTINCT FROM d.content"
                " OR o.file_id IS DISTINCT FROM d.file_id OR o.filename IS DISTINCT FROM d.filename"
                " OR o.chunk_index <> d.chunk_index)"
            ).format(s=s, t=t)
        )
        await conn.execute(
            sql.SQL(
                "UPDATE {t} d SET attributes = o.attributes FROM {s} o"
                " WHERE o.id = d.id AND o.attributes IS DISTINCT FROM d.attributes"
            ).format(s=s, t=t)
        )
        if removed.rowcount:
            log.debug("migration of store %s: %d deleted rows replayed", target.store_id, removed.rowcount)
        # Rows removed because their text changed must be copied again: that is work left for the next pass.
        return changed.rowcount

    async def _swap(
        self,
        conn: psycopg.AsyncConnection[Any],
        migration: Migration,
        record: stores.StoreRecord,
        target: tables.Layout,
    ) -> str:
        store_id = record.id
        for attempt, timeout_ms in enumerate(SWAP_LOCK_TIMEOUTS_MS * 100):
            try:
                async with conn.transaction():
                    await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{timeout_ms}ms")))
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, %s)",
                        [stores.WRITE_LOCK_NAMESPACE, stores.lock_key(store_id)],
                    )
                    await conn.execute("SET LOCAL lock_timeout = 0")
                    current = await records.get(conn, store_id, for_update=True)
                    if current is None or current.build_table != migration.build_table or current.phase != "swapping":
                        raise Gone("the migration was cancelled or replaced before its swap")
                    live = await stores.get(conn, store_id)
                    if live is None:
                        raise Gone("the store was deleted")
                    # The last writes, under the lock: none can land in the active table until we commit.
                    while await self._copy_missing(conn, migration, record.layout, target, in_transaction=True) or (
                        await self._replay(conn, record.layout, target)
                    ):
                        pass
                    old_rows = await _count(conn, record.layout.table)
                    new_rows = await _count(conn, target.table)
                    if old_rows != new_rows:
                        raise RuntimeError(
                            f"the new generation holds {new_rows} rows, the active one {old_rows}; not swapping"
                        )
                    started = time.perf_counter()
                    await stores.update_fields(
                        conn,
                        store_id,
                        {**migration.target.registry_values(), "table_name": target.table, "text_search": "ready"},
                    )
                    swap_seconds = time.perf_counter() - started
                    now = time.time()
                    await records.update(
                        conn,
                        store_id,
                        {
                            "phase": "done",
                            "build_table": None,
                            "chunks_done": new_rows,
                            "chunks_total": new_rows,
                            "finished_at": now,
                            "swap_seconds": swap_seconds,
                            "last_error": None,
                            "previous": migration.source.to_json(),
                            "previous_table": record.table_name,
                            "previous_until": now + max(self.limits.keep_previous_seconds, MIN_KEEP_SECONDS),
                        },
                    )
            except pg_errors.LockNotAvailable:
                log.info(
                    "migration of store %s: writers held the store for %d ms; replaying and trying the swap again",
                    store_id,
                    timeout_ms,
                )
                await self._copy_missing(conn, migration, record.layout, target)
                await self._replay(conn, record.layout, target)
                continue
            log.info(
                "migration of store %s: swapped to %s (%d chunks, swap %.1f ms after %d attempt(s)); the previous"
                " generation %s is kept for %.0fs",
                store_id,
                target.table,
                new_rows,
                swap_seconds * 1000,
                attempt + 1,
                record.table_name,
                max(self.limits.keep_previous_seconds, MIN_KEEP_SECONDS),
            )
            return "done"
        raise RuntimeError("unreachable")


async def _note_error(dsn: str, store_id: str, message: str) -> None:
    """The last error, visible in the status while the builder waits to retry."""
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            # The swap's transaction holds the migration row while it replays the last writes; a retry in there
            # must not wait on it (that wait would be on ourselves). The note is skipped instead.
            await conn.execute("SET lock_timeout = '200ms'")
            await records.update(conn, store_id, {"last_error": message[:500]})
    except psycopg.Error:
        pass


async def _count_progress(
    conn: psycopg.AsyncConnection[Any], store_id: str, rows: int, calls: int, tokens: int
) -> None:
    await conn.execute(
        "UPDATE store_migrations SET chunks_done = chunks_done + %s, embedding_calls = embedding_calls + %s,"
        " embedding_tokens = embedding_tokens + %s, last_error = NULL, updated_at = extract(epoch FROM now())"
        " WHERE vector_store_id = %s",
        [rows, calls, tokens, store_id],
    )


async def _missing(
    conn: psycopg.AsyncConnection[Any],
    source: tables.Layout,
    target: tables.Layout,
    after: str,
    limit: int,
    *,
    with_vectors: bool,
) -> list[_Row]:
    cur = await conn.execute(
        sql.SQL(
            "SELECT o.id, o.file_id, o.chunk_index, o.filename, o.content, o.attributes, {vec} FROM {s} o"
            " WHERE o.id > %s AND NOT EXISTS (SELECT 1 FROM {t} d WHERE d.id = o.id) ORDER BY o.id LIMIT %s"
        ).format(vec=sql.SQL("o.embedding" if with_vectors else "NULL"), s=source.ident, t=target.ident),
        [after, limit],
    )
    return [_Row(*row) for row in await cur.fetchall()]


def _as_list(value: Any) -> list[float]:
    to_list = getattr(value, "to_list", None)
    if to_list is not None:
        return [float(x) for x in to_list()]
    return [float(x) for x in value]


async def _count(conn: psycopg.AsyncConnection[Any], table: str) -> int:
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=sql.Identifier(table)))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _exists(conn: psycopg.AsyncConnection[Any], relation: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [relation])
    row = await cur.fetchone()
    return bool(row and row[0])
