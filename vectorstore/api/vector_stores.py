"""`/vector_stores`: create, list, retrieve, modify, delete (OpenAI Vector Stores API, REFERENCE §4)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from aiohttp import web

from vectorstore import state
from vectorstore.api import auth, common, ogx, vector_store_files
from vectorstore.errors import BadRequest, Conflict
from vectorstore.search import service as search_service
from vectorstore.storage import stores

routes = web.RouteTableDef()

_CREATE_FIELDS = {"name", "description", "metadata", "expires_after", "file_ids", "chunking_strategy", *ogx.FIELDS}
_MODIFY_FIELDS = {"name", "metadata", "expires_after"}

# Defaults for stores created through the API: the spec's embedding, pgvector's HNSW build defaults, and the
# spec's default ef_search (100, measured in bench/recall.py; pgvector's own is 40).
_DEFAULT_M = 16
_DEFAULT_EF_CONSTRUCTION = 64
_DEFAULT_EF_SEARCH = 100


def _expires_after(body: dict[str, Any]) -> dict[str, Any] | None:
    value = common.opt_object(body, "expires_after")
    if value is None:
        return None
    if value.get("anchor") != "last_active_at":
        raise BadRequest("'expires_after.anchor' must be 'last_active_at'.", param="expires_after.anchor")
    days = common.opt_int(value, "days", lo=1, hi=365, param="expires_after.days")
    if days is None:
        raise BadRequest("Missing required parameter: 'expires_after.days'.", param="expires_after.days")
    return {"anchor": "last_active_at", "days": days}


async def _render(
    request: web.Request, conn: psycopg.AsyncConnection[Any], records: list[stores.StoreRecord]
) -> list[dict[str, Any]]:
    return [view.to_json() for view in await stores.views(conn, records, request.app[state.FILE_COUNTS])]


@routes.post("/vector_stores")
async def create_store(request: web.Request) -> web.Response:
    body = await common.json_body(request, allow_empty=True)
    common.reject_unknown(body, _CREATE_FIELDS)
    name = common.opt_str(body, "name", max_len=256)
    description = common.opt_str(body, "description", max_len=512)
    metadata = common.metadata(body) or {}
    expires_after = _expires_after(body)
    file_ids = body.get("file_ids")
    if file_ids is not None and (not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids)):
        raise BadRequest("'file_ids' must be an array of file id strings.", param="file_ids")
    wants_files = bool(file_ids) or body.get("chunking_strategy") is not None
    if auth.principal(request).store_ids is not None:
        # A key limited to declared stores could never see what it creates.
        raise BadRequest("This API key is limited to declared stores and can't create new ones.", param=None)
    spec = state.spec(request)
    # The spec's embedding, or the servable model OGX's `embedding_model` names (400 for one it can't serve).
    model = ogx.model_for_new_store(spec, body)
    async with state.pool(request).connection() as conn, conn.transaction():
        record = await stores.insert(
            conn,
            stores.NewStore(
                id="vs_" + uuid.uuid4().hex,
                name=name,
                description=description,
                metadata=metadata,
                declared=False,
                model=model.name,
                dimensions=model.dimensions,
                distance="cosine",
                hnsw_m=_DEFAULT_M,
                hnsw_ef_construction=_DEFAULT_EF_CONSTRUCTION,
                ef_search=_DEFAULT_EF_SEARCH,
                language=spec.search.language,
                expires_after=expires_after,
            ),
        )
        if wants_files:
            await vector_store_files.attach_at_creation(request, conn, record, body)
        [data] = await _render(request, conn, [record])
    return web.json_response(data)


@routes.get("/vector_stores")
@auth.read_only
async def list_stores(request: web.Request) -> web.Response:
    limit = common.query_int(request, "limit", default=20, lo=1, hi=100)
    order = common.query_choice(request, "order", default="desc", choices=("asc", "desc"))
    principal = auth.principal(request)
    async with state.pool(request).connection() as conn:
        cursors: dict[str, int | None] = {}
        for key in ("after", "before"):
            cursor = request.query.get(key) or None
            cursors[key] = None
            if cursor is not None:
                seq = await stores.seq_of(conn, cursor) if principal.can_see(cursor) else None
                if seq is None:
                    raise BadRequest(f"'{key}' is not the id of a vector store: '{cursor[:80]}'.", param=key)
                cursors[key] = seq
        records, has_more = await stores.page(
            conn,
            limit=limit,
            descending=order == "desc",
            after_seq=cursors["after"],
            before_seq=cursors["before"],
            visible_ids=principal.store_ids,
        )
        data = await _render(request, conn, records)
    return web.json_response(common.list_page(data, has_more))


@routes.get("/vector_stores/{vector_store_id}")
@auth.read_only
async def retrieve_store(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        record = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        [data] = await _render(request, conn, [record])
    return web.json_response(data)


@routes.get("/vector_stores/{vector_store_id}/settings")
@auth.read_only
async def store_settings(request: web.Request) -> web.Response:
    """How the store is built and searched (not an OpenAI route): what the console shows beside the store.
    Names, numbers and modes only: no secret lives in any of it."""
    async with state.pool(request).connection() as conn:
        record = await common.visible_store(request, conn, request.match_info["vector_store_id"])
    search = state.spec(request).search_for(record.id)
    return web.json_response(
        {
            "id": record.id,
            "object": "vector_store.settings",
            "name": record.name,
            "declared": record.declared,
            "model": record.model,
            "dimensions": record.dimensions,
            "distance": record.distance,
            "vector_type": record.vector_type,
            "quantization": record.quantization,
            "index": {
                "m": record.hnsw_m,
                "ef_construction": record.hnsw_ef_construction,
                "ef_search": record.ef_search,
            },
            "keyword_index": record.text_search,
            "search": {
                "mode": search.mode,
                "language": search.language,
                "default_max_num_results": search.default_max_num_results,
                "embedding_weight": search.embedding_weight,
                "text_weight": search.text_weight,
                "rerank": search.rerank and state.spec(request).rerank is not None,
            },
        }
    )


def _declared_conflict(record: stores.StoreRecord, action: str) -> Conflict:
    return Conflict(
        f"Vector store '{record.id}' ({record.name}) is declared in the spec and can't be {action} through the API; "
        "change the spec (stores[]) and redeploy instead.",
        code="declared_store",
        retry=False,
    )


@routes.post("/vector_stores/{vector_store_id}")
async def modify_store(request: web.Request) -> web.Response:
    body = await common.json_body(request, allow_empty=True)
    common.reject_unknown(body, _MODIFY_FIELDS)
    values: dict[str, Any] = {}
    if "name" in body:
        values["name"] = common.opt_str(body, "name", max_len=256)
    if body.get("metadata") is not None:
        values["metadata"] = common.metadata(body)
    if "expires_after" in body:
        values["expires_after"] = _expires_after(body)
    async with state.pool(request).connection() as conn, conn.transaction():
        record = await common.visible_store(request, conn, request.match_info["vector_store_id"], for_update=True)
        if record.declared:
            raise _declared_conflict(record, "modified")
        if values:
            record = await stores.update_fields(conn, record.id, values)
        [data] = await _render(request, conn, [record])
    return web.json_response(data)


@routes.delete("/vector_stores/{vector_store_id}")
async def delete_store(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn, conn.transaction():
        record = await common.visible_store(request, conn, request.match_info["vector_store_id"], for_update=True)
        if record.declared:
            raise _declared_conflict(record, "deleted")
        await stores.delete(conn, record)
    # This process's decoded postings of the store go at once; another worker's are never used again and leave
    # its cache, least recently used, as it needs the room.
    cache = request.app.get(search_service.POSTINGS_CACHE)
    if cache is not None:
        cache.forget(record.table_name)
    return web.json_response({"id": record.id, "object": "vector_store.deleted", "deleted": True})
