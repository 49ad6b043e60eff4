"""Wires logs and metrics into an app, and serves `/metrics` and `/openapi.json`.

The app factory loads this module like a resource module (`ROUTE_MODULES` in app.py): its `routes` table is
empty, because `mount` would serve it under /v1 too, and `setup(app)` adds the two routes at their fixed paths.

`setup(app)` puts the access-log and metrics middlewares first,
outside every other middleware, so they see the final status of every request: errors rendered by the error
middleware, 401s from auth, and aiohttp's own 404/405s.

`/metrics` needs no key (Prometheus scrapes it from inside the cluster; it holds no ids, only route templates).
`/openapi.json` needs a key like every API route: only /health, /ready and /metrics are public.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any, Final

import psycopg
from aiohttp import web
from psycopg_pool import PoolClosed, PoolTimeout

from config.names import METRICS_PATH
from vectorstore.api.auth import read_only
from vectorstore.observability import logs, metrics
from vectorstore.state import POOL, READINESS, SETTINGS

OPENAPI_PATH: Final = "/openapi.json"
log = logging.getLogger("vectorstore")


@cache
def openapi_document() -> dict[str, Any]:
    """The committed OpenAPI 3.1 document (package data), parsed once."""
    # Beside this module: it ships as package data (pyproject), and a plain path works for editable installs too.
    text = (Path(__file__).parent / "openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@cache
def _openapi_body() -> bytes:
    return json.dumps(openapi_document(), separators=(",", ":")).encode()


# The ingestion queue, by state: jobs ready to run, and jobs waiting for a retry (`run_after` in the future).
# A job being worked on keeps its row (locked) until it commits, so it counts as ready here.
_QUEUE_SQL: Final = """
SELECT count(*) FILTER (WHERE run_after <= now()), count(*) FILTER (WHERE run_after > now()) FROM ingest_jobs
"""


async def _queue_depths(app: web.Application) -> dict[str, int]:
    """Read at scrape time; on any database trouble the series is left out rather than the scrape failed."""
    try:
        async with app[POOL].connection(timeout=1.0) as conn:
            row = await (await conn.execute(_QUEUE_SQL)).fetchone()
    except (KeyError, psycopg.Error, PoolTimeout, PoolClosed):
        return {}
    return {"ready": int(row[0]), "delayed": int(row[1])} if row else {}


def _worker(app: web.Application) -> str | None:
    """This process's index under `serve --workers N` (its `worker` label), None for a single process."""
    settings = app.get(SETTINGS)  # absent in an app built for the observability routes alone (tests)
    return str(settings.worker_index) if settings is not None and settings.worker_count > 1 else None


async def _worker_gauges_ctx(app: web.Application) -> AsyncIterator[None]:
    """Under `serve --workers N`: publish this worker's pool, readiness and replica gauges every second, so
    whichever worker answers a scrape reports them (metrics.publish_worker_gauges)."""
    worker = _worker(app)
    if worker is None:
        yield
        return

    async def publish() -> None:
        while True:
            # One failed publication must not end the loop: this worker's gauges would freeze at their last
            # values (say `ready 0` from before startup finished) in every scrape, whichever worker answers.
            try:
                metrics.publish_worker_gauges(worker)
            except Exception:
                log.exception("publishing worker %s's gauges failed; retrying", worker)
            await asyncio.sleep(metrics.WORKER_PUBLISH_SECONDS)

    task = asyncio.create_task(publish())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def metrics_handler(request: web.Request) -> web.Response:
    depths = await _queue_depths(request.app)
    metrics.add_gauge_source("ingest_queue", metrics.queue_gauge(lambda: depths))
    body, content_type = metrics.render(_worker(request.app))
    # prometheus_client's content type carries parameters (version, charset) aiohttp wants in the header.
    return web.Response(body=body, headers={"Content-Type": content_type})


@read_only
async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=_openapi_body(), content_type="application/json")


routes = web.RouteTableDef()
"""Empty on purpose: /metrics and /openapi.json live at the root only (see `setup`)."""


def setup(app: web.Application) -> None:
    """Register the middlewares (outermost first), the request-id header hook and the two routes."""
    app.middlewares.insert(0, logs.access_log_middleware)
    app.middlewares.insert(1, metrics.metrics_middleware)
    app.on_response_prepare.append(logs.echo_request_id)
    app.router.add_get(METRICS_PATH, metrics_handler, allow_head=False)
    app.router.add_get(OPENAPI_PATH, openapi_handler, allow_head=False)
    # Read at scrape time from the app's own pool; absent (no series) until the pool exists.
    metrics.add_gauge_source("db_pool", metrics.pool_gauges(lambda: app[POOL].get_stats()), per_process=True)
    metrics.add_gauge_source(
        "ready", metrics.ready_gauge(lambda: READINESS in app and app[READINESS].ready), per_process=True
    )
    app.cleanup_ctx.append(_worker_gauges_ctx)
