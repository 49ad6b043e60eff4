"""Search's background part, once the database is ready:

- upgrade the stores that predate keyword search (vectorstore/search/text_upgrade.py: `fts` and its GIN index)
  and then those that predate the packed postings (vectorstore/search/postings_upgrade.py). A store whose
  table is busy is tried again a little later; the loop ends when every store has both (new stores are created
  with them);
- compact each store's postings when a compaction is due (vectorstore/search/postings_compaction.py), every
  COMPACTION_CHECK_SECONDS, for as long as the app runs.

It also gives the app its process's cache of decoded postings (POSTINGS_CACHE, search/postings_cache.py),
`server.postings_cache_bytes` in size, which keyword and hybrid searches read through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from aiohttp import web

from vectorstore import state
from vectorstore.observability import metrics
from vectorstore.search import postings_compaction, postings_upgrade, text_upgrade
from vectorstore.search.postings_cache import PostingsCache
from vectorstore.storage import stores

log = logging.getLogger("vectorstore")

RETRY_SECONDS = 5.0
COMPACTION_CHECK_SECONDS = 2.0

POSTINGS_CACHE = web.AppKey("postings_cache", PostingsCache)


async def upgrade_all(dsn: str) -> None:
    """Upgrade every pending store, retrying busy ones, until none is left."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for record in await text_upgrade.pending(conn):
                    await text_upgrade.upgrade(conn, record)
                # A store's postings are made from its `fts`: only stores whose `fts` is ready are pending here.
                for record in await postings_upgrade.pending(conn):
                    await postings_upgrade.upgrade(conn, record)
                if not await text_upgrade.pending(conn) and not await postings_upgrade.pending(conn):
                    return
        except psycopg.Error as exc:
            log.warning("text search upgrade: %s; retrying in %.0fs", str(exc).strip()[:200], RETRY_SECONDS)
        await asyncio.sleep(RETRY_SECONDS)


async def _compact_one(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> None:
    """One store's compaction if due. A failure that is not the connection's (a store dropped meanwhile, a
    defect) is logged and skips that store this round: the others are still compacted."""
    try:
        await postings_compaction.compact_if_due(conn, record)
    except psycopg.OperationalError:
        raise  # the connection is gone: the caller reconnects
    except Exception as exc:  # any store's failure must not stop every store's compaction
        log.warning("postings compaction of store %s: %s", record.id, str(exc).strip()[:200])
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.rollback()


async def compact_forever(dsn: str, every: float = COMPACTION_CHECK_SECONDS) -> None:
    """Check every store's postings backlog every `every` seconds and compact what is due."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                while True:
                    for record in await stores.all_stores(conn):
                        await _compact_one(conn, record)
                    await asyncio.sleep(every)
        except psycopg.Error as exc:
            log.warning("postings compaction: %s; retrying in %.0fs", str(exc).strip()[:200], RETRY_SECONDS)
        await asyncio.sleep(RETRY_SECONDS)


def _background(work: Callable[[str], Awaitable[None]]) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs `work(dsn)` once the database is ready, and cancels it when the app stops."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        readiness = app[state.READINESS]

        async def run() -> None:
            await readiness.done.wait()
            if readiness.ready:
                await work(app[state.SETTINGS].dsn)

        task = asyncio.create_task(run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def setup(app: web.Application) -> None:
    cache = app[POSTINGS_CACHE] = PostingsCache(app[state.SPEC].server.postings_cache_bytes)
    metrics.add_gauge_source(
        "postings_cache",
        metrics.postings_cache_gauges(lambda: cache.bytes, lambda: len(cache), cache.max_bytes),
        per_process=True,
    )
    app.cleanup_ctx.append(_background(upgrade_all))
    app.cleanup_ctx.append(_background(compact_forever))
