"""The sync: make a store hold exactly the files its sources hold, through the one ingestion pipeline.

For each declared source of a store (docs/sources.md):

1. The reader lists the source as a stream. A file whose fingerprint (size and mtime, or the S3 ETag) is the one
   recorded in `source_files` is unchanged: no read, no write, no embedding. Otherwise it is read and hashed;
   the same sha256 is unchanged too (only the new fingerprint is written).
2. A new or changed file becomes a File (owner `source:<name>`, filename = its relative path) attached to the
   store through the existing queue, with attributes = the source's attributes + `source` + `path`. The new
   attachment *replaces* the version that is searchable now: the worker retires it in the very transaction
   that commits the new chunks, so a search sees the old chunks or the new ones, never both, never neither.
   If the new version fails (it can't be extracted), the old one stays searchable and the failure is shown.
   Each file's writes (File, attachment, job, `source_files` row) are one transaction: a kill -9 anywhere
   leaves each path either done or untouched, and the next sync finishes the job with no duplicate.
3. Only after the listing completed (the reader returned normally) are the paths it did not yield deleted.
   A source that can't be read raises `SourceError` before that: nothing is deleted. And a complete listing
   that would delete all of a source's files, or more than `sync.max_delete`, is held (the deletion brake):
   nothing is deleted until the operator confirms (`allow_deletes`).

One store is synced by one replica at a time: a session advisory lock on the sync's own connection
(`pg_try_advisory_lock`; a replica that doesn't get it skips the store until the next interval), and inside a
process an asyncio lock per store. The same code, with `dry_run`, counts what a sync would do for `plan`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from config import Spec, Store, names
from config.globs import Matcher
from config.model import Source
from vectorstore.ingest.extract import UnsupportedFile, detect_kind
from vectorstore.observability import metrics
from vectorstore.sources import status
from vectorstore.sources.readers import Context, Entry, FileProblem, Listed, Reader, Rejected, SourceError, make_reader
from vectorstore.sources.status import SourceResult, lock_key
from vectorstore.storage import files, stores
from vectorstore.storage.strategy import Strategy, validate_static

log = logging.getLogger("vectorstore")

OTHER_REPLICA = "another replica is syncing this store"
LISTING_BATCH = 256
"""Entries taken from a reader per trip to its thread."""
ANALYZE_AT = (100, 1000)
ANALYZE_EVERY = 10_000
"""When a sync ANALYZEs the tables it grows: after the 100th and 1,000th file, then every 10,000 (`_flush`)."""
WRITE_BATCH_FILES = 32
WRITE_BATCH_BYTES = 8 << 20
"""New versions written per transaction: at most this many files, or about this many bytes of content."""
MAX_ATTRIBUTE_LENGTH = 512
"""OpenAI's limit on an attribute's string value: the `path` attribute must fit."""


@dataclass
class StoreResult:
    store: Store
    sources: list[SourceResult] = field(default_factory=list)
    skipped: str | None = None
    """Why the store was not synced (another replica holds its lock, or the store does not exist)."""


@dataclass(frozen=True)
class _Row:
    """A path as the database knows it: the File that represents it and that File's attachment state."""

    file_id: str
    sha256: str
    fingerprint: str
    status: str | None
    error_code: str | None

    @property
    def attached(self) -> bool:
        return self.status is not None

    @property
    def settled(self) -> bool:
        """Nothing to redo for unchanged content: ingested, being ingested, or failed for a reason of the file
        itself. A failure of the embedding upstream (`server_error`) is worth another try at the next sync."""
        if self.status in ("completed", "in_progress"):
            return True
        return self.status == "failed" and self.error_code != "server_error"


def source_attributes(source: Source, path: str) -> dict[str, Any]:
    return {**source.attributes, "source": source.name, "path": path}


def store_strategy(store: Store) -> Strategy:
    return validate_static(store.max_chunk_size_tokens, store.chunk_overlap_tokens)


def _take(iterator: Iterator[Listed], size: int) -> list[Listed]:
    batch: list[Listed] = []
    for item in iterator:
        batch.append(item)
        if len(batch) >= size:
            break
    return batch


