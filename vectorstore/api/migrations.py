"""`GET /vector_stores/{id}/migration`: where a store's online migration stands (read-only).

Not an OpenAI route (OpenAI's store object only says `status: in_progress`, which this server also does while
a store migrates): the phase, chunks done out of total, embedding calls and tokens, rate, ETA and last error.
A store that never migrated answers `phase: none`.
"""

from __future__ import annotations

from aiohttp import web

from vectorstore import state
from vectorstore.api import auth, common
from vectorstore.migration import records

routes = web.RouteTableDef()


@routes.get("/vector_stores/{vector_store_id}/migration")
@auth.read_only
async def migration_status(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        migration = await records.get(conn, store.id)
    if migration is None:
        return web.json_response({"object": "vector_store.migration", "vector_store_id": store.id, "phase": "none"})
    return web.json_response(migration.to_json())
