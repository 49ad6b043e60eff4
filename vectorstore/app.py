"""The aiohttp app factory: resources as cleanup contexts, middlewares, and every route under /v1 and bare.

`create_app(spec, settings=...)` takes an already-loaded spec and resolved settings; it never reads argv or
the environment (that is `commands.serve`'s job), so tests and benches build apps directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from psycopg_pool import PoolClosed, PoolTimeout

from config import Spec
from config.names import HEALTH_PATH, READY_PATH
from vectorstore import auth, db, reconcile
from vectorstore.embeddings import EmbeddingClient, EmbeddingSettings
from vectorstore.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from vectorstore.migrations import MigrationError, migrate
from vectorstore.settings import Settings
from vectorstore.state import EMBEDDER, FILE_COUNTS, POOL, READINESS, SETTINGS, SPEC, Readiness
from vectorstore.stores import no_file_counts

log = logging.getLogger("vectorstore")

API_PREFIX = "/v1"
# Resource modules: each has `routes: web.RouteTableDef` (paths without /v1) and may have
# `setup(app) -> None` to add its own cleanup contexts or app keys. See docs/server.md.
ROUTE_MODULES: tuple[str, ...] = (
    # First: its setup() puts the access-log and metrics middlewares outside all others; serves /metrics, /openapi.json.
    "vectorstore.observability",
    "vectorstore.api.vector_stores",
    "vectorstore.api.search",
    "vectorstore.api.embeddings",
    "vectorstore.api.files",
    "vectorstore.api.vector_store_files",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes OpenAI's envelope; nothing internal (trace, SQL) is ever sent."""
    try:
        return await handler(request)
    except ApiError as api_error:
        return error_response(api_error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return error_response(NotFound(f"Unknown route: {request.method} {request.path}.", code="unknown_route"))
        if exc.status == 405:
            allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
            error: ApiError = MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.path}; use {allowed}."
            )
            error.headers["Allow"] = allowed
            return error_response(error)
        if exc.status == 413:
            return error_response(
                PayloadTooLarge(f"The request body is larger than the limit of {request.app._client_max_size} bytes.")
            )
        generic = ApiError(exc.reason)
        generic.status = exc.status
        generic.type = "invalid_request_error"
        return error_response(generic)
    except (PoolTimeout, PoolClosed) as exc:
        log.warning("database pool unavailable: %s", exc)
        return error_response(ServiceUnavailable("The database is not available; retry later."))
    except psycopg.OperationalError as exc:
        log.warning("database error: %s", exc)
        return error_response(ServiceUnavailable("The database is not available; retry later."))
    except (psycopg.DataError, UnicodeEncodeError) as exc:
        # Input PostgreSQL can't store (a NUL character, an unpaired surrogate from a JSON escape, an
        # out-of-range value) is the client's mistake, found by schemathesis; never a 500.
        log.info("rejected a value the database can't store on %s %s: %s", request.method, request.path, exc)
        return error_response(
            BadRequest(
                "A parameter holds a value that can't be stored (a NUL character, an unpaired surrogate "
                "or an out-of-range number)."
            )
        )
    except HttpProcessingError as exc:
        # A malformed body part (e.g. a multipart header with control characters): aiohttp parses those lazily,
        # inside the handler, so its 400 arrives here as an exception.
        return error_response(BadRequest(f"The request body is malformed: {exc.message}", param="body"))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(InternalError("The server had an error while processing the request."))


def mount(app: web.Application, routes: web.RouteTableDef) -> None:
    """Register each route under /v1 and without the prefix (LiteLLM generations differ, REFERENCE §2)."""
    for route in routes:
        assert isinstance(route, web.RouteDef), "only RouteDef entries (no static routes)"
        for prefix in (API_PREFIX, ""):
            app.router.add_route(route.method, prefix + route.path, route.handler, **route.kwargs)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy"})


async def ready(request: web.Request) -> web.Response:
    state = request.app[READINESS]
    if not state.ready:
        raise ServiceUnavailable(state.error or f"Not ready: {state.status}.", code="not_ready")
    try:
        async with request.app[POOL].connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except (PoolTimeout, PoolClosed, psycopg.OperationalError):
        raise ServiceUnavailable("The database is not reachable.", code="database_unavailable") from None
    return web.json_response({"status": "ready", "reconcile": state.summary})


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = db.make_pool(app[SETTINGS].dsn, app[SPEC], timeout=app[SETTINGS].pool_timeout)
    app[POOL] = pool
    yield
    await pool.close()


async def _embedder_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = EmbeddingSettings.from_spec(app[SPEC].embedding, app[SETTINGS].embedding_api_key)
    client = EmbeddingClient(settings)
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
    app[auth.AUTHENTICATOR] = auth.Authenticator(spec, settings.api_keys)
    # Order matters: teardown runs in reverse, so the readiness task stops before the pool closes.
    app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_embedder_ctx)
    app.cleanup_ctx.append(_readiness_ctx)
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_get(READY_PATH, ready)
    for name in ROUTE_MODULES:
        module = importlib.import_module(name)
        mount(app, module.routes)
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
    return app
