"""The ingestion worker as a part of the app: started once the database is ready, stopped before the pool.

`setup(app)` registers the worker's cleanup context and tells the stores API how to count files
(`FILE_COUNTS`). Handlers that queue work call `wake(request.app)` so this replica picks it up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from vectorstore import state
from vectorstore.ingest import expiry
from vectorstore.ingest.sandbox import Sandbox
from vectorstore.ingest.worker import BATCHES_PER_COPY, Worker, redacted_embed
from vectorstore.storage import files

WORKER = web.AppKey("ingest_worker", Worker)


def wake(app: web.Application) -> None:
    """New work was queued by this replica: skip the worker's poll wait."""
    app[WORKER].wake()


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    spec = app[state.SPEC]
    sandbox = Sandbox.from_spec(spec.ingest)
    worker = Worker(
        app[state.SETTINGS].dsn,
        redacted_embed(app[state.EMBEDDER], app[state.REDACTOR]),
        concurrency=spec.server.ingest_concurrency,
        batch_chunks=spec.embedding.batch_size * BATCHES_PER_COPY,
        extract=sandbox.extract,
    )
    app[WORKER] = worker
    readiness = app[state.READINESS]

    async def start_when_ready() -> None:
        await readiness.done.wait()
        if readiness.ready:
            worker.start()

    starter = asyncio.create_task(start_when_ready())
    yield
    starter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starter
    await worker.stop()
    await sandbox.close()


def setup(app: web.Application) -> None:
    app[state.FILE_COUNTS] = files.file_counts
    # Appended after the core's contexts, so it is torn down first: workers stop before the pool closes.
    app.cleanup_ctx.append(_worker_ctx)
    app.cleanup_ctx.append(expiry.sweeper_ctx)