class Syncer:
    """Runs syncs (or dry runs) of the spec's sources against one database."""

    def __init__(
        self,
        dsn: str,
        spec: Spec,
        context: Context,
        *,
        on_change: Callable[[], None] = lambda: None,
        allow_deletes: bool = False,
    ) -> None:
        self.dsn = dsn
        self.allow_deletes = allow_deletes
        """The operator confirmed deletions over the brake (`vectorstore sync --allow-deletes`)."""
        self.spec = spec
        self.context = context
        self.on_change = on_change
        """Called after each file queued for ingestion (the service wakes this replica's worker)."""
        self._locks: dict[str, asyncio.Lock] = {}
        self.writes = 0

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, application_name="vectorstore-sync")
        # A sync's commits need not wait for their WAL flush: if PostgreSQL itself crashes, the last ones are lost
        # whole (WAL order keeps each file's rows together), and the next sync simply does them again.
        await conn.execute("SET synchronous_commit = off")
        return conn

    async def sync_all(self, *, dry_run: bool = False) -> list[StoreResult]:
        """Every declared store with sources (and stores whose sources were all removed), one after another."""
        results: list[StoreResult] = []
        async with await self.connect() as conn:
            for store in self.spec.stores:
                if store.sources or await self._has_synced_files(conn, store.id):
                    results.append(await self.sync_store(conn, store, dry_run=dry_run))
        return results

    async def _has_synced_files(self, conn: psycopg.AsyncConnection[Any], store_id: str) -> bool:
        if not await status.tables_exist(conn):
            return False
        cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM source_files WHERE vector_store_id = %s)", [store_id])
        row = await cur.fetchone()
        return bool(row and row[0])

    async def sync_store(
        self, conn: psycopg.AsyncConnection[Any], store: Store, *, dry_run: bool = False
    ) -> StoreResult:
        result = StoreResult(store)
        lock = self._locks.setdefault(store.id, asyncio.Lock())
        if lock.locked():
            result.skipped = "a sync of this store is already running in this process"
            return result
        async with lock:
            if dry_run:
                await self._run_store(conn, store, result, dry_run=True)
                return result
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [lock_key(store.id)])
            row = await cur.fetchone()
            if not (row and row[0]):
                result.skipped = OTHER_REPLICA
                log.info("sources: store %r is being synced by another replica; skipped", store.name)
                return result
            try:
                await self._run_store(conn, store, result, dry_run=False)
            finally:
                if not conn.closed and not conn.broken:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", [lock_key(store.id)])
        return result

    async def _run_store(
        self, conn: psycopg.AsyncConnection[Any], store: Store, result: StoreResult, *, dry_run: bool
    ) -> None:
        schema = await status.tables_exist(conn)
        record = await stores.get(conn, store.id) if schema else None
        if record is None and not dry_run:
            result.skipped = f"the store {store.name!r} ({store.id}) does not exist yet: reconcile first"
            return
        for source in store.sources:
            run = _SourceRun(self, conn, store, record, source, dry_run=dry_run, schema=schema)
            result.sources.append(await run.run())
        if schema:
            declared = {source.name for source in store.sources}
            cur = await conn.execute(
                "SELECT DISTINCT source FROM source_files WHERE vector_store_id = %s ORDER BY source", [store.id]
            )
            for (name,) in await cur.fetchall():
                if name not in declared:
                    result.sources.append(await self._remove_source(conn, store, record, str(name), dry_run=dry_run))

    async def _remove_source(
        self,
        conn: psycopg.AsyncConnection[Any],
        store: Store,
        record: stores.StoreRecord | None,
        name: str,
        *,
        dry_run: bool,
    ) -> SourceResult:
        """A source the spec no longer declares (removed or renamed): its files leave the store."""
        result = SourceResult(store.name, name, "(no longer declared)", removed=True)
        cur = await conn.execute(
            "SELECT path FROM source_files WHERE vector_store_id = %s AND source = %s ORDER BY path", [store.id, name]
        )
        paths = [str(row[0]) for row in await cur.fetchall()]
        for path in paths:
            if not dry_run:
                assert record is not None
                async with conn.transaction():
                    await delete_path(conn, record, name, path)
            result.deleted += 1
        if not dry_run:
            await conn.execute("DELETE FROM source_status WHERE vector_store_id = %s AND source = %s", [store.id, name])
            log.info("sources: %r/%r is no longer declared: %d file(s) deleted", store.name, name, result.deleted)
        result.finished_at = time.time()
        return result


