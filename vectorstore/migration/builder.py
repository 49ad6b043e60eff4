"""Build a store's new generation beside the active one, replay what changed meanwhile, swap atomically.

The active generation keeps taking every write and answering every search while the new one is built: the
builder copies rows the new table lacks (re-embedding their text with the new model when the model changed,
else copying the vectors), in batches committed one by one, so a kill -9 loses at most the batch in flight and
a restart continues where the new table stops (nothing it holds is embedded again). Writes that land in the
active table meanwhile (uploads, deletes, attribute updates, source syncs, /embeddings rows) are replayed by
comparing the two tables: rows missing are copied, rows gone are deleted, changed attributes are copied over.

A change of the declared chunking re-chunks, file by file, the files the store's default chunked (those
attached without a `chunking_strategy` of their own, and every source's files): each is extracted again from
its stored bytes and cut with the new chunking; a chunk whose text is unchanged takes the old chunk's vector
when the model is unchanged, the others are embedded. A file's new chunks and its entry in
`store_migration_files` are committed together, so a restart re-chunks only the files not yet there. Rows no
such file owns (the prototype's /embeddings rows have no file, files attached with their own strategy) are
carried over row by row as above.

The swap takes the store's write lock exclusively (writers hold it shared, see storage/stores.py), replays the
last changes, checks that the new table holds exactly the active table's rows, and points `vector_stores` at
the new table in the same transaction: a search reads the registry row once, so it sees the old generation or
the new one, never a mix. The old generation is kept (`migration.keep_previous`) for a swap back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from vectorstore.errors import ApiError
from vectorstore.ingest.chunking import Chunk, chunk_text
from vectorstore.ingest.extract import ExtractError
from vectorstore.ingest.sandbox import Extract, in_thread
from vectorstore.migration import records
from vectorstore.migration.records import Migration
from vectorstore.migration.shapes import Shape
from vectorstore.search import statistics
from vectorstore.storage import database, stores, tables
from vectorstore.storage.strategy import Strategy

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
FILES_PER_BATCH = 16
"""Files re-chunked per committed batch (fewer when their chunks fill `batch_size` x `concurrency`)."""

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

    def __init__(
        self, dsn: str, embed: Embed, limits: Limits, *, poll_seconds: float = 1.0, extract: Extract = in_thread
    ) -> None:
        self.dsn = dsn
        self.embed = embed
        self.extract = extract
        """How a re-chunked file's stored bytes become text again (the server's Sandbox, as for ingestion)."""
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
        files_total, files_done, _chunks = await _file_counts(conn, migration, target)
        await records.update(
            conn,
            store_id,
            {
                "phase": "building",
                "chunks_total": total,
                "chunks_done": done,
                "files_total": files_total,
                "files_done": files_done,
                "started_at": started,
            },
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
                copied = await self._catch_up(conn, migration, source, target)
                await self._refresh_total(conn, migration, source, target)
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
        self, conn: psycopg.AsyncConnection[Any], migration: Migration, source: tables.Layout, target: tables.Layout
    ) -> None:
        files_total, files_done, _chunks = await _file_counts(conn, migration, target)
        await records.update(
            conn,
            migration.store_id,
            {
                "chunks_total": await _count(conn, source.table),
                "chunks_done": await _count(conn, target.table),
                "files_total": files_total,
                "files_done": files_done,
            },
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
            rows = await _missing(conn, migration, source, target, after, size, with_vectors=not migration.reembed)
            if not rows:
                return copied
            after = rows[-1].id
            calls = tokens = 0
            if migration.reembed:
                vectors, calls, tokens = await self._embed_texts(migration, [row.content for row in rows])
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

    async def _embed_texts(self, migration: Migration, texts: Sequence[str]) -> tuple[list[list[float]], int, int]:
        """The texts through the new model: `concurrency` requests at once, inside the token budget;
        429s, 5xx and lost connections wait and try again, a refusal pauses the migration."""
        size = max(1, self.limits.batch_size)
        groups = [list(texts[i : i + size]) for i in range(0, len(texts), size)]

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

        results = await asyncio.gather(*(one(group) for group in groups))
        tokens = sum(estimated_tokens(text) for text in texts)
        return [vector for group in results for vector in group], len(groups), tokens

    async def _replay(
        self,
        conn: psycopg.AsyncConnection[Any],
        migration: Migration,
        source: tables.Layout,
        target: tables.Layout,
    ) -> int:
        """Deletes and attribute updates made in the active table since its rows were copied; a row whose text
        changed under the same id is removed here and copied again by the next pass. Returns rows removed.

        Rows of re-chunked files are the file's new chunks, not copies of the active table's rows: they are
        left out of the row-by-row comparison (`_drop_stale` removes those of a file detached or attached
        again); their attributes follow the file's."""
        s, t = source.ident, target.ident
        moving_o, moving_d = _rechunked(migration, "o"), _rechunked(migration, "d")
        removed = await conn.execute(
            sql.SQL("DELETE FROM {t} d WHERE NOT EXISTS (SELECT 1 FROM {s} o WHERE o.id = d.id) AND NOT {m}").format(
                s=s, t=t, m=moving_d
            )
        )
        changed = await conn.execute(
            sql.SQL(
                "DELETE FROM {t} d USING {s} o WHERE o.id = d.id AND (o.content IS DISTINCT FROM d.content"
                " OR o.file_id IS DISTINCT FROM d.file_id OR o.filename IS DISTINCT FROM d.filename"
                " OR o.chunk_index <> d.chunk_index) AND NOT {m}"
            ).format(s=s, t=t, m=moving_o)
        )
        await conn.execute(
            sql.SQL(
                "UPDATE {t} d SET attributes = o.attributes FROM {s} o"
                " WHERE o.id = d.id AND o.attributes IS DISTINCT FROM d.attributes AND NOT {m}"
            ).format(s=s, t=t, m=moving_o)
        )
        if migration.target.strategy is not None:
            # Every chunk of a file carries the file's attributes (storage/files.update_attributes).
            await conn.execute(
                sql.SQL(
                    "UPDATE {t} d SET attributes = f.attributes FROM vector_store_files f"
                    " JOIN store_migration_files m ON m.table_name = {table} AND m.file_id = f.file_id"
                    " AND m.generation = f.generation"
                    " WHERE f.vector_store_id = {store} AND d.file_id = f.file_id AND d.attributes IS DISTINCT FROM"
                    " f.attributes"
                ).format(t=t, table=sql.Literal(target.table), store=sql.Literal(migration.store_id))
            )
        if removed.rowcount:
            log.debug("migration of store %s: %d deleted rows replayed", target.store_id, removed.rowcount)
        # Rows removed because their text changed must be copied again: that is work left for the next pass.
        return changed.rowcount

    async def _drop_stale(self, conn: psycopg.AsyncConnection[Any], migration: Migration, target: tables.Layout) -> int:
        """Re-chunked files that no longer need it as they were (detached, attached again, deleted): their new
        chunks and their entry go (a file attached again is re-chunked again if it still follows the default).
        Returns the rows removed."""
        if migration.target.strategy is None:
            return 0
        cur = await conn.execute(
            sql.SQL(
                "WITH stale AS (DELETE FROM store_migration_files m WHERE m.table_name = {table} AND NOT EXISTS"
                " (SELECT 1 FROM vector_store_files f WHERE f.file_id = m.file_id AND f.generation = m.generation"
                " AND {moving}) RETURNING m.file_id)"
                " DELETE FROM {t} d USING stale WHERE d.file_id = stale.file_id"
            ).format(table=sql.Literal(target.table), moving=_moving(migration, "f"), t=target.ident)
        )
        return cur.rowcount

    async def _rechunk_missing(
        self,
        conn: psycopg.AsyncConnection[Any],
        migration: Migration,
        source: tables.Layout,
        target: tables.Layout,
        *,
        in_transaction: bool = False,
    ) -> int:
        """Cut every file that follows the store's default and isn't in the target yet with the target's chunking,
        from its stored bytes; returns how many files. Batches of files, each committed with its entries in
        `store_migration_files` (a kill -9 loses at most the batch in flight)."""
        strategy = migration.target.strategy
        if strategy is None:
            return 0
        budget = max(1, self.limits.batch_size) * max(1, self.limits.concurrency)
        done = 0
        after = 0
        while True:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT f.seq, f.file_id, f.generation, f.attributes, fi.filename, fi.content_type"
                    " FROM vector_store_files f JOIN files fi ON fi.id = f.file_id WHERE {moving} AND f.seq > %s"
                    " AND NOT EXISTS (SELECT 1 FROM store_migration_files m WHERE m.table_name = {table}"
                    " AND m.file_id = f.file_id) ORDER BY f.seq LIMIT %s"
                ).format(moving=_moving(migration, "f"), table=sql.Literal(target.table)),
                [after, FILES_PER_BATCH],
            )
            found = await cur.fetchall()
            if not found:
                return done
            batch: list[_Recut] = []
            for seq, file_id, generation, attributes, filename, content_type in found:
                after = seq
                content = await _file_bytes(conn, file_id)
                if content is None:
                    continue  # deleted meanwhile: not in the set any more
                try:
                    text = await self.extract(content, filename, content_type)
                except ExtractError as exc:
                    raise Paused(
                        f"file {file_id} ({filename!r}) could not be extracted again to re-chunk it: {exc}"
                    ) from None
                del content
                chunks = await asyncio.to_thread(_cut, text, strategy)
                batch.append(_Recut(file_id, int(generation), dict(attributes or {}), filename, chunks))
                if sum(len(item.chunks) for item in batch) >= budget:
                    break
            if not batch:
                continue
            calls, tokens = await self._embed_recut(conn, migration, source, batch)
            rows = [
                tables.ChunkRow(
                    id=f"{item.file_id}:{chunk.index}",
                    content=chunk.text,
                    embedding=vector,
                    file_id=item.file_id,
                    chunk_index=chunk.index,
                    filename=item.filename,
                    attributes=item.attributes,
                )
                for item in batch
                for chunk, vector in zip(item.chunks, item.vectors, strict=True)
            ]
            vector_bytes = (2 if target.vector_type == "halfvec" else 4) * target.dimensions
            marks = [
                (
                    target.table,
                    item.file_id,
                    migration.store_id,
                    item.generation,
                    strategy.max_chunk_size_tokens,
                    strategy.chunk_overlap_tokens,
                    len(item.chunks),
                    sum(len(chunk.text.encode()) for chunk in item.chunks) + vector_bytes * len(item.chunks),
                )
                for item in batch
            ]
            ids = [item.file_id for item in batch]
            async with contextlib.nullcontext() if in_transaction else conn.transaction():
                # The migration row first, then the table, as in `_copy_missing`.
                await _count_progress(conn, migration.store_id, len(rows), calls, tokens, files=len(batch))
                # Rows of these files carried over one by one while they were attached another way.
                await conn.execute(sql.SQL("DELETE FROM {t} WHERE file_id = ANY(%s)").format(t=target.ident), [ids])
                await tables.copy_chunks(conn, target, rows)
                async with conn.cursor() as mark:
                    await mark.executemany(
                        "INSERT INTO store_migration_files (table_name, file_id, vector_store_id, generation,"
                        " max_chunk_size_tokens, chunk_overlap_tokens, chunks, usage_bytes)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        marks,
                    )
            done += len(batch)

    async def _embed_recut(
        self, conn: psycopg.AsyncConnection[Any], migration: Migration, source: tables.Layout, batch: list[_Recut]
    ) -> tuple[int, int]:
        """Vectors for the new chunks: a chunk whose text one of the file's old chunks had keeps that vector when
        the model is unchanged; the others are embedded. Returns embedding calls and tokens."""
        reuse: dict[tuple[str, str], list[float]] = {}
        if not migration.reembed:
            cur = await conn.execute(
                sql.SQL("SELECT file_id, content, embedding FROM {s} WHERE file_id = ANY(%s)").format(s=source.ident),
                [[item.file_id for item in batch]],
            )
            for file_id, content, embedding in await cur.fetchall():
                reuse[(file_id, content)] = _as_list(embedding)
        wanted = [chunk.text for item in batch for chunk in item.chunks if (item.file_id, chunk.text) not in reuse]
        vectors, calls, tokens = await self._embed_texts(migration, wanted) if wanted else ([], 0, 0)
        fresh = iter(vectors)
        for item in batch:
            item.vectors = [
                reuse[(item.file_id, chunk.text)] if (item.file_id, chunk.text) in reuse else next(fresh)
                for chunk in item.chunks
            ]
        return calls, tokens

    async def _move_files(
        self, conn: psycopg.AsyncConnection[Any], migration: Migration, previous_table: str, target: tables.Layout
    ) -> int:
        """In the swap's transaction: the re-chunked files take their new chunking, chunk count and size. The
        generation swapped out keeps their old chunks: its entries remember them, so a swap back re-chunks none
        of them. Returns the files moved."""
        strategy = migration.target.strategy
        if strategy is None:
            return 0
        params = {"table": target.table, "previous": previous_table, "store": migration.store_id}
        await conn.execute(
            "INSERT INTO store_migration_files (table_name, file_id, vector_store_id, generation,"
            " max_chunk_size_tokens, chunk_overlap_tokens, chunks, usage_bytes)"
            " SELECT %(previous)s, f.file_id, f.vector_store_id, f.generation, f.max_chunk_size_tokens,"
            " f.chunk_overlap_tokens, f.chunk_count, f.usage_bytes FROM vector_store_files f"
            " JOIN store_migration_files m ON m.table_name = %(table)s AND m.file_id = f.file_id"
            " AND m.generation = f.generation WHERE f.vector_store_id = %(store)s"
            " ON CONFLICT (table_name, file_id) DO UPDATE SET generation = EXCLUDED.generation,"
            " max_chunk_size_tokens = EXCLUDED.max_chunk_size_tokens,"
            " chunk_overlap_tokens = EXCLUDED.chunk_overlap_tokens, chunks = EXCLUDED.chunks,"
            " usage_bytes = EXCLUDED.usage_bytes",
            params,
        )
        moved = await conn.execute(
            "UPDATE vector_store_files f SET max_chunk_size_tokens = m.max_chunk_size_tokens,"
            " chunk_overlap_tokens = m.chunk_overlap_tokens, chunk_count = m.chunks, usage_bytes = m.usage_bytes"
            " FROM store_migration_files m WHERE m.table_name = %(table)s AND m.file_id = f.file_id"
            " AND m.generation = f.generation AND f.vector_store_id = %(store)s",
            params,
        )
        # Files queued and not ingested yet: no worker is between reading one and committing its chunks (ingestion
        # holds the store's write lock shared, this swap holds it exclusively), so they are cut the new way.
        await conn.execute(
            "UPDATE vector_store_files SET max_chunk_size_tokens = %s, chunk_overlap_tokens = %s"
            " WHERE vector_store_id = %s AND chunking_default AND status = 'in_progress'"
            " AND (max_chunk_size_tokens, chunk_overlap_tokens) <> (%s, %s)",
            [
                strategy.max_chunk_size_tokens,
                strategy.chunk_overlap_tokens,
                migration.store_id,
                strategy.max_chunk_size_tokens,
                strategy.chunk_overlap_tokens,
            ],
        )
        await conn.execute("DELETE FROM store_migration_files WHERE table_name = %s", [target.table])
        return moved.rowcount

    async def _catch_up(
        self,
        conn: psycopg.AsyncConnection[Any],
        migration: Migration,
        source: tables.Layout,
        target: tables.Layout,
        *,
        in_transaction: bool = False,
    ) -> int:
        """One pass over what changed: stale re-chunked files, files to re-chunk, rows to copy, rows to replay.
        Returns the work done (0: the target is level with the active table)."""
        work = await self._drop_stale(conn, migration, target)
        work += await self._rechunk_missing(conn, migration, source, target, in_transaction=in_transaction)
        work += await self._copy_missing(conn, migration, source, target, in_transaction=in_transaction)
        return work + await self._replay(conn, migration, source, target)

    async def _check_complete(
        self, conn: psycopg.AsyncConnection[Any], migration: Migration, source: tables.Layout, target: tables.Layout
    ) -> None:
        """Under the swap's lock: the rows carried over one by one are exactly the active table's, and every file
        to re-chunk is in the target with all its new chunks. Else nothing is swapped (no store with holes)."""
        old_rows = await _count(conn, source.table, where=sql.SQL("NOT {m}").format(m=_rechunked(migration, "o")))
        new_rows = await _count(conn, target.table, where=sql.SQL("NOT {m}").format(m=_rechunked(migration, "o")))
        if old_rows != new_rows:
            raise RuntimeError(f"the new generation holds {new_rows} rows, the active one {old_rows}; not swapping")
        files_total, files_done, chunks = await _file_counts(conn, migration, target)
        recut = await _count(conn, target.table, where=_rechunked(migration, "o"))
        if files_total != files_done or recut != chunks:
            raise RuntimeError(
                f"the new generation holds {files_done} of {files_total} re-chunked files ({recut} of {chunks}"
                " chunks); not swapping"
            )

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
                    while await self._catch_up(conn, migration, record.layout, target, in_transaction=True):
                        pass
                    await self._check_complete(conn, migration, record.layout, target)
                    new_rows = await _count(conn, target.table)
                    started = time.perf_counter()
                    await stores.update_fields(
                        conn,
                        store_id,
                        {**migration.target.registry_values(), "table_name": target.table, "text_search": "ready"},
                    )
                    swap_seconds = time.perf_counter() - started
                    moved = await self._move_files(conn, migration, record.table_name, target)
                    now = time.time()
                    await records.update(
                        conn,
                        store_id,
                        {
                            "phase": "done",
                            "build_table": None,
                            "chunks_done": new_rows,
                            "chunks_total": new_rows,
                            "files_done": moved,
                            "files_total": moved,
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
                await self._catch_up(conn, migration, record.layout, target)
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
    conn: psycopg.AsyncConnection[Any], store_id: str, rows: int, calls: int, tokens: int, *, files: int = 0
) -> None:
    await conn.execute(
        "UPDATE store_migrations SET chunks_done = chunks_done + %s, embedding_calls = embedding_calls + %s,"
        " embedding_tokens = embedding_tokens + %s, files_done = files_done + %s, last_error = NULL,"
        " updated_at = extract(epoch FROM now()) WHERE vector_store_id = %s",
        [rows, calls, tokens, files, store_id],
    )


def _cut(text: str, strategy: Strategy) -> list[Chunk]:
    return list(chunk_text(text, strategy))


@dataclass
class _Recut:
    file_id: str
    generation: int
    attributes: dict[str, Any]
    filename: str
    chunks: list[Chunk]
    vectors: list[list[float]] = field(default_factory=list)


def _moving(migration: Migration, alias: str) -> sql.Composable:
    """SQL: the `vector_store_files` row `alias` is a file to re-chunk into the target: chunked by the store's
    default (not a strategy of its own), ingested, and with another chunking than the target's."""
    strategy = migration.target.strategy
    if strategy is None:
        return sql.SQL("false")
    return sql.SQL(
        "({f}.vector_store_id = {store} AND {f}.chunking_default AND {f}.status = 'completed'"
        " AND ({f}.max_chunk_size_tokens, {f}.chunk_overlap_tokens) <> ({size}, {overlap}))"
    ).format(
        f=sql.Identifier(alias),
        store=sql.Literal(migration.store_id),
        size=sql.Literal(strategy.max_chunk_size_tokens),
        overlap=sql.Literal(strategy.chunk_overlap_tokens),
    )


def _rechunked(migration: Migration, alias: str) -> sql.Composable:
    """SQL: the chunk row `alias` belongs to a file re-chunked into the target (so it is not carried over row by
    row)."""
    if migration.target.strategy is None:
        return sql.SQL("false")
    return sql.SQL("EXISTS (SELECT 1 FROM vector_store_files f WHERE f.file_id = {a}.file_id AND {moving})").format(
        a=sql.Identifier(alias), moving=_moving(migration, "f")
    )


async def _file_counts(
    conn: psycopg.AsyncConnection[Any], migration: Migration, target: tables.Layout
) -> tuple[int, int, int]:
    """Files to re-chunk, those already in the target, and the chunks those hold."""
    if migration.target.strategy is None:
        return 0, 0, 0
    cur = await conn.execute(
        sql.SQL(
            "SELECT count(*), count(m.file_id), COALESCE(sum(m.chunks), 0) FROM vector_store_files f"
            " LEFT JOIN store_migration_files m ON m.table_name = {table} AND m.file_id = f.file_id"
            " AND m.generation = f.generation WHERE {moving}"
        ).format(table=sql.Literal(target.table), moving=_moving(migration, "f"))
    )
    row = await cur.fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


async def _file_bytes(conn: psycopg.AsyncConnection[Any], file_id: str) -> bytes | None:
    cur = await conn.execute("SELECT content FROM files WHERE id = %s", [file_id])
    row = await cur.fetchone()
    return bytes(row[0]) if row else None


async def _missing(
    conn: psycopg.AsyncConnection[Any],
    migration: Migration,
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
            " WHERE o.id > %s AND NOT EXISTS (SELECT 1 FROM {t} d WHERE d.id = o.id) AND NOT {m}"
            " ORDER BY o.id LIMIT %s"
        ).format(
            vec=sql.SQL("o.embedding" if with_vectors else "NULL"),
            s=source.ident,
            t=target.ident,
            m=_rechunked(migration, "o"),
        ),
        [after, limit],
    )
    return [_Row(*row) for row in await cur.fetchall()]


def _as_list(value: Any) -> list[float]:
    to_list = getattr(value, "to_list", None)
    if to_list is not None:
        return [float(x) for x in to_list()]
    return [float(x) for x in value]


async def _count(conn: psycopg.AsyncConnection[Any], table: str, *, where: sql.Composable | None = None) -> int:
    """Rows of `table` (aliased `o`), those matching `where` when given."""
    query = sql.SQL("SELECT count(*) FROM {t} o").format(t=sql.Identifier(table))
    if where is not None:
        query = sql.SQL("{q} WHERE {w}").format(q=query, w=where)
    cur = await conn.execute(query)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _exists(conn: psycopg.AsyncConnection[Any], relation: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [relation])
    row = await cur.fetchone()
    return bool(row and row[0])
