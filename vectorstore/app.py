"""The aiohttp app factory, the composition root: resources as cleanup contexts, the edge's middlewares, every
API route under /v1 and bare, and the background services (ingestion) that run beside them.

`create_app(spec, settings=...)` takes an already-loaded spec and resolved settings; it never reads argv or
the environment (that is `commands.serve`'s job), so tests and benches build apps directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from config import Spec
from vectorstore.api import auth
from vectorstore.api.middleware import error_middleware
from vectorstore.embeddings.client import EmbeddingClient
from vectorstore.observability import metrics
from vectorstore.observability.logs import Redactor
from vectorstore.settings import Settings
from vectorstore.state import EMBEDDER, FILE_COUNTS, POOL, READINESS, READS, REDACTOR, SETTINGS, SPEC, Readiness
from vectorstore.storage import database, reconcile, replicas
from vectorstore.storage.migrations import MigrationError, migrate
from vectorstore.storage.stores import no_file_counts

log = logging.getLogger("vectorstore")

API_PREFIX = "/v1"
# Resource modules: each has `routes: web.RouteTableDef` (paths without /v1) and may have
# `setup(app) -> None` to add its own cleanup contexts or app keys. See docs/server.md.
ROUTE_MODULES: tuple[str, ...] = (
    # First: its setup() puts the access-log and metrics middlewares outside all others; serves /metrics, /openapi.json.
    "vectorstore.api.observability",
    "vectorstore.api.health",
    "vectorstore.api.vector_stores",
    "vectorstore.api.search",
    "vectorstore.api.embeddings",
    "vectorstore.api.files",
    "vectorstore.api.vector_store_files",
    "vectorstore.api.sources",
    "vectorstore.api.vector_io",
    # The console's page (server.console): static files at /console, calling the routes above with the user's key.
    "vectorstore.console",
    "vectorstore.api.recall",
    "vectorstore.api.migrations",
)
# Background services: each has `setup(app) -> None`, run after the routes, that adds its cleanup contexts.
# Sources come after ingestion: their sync wakes the worker, and stops before it does.
SERVICE_MODULES: tuple[str, ...] = (
    "vectorstore.ingest.service",
    "vectorstore.search.service",
    "vectorstore.calibration.service",
    "vectorstore.sources.service",
    "vectorstore.migration.service",
)


def mount(app: web.Application, routes: web.RouteTableDef) -> None:
    """Register each route under /v1 and without the prefix (LiteLLM generations differ, REFERENCE §2)."""
    for route in routes:
        assert isinstance(route, web.RouteDef), "only RouteDef entries (no static routes)"
        for prefix in (API_PREFIX, ""):
            app.router.add_route(route.method, prefix + route.path, route.handler, **route.kwargs)


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = database.make_pool(app[SETTINGS].dsn, app[SPEC], timeout=app[SETTINGS].pool_timeout)
    app[POOL] = pool
    yield
    await pool.close()


async def _reads_ctx(app: web.Application) -> AsyncIterator[None]:
    """Where searches run: the replicas' pool when the settings name one (opened with the primary's, after
    migrations), else the primary's pool."""
    settings = app[SETTINGS]
    spec = app[SPEC]
    replica = None
    if settings.read_dsn is not None:
        replica = replicas.make_replica_pool(
            settings.read_dsn, min_size=spec.database.pool_min_size, max_size=spec.database.pool_max_size
        )
    router = replicas.ReadRouter(app[POOL], replica, wait_seconds=settings.replica_wait_seconds)
    app[READS] = router
    if replica is not None:
        metrics.add_gauge_source(
            "db_read_pool", metrics.pool_gauges(replica.get_stats, "vectorstore_db_read_pool"), per_process=True
        )
        metrics.add_gauge_source("replica_up", metrics.replica_up_gauge(lambda: router.up), per_process=True)
    yield
    await router.close()


async def _embedder_ctx(app: web.Application) -> AsyncIterator[None]:
    client = EmbeddingClient.from_spec(app[SPEC].embedding, app[SETTINGS].embedding_api_key)
    load = getattr(client.backend, "load", None)
    if load is not None:
        # The built-in model loads in ~0.2 s; do it before serving so the first search doesn't wait for it.
        await asyncio.to_thread(load)
    app[EMBEDDER] = client
    yield
    await client.close()


async def _start_database(app: web.Application) -> None:
    """Migrate, open the pool, reconcile; retry while the database is unreachable, stop on a real error."""
    state = app[READINESS]
    settings = app[SETTINGS]
    spec = app[SPEC]
    pool = app[POOL]
    delay = 0.5
    pool_opened = False
    while True:
        try:
            state.status = "migrating"
            async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as conn:
                await migrate(conn)
            if not pool_opened:
                await pool.open(wait=False)
                # The replicas are optional: not waited for; searches use the primary until they answer.
                await app[READS].open()
                pool_opened = True
            await pool.wait(timeout=30.0)
            if settings.reconcile:
                state.status = "reconciling"
                async with pool.connection() as conn:
                    plan = await reconcile.reconcile(conn, spec)
                state.summary = plan.counts()
            state.ready = True
            state.status = "ready"
            state.error = None
            state.done.set()
            return
        except (MigrationError, reconcile.ReconcileError) as exc:
            state.status = "failed"
            state.error = str(exc)
            log.error("startup failed: %s", exc)
            state.fatal.set()
            state.done.set()
            return
        except (psycopg.OperationalError, PoolTimeout) as exc:
            state.error = f"The database is not reachable yet ({state.status}): {str(exc).strip()[:200]}"
            log.warning("%s; retrying in %.1fs", state.error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_start_database(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(spec: Spec, *, settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth.auth_middleware],
        client_max_size=spec.server.max_upload_bytes,
    )
    app[SPEC] = spec
    app[SETTINGS] = settings
    app[READINESS] = Readiness()
    app[FILE_COUNTS] = no_file_counts
    app[REDACTOR] = Redactor(settings.secret_values())
    app[auth.AUTHENTICATOR] = auth.Authenticator(spec, settings.api_keys)
    # Order matters: teardown runs in reverse, so the readiness task stops before the pool closes.
    app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_reads_ctx)
    app.cleanup_ctx.append(_embedder_ctx)
    app.cleanup_ctx.append(_readiness_ctx)
    for name in ROUTE_MODULES:
        module = importlib.import_module(name)
        mount(app, module.routes)
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
    for name in SERVICE_MODULES:
        importlib.import_module(name).setup(app)
    return app
