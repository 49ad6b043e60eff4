"""Declared documents as a part of the app: a sync after reconcile (in the background: /ready does not wait for
it), then one every `sync.interval`.

The sync queues files for the ingestion worker of this same app (`vectorstore.ingest.service`) and wakes it.
Replicas each run this loop; the store's advisory lock lets one of them sync a store while the others skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
from aiohttp import web

from vectorstore import state
from vectorstore.ingest import service as ingest_service
from vectorstore.settings import Settings
from vectorstore.sources.engine import Syncer
from vectorstore.sources.readers import Context

log = logging.getLogger("vectorstore")

SYNCER = web.AppKey("source_syncer", Syncer)
DEFAULT_SOURCES_DIR = Path(".vectorstore/sources")


def context(settings: Settings) -> Context:
    """Where the sources of a spec are read from, for `serve`, `sync` and `plan` alike."""
    return Context(
        base_dir=settings.spec_dir or Path.cwd(),
        work_dir=settings.sources_dir or DEFAULT_SOURCES_DIR.resolve(),
        git_checkouts=settings.git_checkouts,
        environ=settings.source_env,
        git_sync_wait_seconds=settings.git_sync_wait_seconds,
    )


async def run_schedule(syncer: Syncer, interval: float) -> None:
    """Sync now, then every `interval` seconds (once only when it is 0). A database outage costs one round."""
    while True:
        try:
            await syncer.sync_all()
        except (psycopg.OperationalError, OSError) as exc:
            log.warning("sources: the database is not reachable (%s); retrying at the next interval", exc)
        except Exception:
            log.exception("sources: the sync failed unexpectedly; retrying at the next interval")
        if interval <= 0:
            return
        await asyncio.sleep(interval)


async def _sync_ctx(app: web.Application) -> AsyncIterator[None]:
    spec = app[state.SPEC]
    settings = app[state.SETTINGS]

    def wake() -> None:
        with contextlib.suppress(KeyError):
            ingest_service.wake(app)

    syncer = Syncer(settings.dsn, spec, context(settings), on_change=wake)
    app[SYNCER] = syncer
    readiness = app[state.READINESS]

    async def start_when_ready() -> None:
        await readiness.done.wait()
        if readiness.ready and settings.reconcile:
            await run_schedule(syncer, spec.sync.interval_seconds)

    task = asyncio.create_task(start_when_ready(), name="source-sync")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_sync_ctx)
