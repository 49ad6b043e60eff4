"""Migrations as a part of the server: once the database is ready, a loop finds the stores to migrate.

Every replica runs the loop; each store's builder first takes that store's migrator lock (a session advisory
lock), so exactly one replica migrates it and the others keep serving. When that replica dies its lock goes
with its connection and the next poll of another replica (or of the restarted one) carries on from what the
new table holds. Nothing here blocks startup, readiness or another store: each migration is its own task.

The same loop drops previous generations whose `keep_previous` ran out, and keeps a snapshot of every store's
migration for `/metrics` (the same on every replica: it is read from the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from config import Spec
from vectorstore import state
from vectorstore.embeddings.client import EmbeddingClient
from vectorstore.errors import ApiError
from vectorstore.ingest.sandbox import Extract, Sandbox, in_thread
from vectorstore.migration import records
from vectorstore.migration.builder import MIGRATOR_LOCK_NAMESPACE, Builder, Embed, Limits
from vectorstore.observability import metrics
from vectorstore.observability.logs import Redactor
from vectorstore.storage import stores

log = logging.getLogger("vectorstore")

POLL_SECONDS = 2.0


def limits_for(spec: Spec, store_id: str) -> Limits:
    settings = spec.migration_for(store_id)
    return Limits(
        keep_previous_seconds=settings.keep_previous_seconds,
        concurrency=settings.concurrency,
        max_tokens_per_minute=settings.max_tokens_per_minute,
        batch_size=spec.embedding.batch_size,
    )


def redacted(embedder: EmbeddingClient, redactor: Redactor) -> Embed:
    """The builder's embed, its errors redacted: their messages become the migration's `last_error`."""

    async def embed(texts: list[str], model: str, dimensions: int) -> list[list[float]]:
        try:
            return await embedder.embed(texts, model=model, dimensions=dimensions)
        except ApiError as exc:
            exc.message = redactor.redact(exc.message)
            raise

    return embed


class Migrations:
    """The loop and the tasks it started on this replica."""

    def __init__(
        self, dsn: str, spec: Spec, embed: Embed, *, poll_seconds: float = POLL_SECONDS, extract: Extract = in_thread
    ) -> None:
        self.dsn = dsn
        self.spec = spec
        self.embed = embed
        self.extract = extract
        self.poll_seconds = poll_seconds
        self.running: dict[str, asyncio.Task[str]] = {}
        self.snapshot: list[records.Migration] = []
        self.wakeup = asyncio.Event()

    async def loop(self) -> None:
        while True:
            try:
                await self.poll()
            except psycopg.Error as exc:
                log.warning("migrations: %s; retrying in %.0fs", str(exc).strip()[:200], self.poll_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.poll_seconds)
            self.wakeup.clear()

    async def poll(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            found = await records.all_migrations(conn)
            self.snapshot = found
            for migration in found:
                if migration.phase in records.RUNNABLE and migration.store_id not in self.running:
                    task = asyncio.create_task(self._run(migration.store_id))
                    self.running[migration.store_id] = task
                elif (
                    migration.previous_table is not None
                    and migration.previous_until is not None
                    and migration.previous_until < time.time()
                    and migration.store_id not in self.running
                ):
                    await self._drop_previous(conn, migration)

    async def _run(self, store_id: str) -> str:
        try:
            builder = Builder(self.dsn, self.embed, limits_for(self.spec, store_id), extract=self.extract)
            outcome = await builder.run(store_id)
            if outcome != "busy":
                self.wakeup.set()
            return outcome
        except (psycopg.Error, OSError) as exc:
            # Lost the database mid-build: the next poll (here or on another replica) carries on.
            log.warning("migration of store %s: interrupted: %s", store_id, str(exc).strip()[:200])
            return "interrupted"
        except Exception as exc:
            log.exception("migration of store %s failed", store_id)
            with contextlib.suppress(psycopg.Error):
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    await records.update(conn, store_id, {"phase": "paused", "last_error": str(exc)[:500]})
            log.warning("migration of store %s: paused: %s", store_id, exc)
            return "failed"
        finally:
            self.running.pop(store_id, None)

    async def _drop_previous(self, conn: psycopg.AsyncConnection[Any], migration: records.Migration) -> None:
        """`keep_previous` is over: the generation the last swap replaced goes, and its disk with it."""
        key = stores.lock_key(migration.store_id)
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", [MIGRATOR_LOCK_NAMESPACE, key])
        row = await cur.fetchone()
        if not (row and row[0]):
            return
        try:
            async with conn.transaction():
                current = await records.get(conn, migration.store_id, for_update=True)
                if current is None or current.previous_table != migration.previous_table:
                    return
                assert current.previous_table is not None
                await records.drop_generation(conn, current.previous_table)
                await records.update(
                    conn, migration.store_id, {"previous": None, "previous_table": None, "previous_until": None}
                )
            log.info(
                "migration of store %s: previous generation %s dropped (keep_previous is over)",
                migration.store_id,
                migration.previous_table,
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", [MIGRATOR_LOCK_NAMESPACE, key])

    def gauges(self) -> Iterator[Metric]:
        phase = GaugeMetricFamily(
            "vectorstore_migration_phase",
            "1 for the phase each store's last migration is in (pending, building, swapping, done, paused, cancelled).",
            labels=["store", "phase"],
        )
        done = GaugeMetricFamily(
            "vectorstore_migration_chunks_done", "Chunks in the new generation of a migrating store.", labels=["store"]
        )
        total = GaugeMetricFamily(
            "vectorstore_migration_chunks_total", "Chunks a store's migration has to carry over.", labels=["store"]
        )
        files_done = GaugeMetricFamily(
            "vectorstore_migration_files_done",
            "Files re-chunked into the new generation of a store whose declared chunking changed.",
            labels=["store"],
        )
        files_total = GaugeMetricFamily(
            "vectorstore_migration_files_total",
            "Files a store's migration re-chunks (those its default chunked; 0 without a chunking change).",
            labels=["store"],
        )
        calls = GaugeMetricFamily(
            "vectorstore_migration_embedding_calls",
            "Embedding requests made by a store's last migration.",
            labels=["store"],
        )
        tokens = GaugeMetricFamily(
            "vectorstore_migration_embedding_tokens",
            "Estimated tokens embedded by a store's last migration.",
            labels=["store"],
        )
        failing = GaugeMetricFamily(
            "vectorstore_migration_error",
            "1 while a store's migration has a last error (retrying, or paused); the message is in the status.",
            labels=["store"],
        )
        for migration in self.snapshot:
            for name in records.PHASES:
                phase.add_metric([migration.store_id, name], 1 if migration.phase == name else 0)
            done.add_metric([migration.store_id], migration.chunks_done)
            total.add_metric([migration.store_id], migration.chunks_total)
            files_done.add_metric([migration.store_id], migration.files_done)
            files_total.add_metric([migration.store_id], migration.files_total)
            calls.add_metric([migration.store_id], migration.embedding_calls)
            tokens.add_metric([migration.store_id], migration.embedding_tokens)
            failing.add_metric([migration.store_id], 1 if migration.last_error else 0)
        yield from (phase, done, total, files_done, files_total, calls, tokens, failing)


MIGRATIONS = web.AppKey("migrations", Migrations)


async def _migrations_ctx(app: web.Application) -> AsyncIterator[None]:
    # Re-chunking extracts files again under the same limits as ingestion (`ingest.*`), in its own children.
    sandbox = Sandbox.from_spec(app[state.SPEC].ingest)
    migrations = Migrations(
        app[state.SETTINGS].dsn,
        app[state.SPEC],
        redacted(app[state.EMBEDDER], app[state.REDACTOR]),
        extract=sandbox.extract,
    )
    app[MIGRATIONS] = migrations
    metrics.add_gauge_source("migrations", migrations.gauges)
    readiness = app[state.READINESS]

    async def run() -> None:
        await readiness.done.wait()
        if readiness.ready:
            await migrations.loop()

    task = asyncio.create_task(run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for running in list(migrations.running.values()):
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
    metrics.remove_gauge_source("migrations")
    await sandbox.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_migrations_ctx)
