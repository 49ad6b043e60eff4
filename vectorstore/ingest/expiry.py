"""Expiry of never-attached uploads (`server.unattached_file_ttl_hours`): a sweep every few minutes.

An upload whose attach never came (LiteLLM's `/v1/rag/ingest` answering `failed` after its upload succeeded,
a client that died in between) would keep its bytes forever. With a TTL set, each replica sweeps on its own:
`files.expire_unattached` locks with SKIP LOCKED, so replicas sweeping at once split the work, and a file
being attached at that moment is never taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

import psycopg
from aiohttp import web

from vectorstore import state
from vectorstore.storage import files

log = logging.getLogger("vectorstore")

SWEEP_SECONDS: Final = 300.0
"""How often a replica looks for expired uploads: the TTL is counted in hours, a few minutes late is fine."""
BATCH: Final = 500


class Sweeper:
    def __init__(self, pool_of: Callable[[], state.Pool], ttl_hours: int) -> None:
        self._pool_of = pool_of
        self.ttl_seconds = ttl_hours * 3600
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Sweep now rather than at the next period (tests, and a future admin route)."""
        self._wake.set()

    async def sweep(self) -> int:
        """Expire what is due, in batches of BATCH; how many files went."""
        expired = 0
        cutoff = int(time.time()) - self.ttl_seconds
        while True:
            async with self._pool_of().connection() as conn, conn.transaction():
                ids = await files.expire_unattached(conn, cutoff, BATCH)
            expired += len(ids)
            if ids:
                log.info("expired %d never-attached files", len(ids), extra={"files_expired": len(ids)})
            if len(ids) < BATCH:
                return expired

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except (psycopg.Error, OSError) as exc:
                # The database is down or busy: try again next period; readiness reports the outage.
                log.warning("file expiry sweep failed: %s", type(exc).__name__)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SWEEP_SECONDS)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


SWEEPER = web.AppKey("file_expiry", Sweeper)


async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    ttl = app[state.SPEC].server.unattached_file_ttl_hours
    if ttl <= 0:
        yield
        return
    sweeper = Sweeper(lambda: app[state.POOL], ttl)
    app[SWEEPER] = sweeper
    readiness = app[state.READINESS]

    async def start_when_ready() -> None:
        await readiness.done.wait()
        if readiness.ready:
            sweeper.start()

    starter = asyncio.create_task(start_when_ready())
    yield
    starter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starter
    await sweeper.stop()
