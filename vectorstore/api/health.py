"""`/health` (the process answers) and `/ready` (database reachable, startup done): no key, no /v1 prefix."""

from __future__ import annotations

import psycopg
from aiohttp import web
from psycopg_pool import PoolClosed, PoolTimeout

from config.names import HEALTH_PATH, READY_PATH
from vectorstore import workers
from vectorstore.errors import ServiceUnavailable
from vectorstore.state import POOL, READINESS, SETTINGS

routes = web.RouteTableDef()
"""Empty on purpose: both live at the root only (see `setup`), where probes expect them."""


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy"})


async def ready(request: web.Request) -> web.Response:
    state = request.app[READINESS]
    if not state.ready:
        raise ServiceUnavailable(state.error or f"Not ready: {state.status}.", code="not_ready")
    settings = request.app[SETTINGS]
    if settings.workers_ready_dir is not None:
        # The kernel spreads connections over every worker listening on the port: the process is ready only
        # when each of them is, or a client the probe let in meets a worker still starting (503).
        ready = workers.ready_count(settings.workers_ready_dir)
        if ready < settings.worker_count:
            raise ServiceUnavailable(
                f"Not ready: {ready} of {settings.worker_count} worker processes are ready.", code="not_ready"
            )
    try:
        async with request.app[POOL].connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except (PoolTimeout, PoolClosed, psycopg.OperationalError):
        raise ServiceUnavailable("The database is not reachable.", code="database_unavailable") from None
    return web.json_response({"status": "ready", "reconcile": state.summary})


def setup(app: web.Application) -> None:
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_get(READY_PATH, ready)
