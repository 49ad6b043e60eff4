"""`GET /vector_stores/{id}/sources`: the declared sources of a store and how their last sync went (read-only).

Not an OpenAI route: the OpenAI API has no declared documents. A `read` key may call it; a key limited to
other stores gets the same 404 as for a store that does not exist.
"""

from __future__ import annotations

from aiohttp import web

from vectorstore import state
from vectorstore.api import auth, common
from vectorstore.sources import status

routes = web.RouteTableDef()


@routes.get("/vector_stores/{vector_store_id}/sources")
@auth.read_only
async def list_sources(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        declared = next((item for item in state.spec(request).stores if item.id == store.id), None)
        data = await status.views(conn, declared) if declared is not None and declared.sources else []
    return web.json_response(common.list_page(data, False))
