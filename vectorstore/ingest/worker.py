"""The ingestion worker: takes jobs from the `ingest_jobs` queue in PostgreSQL and makes files searchable.

How a job runs (docs/ingestion.md):
1. Claim: lock the oldest ready job no one holds (`FOR UPDATE SKIP LOCKED`), so replicas share the queue.
   A second connection counts the claim in `ingest_attempts` and commits that at once, so a file that
   crashes its worker every time fails after MAX_ATTEMPTS instead of looping.
2. In that same transaction: extract the text, chunk it, embed the chunks in batches and write them with
   binary COPY (in a savepoint), mark the file `completed` (or `failed`) and delete the job, then commit.
   The row lock lives exactly as long as that transaction: if the process dies (kill -9, OOM, node loss)
   PostgreSQL drops the connection, rolls back the partial chunks and frees the job for the next claim.
   A file is therefore searchable entirely or not at all.
3. On SIGTERM (aiohttp's graceful exit runs the cleanup context) workers take no new jobs, the current one
   gets `grace_seconds` to finish, and past that it is cancelled: its transaction rolls back and the job
   returns to the queue for another replica.

Each worker has its own two connections, not ones from the API pool: a long ingestion must not starve searches.
Extraction and chunking run in a thread, so the event loop keeps serving requests while a big file is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.types.json import Jsonb

from vectorstore.embeddings.client import EmbeddingClient
from vectorstore.errors import ApiError
from vectorstore.ingest.chunking import Chunk, chunk_text
from vectorstore.ingest.extract import ExtractError
from vectorstore.ingest.sandbox import Extract, in_thread
from vectorstore.observability import metrics
from vectorstore.observability.logs import Redactor
from vectorstore.search import statistics
from vectorstore.storage import files, stores, tables

log = logging.getLogger("vectorstore")

MAX_ATTEMPTS = 3
BATCHES_PER_COPY = 4
"""Embedding requests' worth of chunks per COPY: small enough to overlap embedding with writing."""
RETRY_DELAYS = (5.0, 30.0)
"""Seconds before a job whose embedding upstream failed is tried again."""

Embed = Callable[[stores.StoreRecord, list[str]], Awaitable[list[list[float]]]]
"""One vector per text, with the store's model and dimensions."""


def redacted_embed(embedder: EmbeddingClient, redactor: Redactor) -> Embed:
    """The worker's `embed` through `embedder`, its errors redacted: an error's message becomes a failed file's
    `last_error`, which clients read, so no secret may be in it whatever the upstream answered."""

    async def embed(store: stores.StoreRecord, texts: list[str]) -> list[list[float]]:
        try:
            return await embedder.embed(texts, model=store.model, dimensions=store.dimensions)
        except ApiError as exc:
            exc.message = redactor.redact(exc.message)
            raise

    return embed


@dataclass(frozen=True)
class Job:
    id: int
    vector_store_id: str
    file_id: str
    attempts: int


class _Retry(Exception):
    """The file is fine but a dependency failed (embedding upstream): try the job again later."""


class Worker:
    """`concurrency` loops, each with its own connection, taking jobs until stopped."""

    def __init__(
        self,
        dsn: str,
        embed: Embed,
        *,
        concurrency: int = 2,
        poll_seconds: float = 0.5,
        grace_seconds: float = 20.0,
        batch_chunks: int = 256,
        name: str = "ingest",
        extract: Extract = in_thread,
    ) -> None:
        self.dsn = dsn
        self.extract = extract
        """How a file becomes text: a Sandbox's `extract` (the limits of `ingest.*`) in the server and `sync`."""
        self.embed = embed
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.batch_chunks = batch_chunks
        self.name = name
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[int] = set()
        self.completed = 0
        self.failed = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(index), name=f"{self.name}-{index}") for index in range(self.concurrency)
        ]

    def wake(self) -> None:
        """New work was queued on this replica: skip the poll wait (other replicas find it by polling)."""
        self._wake.set()

    async def stop(self) -> None:
        """Take no new jobs; give running ones `grace_seconds`, then roll them back into the queue."""
        self._stopping.set()
        self._wake.set()
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(self._tasks, timeout=self.grace_seconds)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if pending:
            log.warning("ingestion: %d file(s) returned to the queue at shutdown", len(pending))
            for _ in pending:
                metrics.observe_ingest("requeued")
        self._tasks = []

    async def _loop(self, index: int) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                async with await connect(self.dsn) as conn, await connect(self.dsn) as meta:
                    delay = 0.5
                    while not self._stopping.is_set():
                        if not await run_one(conn, meta, self.embed, self, batch_chunks=self.batch_chunks):
                            await self._idle()
            except asyncio.CancelledError:
                raise
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("ingestion worker %d: database unavailable (%s); retrying in %.1fs", index, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:
                log.exception("ingestion worker %d: unexpected error; restarting", index)
                await self._sleep(delay)

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
        self._wake.clear()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name="vectorstore-ingest")
    await register_vector_async(conn)
    return conn