class _SourceRun:
    def __init__(
        self,
        syncer: Syncer,
        conn: psycopg.AsyncConnection[Any],
        store: Store,
        record: stores.StoreRecord | None,
        source: Source,
        *,
        dry_run: bool,
        schema: bool,
    ) -> None:
        self.syncer = syncer
        self.conn = conn
        self.store = store
        self.record = record
        self.source = source
        self.dry_run = dry_run
        self.schema = schema
        self.limit = syncer.spec.server.max_upload_bytes
        self.matcher = Matcher(source.include, source.exclude)
        self.result = SourceResult(store.name, source.name, source.describe())
        self._pending: list[tuple[Entry, bytes, str]] = []
        self._pending_bytes = 0

    async def run(self) -> SourceResult:
        result = self.result
        if not self.dry_run:
            await status.started(self.conn, self.store.id, self.source.name, result.started_at)
        try:
            reader = make_reader(self.source, self.store.id, self.syncer.context)
            await asyncio.to_thread(reader.prepare)
            await self._sync(reader)
        except SourceError as exc:
            result.error = str(exc)
        except (psycopg.OperationalError, asyncio.CancelledError):
            if not self.dry_run and not self.conn.closed and not self.conn.broken:
                result.error = "interrupted"
                result.finished_at = time.time()
                await asyncio.shield(status.finished(self.conn, self.store.id, result))
            raise
        except Exception as exc:
            # A bug or a database error on one source must not stop the others; the log has the traceback.
            log.exception("sources: %r/%r: the sync failed unexpectedly", self.store.name, self.source.name)
            result.error = f"internal error while syncing ({type(exc).__name__}); see the server log"
        result.finished_at = time.time()
        if self.dry_run:
            return result
        await status.finished(self.conn, self.store.id, result)
        metrics.observe_source_sync(
            self.store.name,
            self.source.name,
            ok=result.error is None,
            seconds=result.duration,
            finished_at=result.finished_at,
            changes={
                "added": result.added,
                "updated": result.updated,
                "deleted": result.deleted,
                "unchanged": result.unchanged,
                "failed": result.failed,
            },
            held=result.held["would_delete"] if result.held else 0,
        )
        if result.error:
            log.error("sources: %r/%r (%s): can't read the source, nothing deleted: %s", self.store.name,
                      self.source.name, result.location, result.error)  # fmt: skip
        elif result.held:
            log.warning("sources: %r/%r (%s): deletions held: %s", self.store.name, self.source.name,
                        result.location, result.summary())  # fmt: skip
        else:
            log.info("sources: %r/%r synced in %.2fs: %s", self.store.name, self.source.name, result.duration,
                     result.summary())  # fmt: skip
        return result

    async def _existing(self) -> dict[str, _Row]:
        if not self.schema:
            return {}
        cur = await self.conn.execute(
            "SELECT s.path, s.file_id, s.sha256, s.fingerprint, v.status, v.last_error->>'code'"
            " FROM source_files s LEFT JOIN vector_store_files v"
            " ON v.vector_store_id = s.vector_store_id AND v.file_id = s.file_id"
            " WHERE s.vector_store_id = %s AND s.source = %s",
            [self.store.id, self.source.name],
        )
        return {
            str(row[0]): _Row(str(row[1]), str(row[2]), str(row[3]), row[4], row[5]) for row in await cur.fetchall()
        }

    async def _sync(self, reader: Reader) -> None:
        existing = await self._existing()
        seen: set[str] = set()
        iterator = reader.entries()
        while True:
            batch = await asyncio.to_thread(_take, iterator, LISTING_BATCH)
            if not batch:
                break
            for item in batch:
                if isinstance(item, Rejected):
                    if item.path is not None:
                        seen.add(item.path)  # still there: an older version it had stays
                    if item.path is None or self.matcher.matches(item.path):
                        self.result.fail(item.shown, item.reason)
                    continue
                if not self.matcher.matches(item.path):
                    continue
                seen.add(item.path)
                await self._file(item, existing.get(item.path))
        await self._flush()
        # The listing is complete: what it did not yield is gone from the source (or no longer included).
        gone = sorted(existing.keys() - seen)
        brake = self.syncer.spec.sync.max_delete
        if not self.syncer.allow_deletes and brake.holds(len(gone), len(existing)):
            # An unmounted volume, an emptied prefix or branch lists as a real, complete and empty listing: that
            # many deletions wait for the operator's word (docs/sources.md, "The deletion brake").
            self.result.held = {"would_delete": len(gone), "files": len(existing), "max_delete": brake.shown}
            return
        for start in range(0, len(gone), WRITE_BATCH_FILES):
            if not self.dry_run:
                assert self.record is not None
                async with self.conn.transaction():
                    for path in gone[start : start + WRITE_BATCH_FILES]:
                        await delete_path(self.conn, self.record, self.source.name, path)
            self.result.deleted += len(gone[start : start + WRITE_BATCH_FILES])

    def _precheck(self, entry: Entry) -> str | None:
        if len(entry.path) > MAX_ATTRIBUTE_LENGTH:
            return f"the path is longer than {MAX_ATTRIBUTE_LENGTH} characters (the limit of an attribute value)"
        if entry.size > self.limit:
            return f"larger than the limit of {self.limit} bytes (server.max_upload_bytes)"
        try:
            detect_kind(entry.path)
        except UnsupportedFile as exc:
            return exc.message
        return None

    async def _file(self, entry: Entry, row: _Row | None) -> None:
        result = self.result
        if row is not None and row.settled and row.fingerprint == entry.fingerprint:
            result.unchanged += 1
            return
        problem = self._precheck(entry)
        if problem is not None:
            result.fail(entry.path, problem)
            return
        try:
            content = await asyncio.to_thread(entry.read, self.limit)
        except FileProblem as exc:
            result.fail(entry.path, str(exc))
            return
        digest = hashlib.sha256(content).hexdigest()
        if row is not None and row.settled and row.sha256 == digest:
            if not self.dry_run:
                await self.conn.execute(
                    "UPDATE source_files SET fingerprint = %s WHERE vector_store_id = %s AND source = %s AND path = %s",
                    [entry.fingerprint, self.store.id, self.source.name, entry.path],
                )
            result.unchanged += 1
            return
        if row is None or not row.attached:
            result.added += 1
        else:
            result.updated += 1
        if self.dry_run:
            return
        self._pending.append((entry, content, digest))
        self._pending_bytes += len(content)
        if len(self._pending) >= WRITE_BATCH_FILES or self._pending_bytes >= WRITE_BATCH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        """Write the pending versions in one transaction: a few dozen files share a commit, and each path is
        still all or nothing (a kill -9 loses the batch whole; the next sync writes it again)."""
        if not self._pending:
            return
        assert self.record is not None
        strategy = store_strategy(self.store)
        async with self.conn.transaction():
            for entry, content, digest in self._pending:
                await write_version(
                    self.conn, self.record, self.source, entry.path, content, digest, entry.fingerprint, strategy
                )
        written = len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self.syncer.on_change()
        before = self.syncer.writes
        self.syncer.writes += written
        if any(before < mark <= self.syncer.writes for mark in ANALYZE_AT) or (
            before // ANALYZE_EVERY != self.syncer.writes // ANALYZE_EVERY
        ):
            # A first sync grows these tables from nothing faster than autovacuum analyzes them; with stale
            # statistics the planner scans `files` for every path, and the sync slows down as it goes.
            await self.conn.execute("ANALYZE files, vector_store_files, source_files")


