"""`vectorstore sync --spec FILE`: one sync of every declared source, its ingestion waited for, then exit.

For a Kubernetes Job or CI: it migrates and reconciles like `serve` (the stores must exist), syncs each store's
sources, runs an ingestion worker until every queued file is done, prints one line per source and exits
0 when every source was read and every file of every source is in, 1 when anything failed (a source it could
not read, a file it could not take in, a file whose ingestion failed, deletions the brake held), 2 when it
could not run at all. `--allow-deletes` applies the deletions the brake would hold. The server's own worker,
if one runs on the same database, shares the queue with it.

Also the source part of `vectorstore plan`: the same sync as a dry run (`plan_lines`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, TextIO

import psycopg

from config import Spec
from vectorstore.embeddings.client import EmbeddingClient
from vectorstore.ingest.sandbox import Sandbox
from vectorstore.ingest.worker import BATCHES_PER_COPY, Worker, redacted_embed, running
from vectorstore.observability.logs import Redactor
from vectorstore.settings import Settings
from vectorstore.sources.engine import OTHER_REPLICA, StoreResult, Syncer
from vectorstore.sources.service import context
from vectorstore.storage import reconcile
from vectorstore.storage.migrations import migrate

POLL_SECONDS = 0.5
LOCK_WAIT_SECONDS = 600.0
MAX_FAILED_SHOWN = 20

_PENDING_SQL = """
SELECT count(*) FILTER (WHERE v.status = 'in_progress') FROM source_files s
JOIN vector_store_files v ON v.vector_store_id = s.vector_store_id AND v.file_id = s.file_id
WHERE s.vector_store_id = ANY(%s)
"""
_FAILED_SQL = """
SELECT s.vector_store_id, s.source, s.path, v.last_error->>'message' FROM source_files s
JOIN vector_store_files v ON v.vector_store_id = s.vector_store_id AND v.file_id = s.file_id
WHERE s.vector_store_id = ANY(%s) AND v.status = 'failed' ORDER BY 1, 2, 3
"""


async def run_sync(spec: Spec, settings: Settings, out: TextIO, *, allow_deletes: bool = False) -> int:
    async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as conn:
        await migrate(conn)
        await reconcile.reconcile(conn, spec, source="sync")
    embedder = EmbeddingClient.from_spec(spec.embedding, settings.embedding_api_key)
    sandbox = Sandbox.from_spec(spec.ingest)
    worker = Worker(
        settings.dsn,
        redacted_embed(embedder, Redactor(settings.secret_values())),
        concurrency=spec.server.ingest_concurrency,
        batch_chunks=spec.embedding.batch_size * BATCHES_PER_COPY,
        name="sync-ingest",
        extract=sandbox.extract,
    )
    started = time.monotonic()
    try:
        async with running(worker):
            syncer = Syncer(settings.dsn, spec, context(settings), on_change=worker.wake, allow_deletes=allow_deletes)
            results = await _sync_waiting_for_others(syncer)
            store_ids = [result.store.id for result in results]
            async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as conn:
                await _wait_ingested(conn, store_ids)
                cur = await conn.execute(_FAILED_SQL, [store_ids])
                failed = await cur.fetchall()
    finally:
        await sandbox.close()
        await embedder.close()
    return report(spec, results, failed, time.monotonic() - started, out)


async def _sync_waiting_for_others(syncer: Syncer) -> list[StoreResult]:
    """Every store synced once; a store another replica is syncing right now is tried again until it is free
    (a server's scheduled sync runs while this Job starts), for up to LOCK_WAIT_SECONDS."""
    results = await syncer.sync_all()
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    async with await syncer.connect() as conn:
        for index, result in enumerate(results):
            while result.skipped == OTHER_REPLICA and time.monotonic() < deadline:
                await asyncio.sleep(POLL_SECONDS)
                result = await syncer.sync_store(conn, result.store)
            results[index] = result
    return results


async def _wait_ingested(conn: psycopg.AsyncConnection[Any], store_ids: list[str]) -> None:
    while True:
        cur = await conn.execute(_PENDING_SQL, [store_ids])
        row = await cur.fetchone()
        if not row or not row[0]:
            return
        await asyncio.sleep(POLL_SECONDS)


def report(
    spec: Spec, results: Sequence[StoreResult], failed: Sequence[tuple[Any, ...]], seconds: float, out: TextIO
) -> int:
    names = {store.id: store.name for store in spec.stores}
    problems = 0
    for result in results:
        if result.skipped:
            print(f"{result.store.name}: skipped: {result.skipped}", file=out)
            problems += 1
        for source in result.sources:
            print(f"{result.store.name}/{source.source} ({source.location}): {source.summary()}", file=out)
            for failure in source.failures[:MAX_FAILED_SHOWN]:
                print(f"  failed: {failure['path']}: {failure['reason']}", file=out)
            problems += (source.error is not None) + bool(source.held) + source.failed
    for store_id, source_name, path, message in failed[:MAX_FAILED_SHOWN]:
        print(f"{names.get(store_id, store_id)}/{source_name}: ingestion failed: {path}: {message}", file=out)
    problems += len(failed)
    verdict = "everything is in" if problems == 0 else f"{problems} problem(s)"
    print(f"sync: {len(results)} store(s) in {seconds:.1f}s; {verdict}", file=out)
    return 0 if problems == 0 else 1


async def plan_lines(spec: Spec, settings: Settings) -> tuple[list[str], bool]:
    """What a sync would change, per store and source, without writing: (lines, whether anything would change)."""
    syncer = Syncer(settings.dsn, spec, context(settings))
    results = await syncer.sync_all(dry_run=True)
    lines: list[str] = []
    changes = False
    for result in results:
        add = sum(source.added for source in result.sources)
        update = sum(source.updated for source in result.sources)
        delete = sum(source.deleted for source in result.sources)
        changes = changes or bool(add or update or delete)
        lines.append(
            f"sources {result.store.name!r} ({result.store.id}): {add} to add, {update} to update, {delete} to delete"
        )
        for source in result.sources:
            if source.removed:
                lines.append(
                    f"          {source.source}: no longer declared: its {source.deleted} document(s) would be "
                    "deleted (renaming a source deletes its documents and adds them again under the new name)"
                )
            elif source.error:
                lines.append(f"          {source.source}: can't read it ({source.error}); not counted")
            elif source.held:
                lines.append(f"          {source.source}: {source.summary(planned=True)}")
            else:
                lines.append(f"          {source.source}: {source.summary(planned=True)}")
    return lines, changes