async def lock_next(conn: psycopg.AsyncConnection[Any]) -> Job | None:
    """Lock the oldest ready job nobody holds, in the caller's transaction (attempts filled in later)."""
    cur = await conn.execute(
        "SELECT id, vector_store_id, file_id FROM ingest_jobs WHERE run_after <= now()"
        " ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
    )
    row = await cur.fetchone()
    return Job(int(row[0]), str(row[1]), str(row[2]), 0) if row else None


async def count_attempt(meta: psycopg.AsyncConnection[Any], job_id: int) -> int:
    """One more claim of `job_id`, committed at once on the separate autocommit connection `meta`."""
    cur = await meta.execute(
        "INSERT INTO ingest_attempts (job_id, attempts) VALUES (%s, 1) ON CONFLICT (job_id)"
        " DO UPDATE SET attempts = ingest_attempts.attempts + 1 RETURNING attempts",
        [job_id],
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def run_one(
    conn: psycopg.AsyncConnection[Any],
    meta: psycopg.AsyncConnection[Any],
    embed: Embed,
    worker: Worker | None = None,
    *,
    batch_chunks: int = 256,
) -> bool:
    """Take and process one job; False when the queue had nothing ready. Both connections are autocommit.

    The job row stays locked by `conn`'s transaction from the moment it is picked until its outcome is
    committed; the file's chunks are written in a savepoint inside it, so every outcome (done, failed,
    retry later, dropped) is recorded while the lock is still held and no other worker can race for it.
    """
    started = time.monotonic()
    async with conn.transaction():
        found = await lock_next(conn)
        if found is None:
            return False
        job = Job(found.id, found.vector_store_id, found.file_id, await count_attempt(meta, found.id))
        try:
            try:
                async with conn.transaction():  # savepoint: the chunks, all or nothing
                    extract = worker.extract if worker is not None else in_thread
                    outcome = await _process(conn, job, embed, batch_chunks, extract)
            except _Abandon:
                await _delete_job(conn, job)
                outcome = "dropped (detached or cancelled while ingesting)"
            except _Retry as exc:
                outcome = await _retry_or_fail(conn, job, str(exc))
            except pg_errors.UndefinedTable:
                # The store was deleted (its table dropped) while the file was being ingested.
                await _delete_job(conn, job)
                outcome = "dropped (store deleted)"
            except (psycopg.OperationalError, asyncio.CancelledError):
                raise
            except Exception as exc:
                if conn.closed or conn.broken:
                    raise
                log.exception("ingestion: file %s failed unexpectedly", job.file_id)
                outcome = await _retry_or_fail(conn, job, f"internal error while ingesting ({type(exc).__name__})")
        except asyncio.CancelledError:
            # Shutdown: the transaction rolls back and the job returns to the queue; this claim doesn't count.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    meta.execute("UPDATE ingest_attempts SET attempts = attempts - 1 WHERE job_id = %s", [job.id])
                )
            raise
    metrics.observe_ingest(outcome, time.monotonic() - started)
    if outcome == "completed":
        await statistics.after_write(conn, job.vector_store_id)
    if worker is not None:
        if outcome == "completed":
            worker.completed += 1
        elif outcome == "failed":
            worker.failed += 1
    log.info(
        "ingestion: file %s in store %s %s (%.2fs)",
        job.file_id,
        job.vector_store_id,
        outcome,
        time.monotonic() - started,
    )
    return True


async def _process(
    conn: psycopg.AsyncConnection[Any], job: Job, embed: Embed, batch_chunks: int, extract: Extract
) -> str:
    # Shared with other writers, exclusive with a migration's swap: the chunks go to the table that is active
    # when this transaction commits (vectorstore/migration).
    await stores.lock_for_write(conn, job.vector_store_id)
    store = await stores.get(conn, job.vector_store_id)
    attached = await files.get_store_file(conn, job.vector_store_id, job.file_id)
    if store is None or attached is None or attached.generation != job.id or attached.status != "in_progress":
        await _delete_job(conn, job)
        return "dropped (detached, cancelled or store deleted)"
    if job.attempts > MAX_ATTEMPTS:
        await _finish(
            conn, job, "failed", error=("server_error", f"ingestion was interrupted {job.attempts - 1} times")
        )
        return "failed"
    record = await files.get_file(conn, job.file_id)
    content = await files.file_content(conn, job.file_id)
    if record is None or content is None:
        await _delete_job(conn, job)
        return "dropped (file deleted)"
    try:
        text = await extract(content, record.filename, record.content_type)
    except ExtractError as exc:
        await _finish(conn, job, "failed", error=(exc.code, exc.message))
        return "failed"
    del content
    written = await _write_chunks(conn, store, record, attached, text, embed, batch_chunks)
    if written is None:
        return "cancelled while ingesting"
    chunk_count, usage = written
    await statistics.flush_table_counters(conn)
    if chunk_count == 0:
        await _finish(conn, job, "failed", error=("invalid_file", f"{record.filename!r} contains no text"))
        return "failed"
    if attached.replaces:
        # Lock this path's versions oldest first, the order a sync of the same path takes them in
        # (sources/engine.py, `ORDER BY v.seq FOR UPDATE OF v`): completing the new row, then retiring the old one,
        # is the other order, and deadlocked against a sync (seen under a writer churning the source).
        await conn.execute(
            "SELECT 1 FROM vector_store_files WHERE vector_store_id = %s AND file_id = ANY(%s) ORDER BY seq FOR UPDATE",
            [job.vector_store_id, [*attached.replaces, job.file_id]],
        )
    if not await _finish(conn, job, "completed", usage_bytes=usage, chunk_count=chunk_count):
        # Detached or cancelled while we worked: roll back the chunks, then drop the job.
        raise _Abandon
    current = await files.get_store_file(conn, job.vector_store_id, job.file_id)
    if current is not None and current.attributes != attached.attributes:
        # Attributes changed during ingestion; the chunks must carry the new ones too.
        await conn.execute(
            sql.SQL("UPDATE {t} SET attributes = %s WHERE file_id = %s").format(t=store.layout.ident),
            [Jsonb(current.attributes), job.file_id],
        )
    if attached.replaces:
        # A source's new version of a path: the old one leaves in this same transaction (docs/sources.md).
        await files.retire(conn, store, attached.replaces)
    return "completed"


