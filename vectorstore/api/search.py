"""`POST /vector_stores/{id}/search`: OpenAI's search, plus the prototype's `limit`/`return_metadata`/flat filters."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from psycopg import errors as pg_errors

from vectorstore import state
from vectorstore.api import auth, common
from vectorstore.errors import BadRequest, store_not_found
from vectorstore.search.filters import compile_filters
from vectorstore.search.vector import run_search
from vectorstore.storage import stores

routes = web.RouteTableDef()

_FIELDS = {"query", "filters", "max_num_results", "ranking_options", "rewrite_query", "limit", "return_metadata"}
_MAX_QUERIES = 32
# A store's shape (table, dimensions, distance, model) never changes while it has data, and a deleted store's
# table is gone (caught below), so a short-lived cache spares one registry query per search.
_CACHE_SECONDS = 10.0
_CACHE: web.AppKey[dict[str, tuple[float, stores.StoreRecord]]] = web.AppKey("search_store_cache")


def setup(app: web.Application) -> None:
    app[_CACHE] = {}


def _query(body: dict[str, Any]) -> tuple[str, list[str]]:
    value = body.get("query")
    if isinstance(value, str):
        if not value.strip():
            raise BadRequest("'query' must not be empty.", param="query")
        return value, [value]
    if isinstance(value, list):
        if not value or len(value) > _MAX_QUERIES:
            raise BadRequest(f"'query' must hold 1 to {_MAX_QUERIES} strings.", param="query")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise BadRequest(f"'query[{i}]' must be a non-empty string.", param=f"query[{i}]")
        # Several queries are searched as one text: one embedding, one ranking.
        return "\n".join(value), list(value)
    if value is None:
        raise BadRequest("Missing required parameter: 'query'.", param="query")
    raise BadRequest("'query' must be a string or an array of strings.", param="query")


async def _store(request: web.Request, store_id: str) -> stores.StoreRecord:
    auth.check_store(request, store_id)
    cache = request.app[_CACHE]
    hit = cache.get(store_id)
    now = time.monotonic()
    if hit is not None and now - hit[0] < _CACHE_SECONDS:
        return hit[1]
    async with state.pool(request).connection() as conn:
        record = await stores.get(conn, store_id)
    if record is None:
        cache.pop(store_id, None)
        raise store_not_found(store_id)
    cache[store_id] = (now, record)
    return record


@routes.post("/vector_stores/{vector_store_id}/search")
@auth.read_only
async def search(request: web.Request) -> web.Response:
    store_id = request.match_info["vector_store_id"]
    body = await common.json_body(request)
    common.reject_unknown(body, _FIELDS)
    text, search_query = _query(body)
    limit = common.opt_int(body, "max_num_results", lo=1, hi=50)
    if limit is None:
        # The prototype's `limit` (default 20, up to 100); OpenAI's default is 10.
        prototype_limit = common.opt_int(body, "limit", lo=1, hi=100)
        limit = prototype_limit if prototype_limit is not None else 10
    ranking = common.opt_object(body, "ranking_options") or {}
    threshold = common.opt_number(ranking, "score_threshold", lo=0.0, hi=1.0, param="ranking_options.score_threshold")
    ranker = common.opt_str(ranking, "ranker", param="ranking_options.ranker")
    if ranker is not None and ranker not in ("auto", "none", "default-2024-11-15"):
        raise BadRequest(
            "'ranking_options.ranker' must be 'auto', 'none' or 'default-2024-11-15'.", param="ranking_options.ranker"
        )
    common.opt_bool(body, "rewrite_query")  # accepted; queries are searched as written
    return_metadata = common.opt_bool(body, "return_metadata")
    where, params = compile_filters(body["filters"]) if body.get("filters") is not None else (None, [])

    record = await _store(request, store_id)
    embedding = await state.embedder(request).embed_query(text, model=record.model, dimensions=record.dimensions)
    try:
        # On a read replica that has replayed the caller's writes when database.read_replicas is on.
        if where is None:
            hits = await state.reads(request).run(
                lambda conn: run_search(conn, record.layout, embedding, limit=limit, ef_search=record.ef_search)
            )
        else:
            hits = await state.reads(request).run(
                lambda conn: run_search(
                    conn,
                    record.layout,
                    embedding,
                    limit=limit,
                    ef_search=record.ef_search,
                    where=where,
                    where_params=params,
                )
            )
    except pg_errors.UndefinedTable:
        request.app[_CACHE].pop(store_id, None)
        raise store_not_found(store_id) from None
    data = [
        {
            # OpenAI's schema has both as strings; rows added through the prototype's /embeddings have no file.
            "file_id": hit.file_id or "",
            "filename": hit.filename or "",
            "score": hit.score,
            "attributes": hit.attributes if return_metadata is not False else {},
            "content": [{"type": "text", "text": hit.content}],
        }
        for hit in hits
        if threshold is None or hit.score >= threshold
    ]
    return common.json_response(
        {
            "object": "vector_store.search_results.page",
            "search_query": search_query,
            "data": data,
            "has_more": False,
            "next_page": None,
        }
    )