_VERSIONS_SQL = (
    "SELECT v.file_id, v.status FROM vector_store_files v JOIN files f ON f.id = v.file_id"
    " WHERE v.vector_store_id = %s AND f.owner = %s AND f.filename = %s ORDER BY v.seq FOR UPDATE OF v"
)


async def _versions(conn: psycopg.AsyncConnection[Any], store_id: str, source: str, path: str) -> list[tuple[str, str]]:
    """Every attachment in the store of a version of this path, locked for this transaction (a worker
    completing one of them commits first, and we then see it completed)."""
    cur = await conn.execute(_VERSIONS_SQL, [store_id, names.source_file_owner(source), path])
    return [(str(row[0]), str(row[1])) for row in await cur.fetchall()]


async def write_version(
    conn: psycopg.AsyncConnection[Any],
    store: stores.StoreRecord,
    source: Source,
    path: str,
    content: bytes,
    digest: str,
    fingerprint: str,
    strategy: Strategy,
) -> str:
    """Queue a new version of `path`, replacing the searchable one when it is ingested. In the caller's
    transaction; returns the new File's id."""
    searchable: list[str] = []
    stale: list[str] = []
    for file_id, state in await _versions(conn, store.id, source.name, path):
        (searchable if state == "completed" else stale).append(file_id)
    # Versions with no chunks (queued, failed, cancelled) have nothing to keep searchable: they go now.
    await files.retire(conn, store, stale)
    record = await files.insert_file(
        conn,
        filename=path,
        purpose="assistants",
        content=content,
        content_type=None,
        owner=names.source_file_owner(source.name),
    )
    await files.attach(
        conn, store, record.id, attributes=source_attributes(source, path), strategy=strategy, replaces=searchable
    )
    await conn.execute(
        "INSERT INTO source_files (vector_store_id, source, path, file_id, sha256, fingerprint)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (vector_store_id, source, path) DO UPDATE SET"
        " file_id = EXCLUDED.file_id, sha256 = EXCLUDED.sha256, fingerprint = EXCLUDED.fingerprint,"
        " synced_at = epoch_seconds()",
        [store.id, source.name, path, record.id, digest, fingerprint],
    )
    return record.id


async def delete_path(conn: psycopg.AsyncConnection[Any], store: stores.StoreRecord, source: str, path: str) -> None:
    """The path left its source: every version of it leaves the store. In the caller's transaction."""
    versions = await _versions(conn, store.id, source, path)
    await files.retire(conn, store, [file_id for file_id, _ in versions])
    await conn.execute(
        "DELETE FROM source_files WHERE vector_store_id = %s AND source = %s AND path = %s", [store.id, source, path]
    )