class _Abandon(Exception):
    """The attachment changed under the worker: roll back what was written and drop the job."""


async def _write_chunks(
    conn: psycopg.AsyncConnection[Any],
    store: stores.StoreRecord,
    record: files.FileRecord,
    attached: files.StoreFile,
    text: str,
    embed: Embed,
    batch_chunks: int,
) -> tuple[int, int] | None:
    """Chunk, embed and COPY, overlapping the next batch's embedding with this batch's COPY."""
    layout = store.layout
    vector_bytes = (4 if layout.vector_type == "vector" else 2) * layout.dimensions
    chunks = chunk_text(text, attached.strategy)
    count = 0
    usage = 0

    async def produce() -> tuple[list[Chunk], list[list[float]]]:
        batch = await asyncio.to_thread(_take, chunks, batch_chunks)
        if not batch:
            return batch, []
        try:
            vectors = await embed(store, [chunk.text for chunk in batch])
        except ApiError as exc:  # UpstreamError after the client's own retries
            raise _Retry(exc.message) from None
        return batch, vectors

    pending: asyncio.Task[tuple[list[Chunk], list[list[float]]]] = asyncio.create_task(produce())
    try:
        while True:
            batch, vectors = await pending
            if not batch:
                break
            pending = asyncio.create_task(produce())
            rows = (
                tables.ChunkRow(
                    id=f"{record.id}:{chunk.index}",
                    content=chunk.text,
                    embedding=vector,
                    file_id=record.id,
                    chunk_index=chunk.index,
                    filename=record.filename,
                    attributes=attached.attributes,
                )
                for chunk, vector in zip(batch, vectors, strict=True)
            )
            count += await tables.copy_chunks(conn, layout, rows)
            usage += sum(len(chunk.text.encode()) for chunk in batch) + vector_bytes * len(batch)
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
    return count, usage


def _take(chunks: Iterator[Chunk], size: int) -> list[Chunk]:
    batch: list[Chunk] = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) >= size:
            break
    return batch


async def _finish(
    conn: psycopg.AsyncConnection[Any],
    job: Job,
    status: files.Status,
    *,
    error: tuple[str, str] | None = None,
    usage_bytes: int = 0,
    chunk_count: int = 0,
) -> bool:
    """Set the final status (only on the attachment this job belongs to) and delete the job."""
    cur = await conn.execute(
        "UPDATE vector_store_files SET status = %s, last_error = %s, usage_bytes = %s, chunk_count = %s"
        " WHERE vector_store_id = %s AND file_id = %s AND generation = %s AND status = 'in_progress'",
        [
            status,
            Jsonb({"code": error[0], "message": error[1]}) if error else None,
            usage_bytes,
            chunk_count,
            job.vector_store_id,
            job.file_id,
            job.id,
        ],
    )
    await _delete_job(conn, job)
    return cur.rowcount > 0


async def _delete_job(conn: psycopg.AsyncConnection[Any], job: Job) -> None:
    await conn.execute("DELETE FROM ingest_jobs WHERE id = %s", [job.id])
    await conn.execute("DELETE FROM ingest_attempts WHERE job_id = %s", [job.id])


async def _retry_or_fail(conn: psycopg.AsyncConnection[Any], job: Job, reason: str) -> str:
    """In the job's locked transaction: fail the file after MAX_ATTEMPTS, else try again after a delay."""
    if job.attempts >= MAX_ATTEMPTS:
        await _finish(conn, job, "failed", error=("server_error", reason))
        return "failed"
    delay = RETRY_DELAYS[min(job.attempts - 1, len(RETRY_DELAYS) - 1)]
    await conn.execute(
        "UPDATE ingest_jobs SET run_after = now() + make_interval(secs => %s) WHERE id = %s", [delay, job.id]
    )
    log.warning("ingestion: file %s: %s; retrying in %.0fs", job.file_id, reason, delay)
    return f"retry in {delay:.0f}s"


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
