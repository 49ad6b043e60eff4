"""`POST /vector_stores/{id}/search`: OpenAI's search, OGX's `search_mode`, and the prototype's `limit`,
`return_metadata` and flat filters.

What a request doesn't say comes from the store's `search` settings in the spec (the top-level ones for stores
created through the API): the mode (hybrid by default), the hybrid weights, how many results, and whether to
rerank. A request can override the mode with OGX's `search_mode` (`vector | keyword | hybrid`) and the weights
with OpenAI's `ranking_options.hybrid_search` (`{embedding_weight, text_weight}`, which also selects hybrid);
`ranking_options.ranker: none` skips the reranker. Scores are 0..1 in every mode (docs/search.md says what
they mean in each). `rewrite_query` is accepted and ignored: the query is searched as written, and
`search_query` reports exactly that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from psycopg import errors as pg_errors

from vectorstore import state
from vectorstore.api import auth, common
from vectorstore.errors import BadRequest, ServiceUnavailable, UpstreamError, store_not_found
from vectorstore.migration import records as migrations
from vectorstore.observability import metrics
from vectorstore.search import hybrid, text
from vectorstore.search.filters import compile_filters
from vectorstore.search.rerank import Reranker
from vectorstore.search.vector import NO_FILTER, Hit, exact_is_cheap, run_search
from vectorstore.storage import stores

log = logging.getLogger("vectorstore")
routes = web.RouteTableDef()

_FIELDS = {
    "query",
    "filters",
    "max_num_results",
    "ranking_options",
    "rewrite_query",
    "limit",
    "return_metadata",
    "search_mode",
}
_RANKING_FIELDS = {"ranker", "score_threshold", "hybrid_search"}
_RANKERS = ("auto", "none", "default-2024-11-15")
_MODES = ("vector", "keyword", "hybrid")
_MAX_QUERIES = 32
MAX_QUERY_TOKENS = common.MAX_INPUT_TOKENS
MAX_QUERY_CHARS = common.MAX_INPUT_CHARS
# A store's shape (table, dimensions, distance, model) changes only by an online migration's swap, which keeps
# the replaced table for at least a minute, and a deleted store's table is gone (caught below), so a short-lived
# cache spares one registry query per search. Its statistics
# (rows, lexeme frequencies) may be that much older, which only nudges BM25's weights.
_CACHE_SECONDS = 10.0
_CACHE: web.AppKey[dict[str, tuple[float, stores.StoreRecord]]] = web.AppKey("search_store_cache")
RERANKER: web.AppKey[Reranker | None] = web.AppKey("reranker")


async def _reranker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[state.SPEC].rerank
    reranker = Reranker(settings, app[state.SETTINGS].rerank_api_key) if settings is not None else None
    app[RERANKER] = reranker
    yield
    if reranker is not None:
        await reranker.close()


def setup(app: web.Application) -> None:
    app[_CACHE] = {}
    app.cleanup_ctx.append(_reranker_ctx)


def _query(body: dict[str, Any]) -> tuple[str, list[str]]:
    value = body.get("query")
    if isinstance(value, str):
        if not value.strip():
            raise BadRequest("'query' must not be empty.", param="query")
        return common.embeddable(value, "query", code="query_too_long"), [value]
    if isinstance(value, list):
        if not value or len(value) > _MAX_QUERIES:
            raise BadRequest(f"'query' must hold 1 to {_MAX_QUERIES} strings.", param="query")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise BadRequest(f"'query[{i}]' must be a non-empty string.", param=f"query[{i}]")
        # Several queries are searched as one text: one embedding, one ranking.
        return common.embeddable("\n".join(value), "query", code="query_too_long"), list(value)
    if value is None:
        raise BadRequest("Missing required parameter: 'query'.", param="query")
    raise BadRequest("'query' must be a string or an array of strings.", param="query")


def _weights(ranking: dict[str, Any]) -> hybrid.Weights | None:
    value = common.opt_object(ranking, "hybrid_search", param="ranking_options.hybrid_search")
    if value is None:
        return None
    common.reject_unknown_in(value, {"embedding_weight", "text_weight"}, "ranking_options.hybrid_search")
    weights = [
        common.opt_number(value, key, lo=0.0, hi=100.0, param=f"ranking_options.hybrid_search.{key}")
        for key in ("embedding_weight", "text_weight")
    ]
    embedding_weight = 1.0 if weights[0] is None else weights[0]
    text_weight = 1.0 if weights[1] is None else weights[1]
    if embedding_weight == 0 and text_weight == 0:
        raise BadRequest(
            "'ranking_options.hybrid_search' needs a weight above 0.", param="ranking_options.hybrid_search"
        )
    return hybrid.Weights(embedding_weight, text_weight)


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
    query_text, search_query = _query(body)
    ranking = common.opt_object(body, "ranking_options") or {}
    common.reject_unknown_in(ranking, _RANKING_FIELDS, "ranking_options")
    threshold = common.opt_number(ranking, "score_threshold", lo=0.0, hi=1.0, param="ranking_options.score_threshold")
    ranker = common.opt_str(ranking, "ranker", param="ranking_options.ranker")
    if ranker is not None and ranker not in _RANKERS:
        raise BadRequest(
            "'ranking_options.ranker' must be 'auto', 'none' or 'default-2024-11-15'.", param="ranking_options.ranker"
        )
    weights = _weights(ranking)
    mode = common.opt_str(body, "search_mode")
    if mode is not None and mode not in _MODES:
        raise BadRequest("'search_mode' must be 'vector', 'keyword' or 'hybrid'.", param="search_mode")
    common.opt_bool(body, "rewrite_query")  # accepted; queries are searched as written (see the module docstring)
    return_metadata = common.opt_bool(body, "return_metadata")
    where, params = compile_filters(body["filters"]) if body.get("filters") is not None else (NO_FILTER, [])
    limit = common.opt_int(body, "max_num_results", lo=1, hi=50)
    if limit is None:
        # The prototype's `limit` (up to 100), else the store's default.
        limit = common.opt_int(body, "limit", lo=1, hi=100)

    record = await _store(request, store_id)
    settings = state.spec(request).search_for(record.id)
    limit = limit if limit is not None else settings.default_max_num_results
    if mode is None:
        mode = "hybrid" if weights is not None else settings.mode
    weights = weights or hybrid.Weights(settings.embedding_weight, settings.text_weight)
    reranker = request.app[RERANKER] if settings.rerank and ranker != "none" else None
    fetch = max(limit, reranker.settings.candidates) if reranker is not None else limit
    try:
        # On a read replica that has replayed the caller's writes when database.read_replicas is on.
        hits = await _run(request, record, query_text, mode, weights, where, params, limit=fetch)
    except pg_errors.UndefinedTable:
        # A deleted store, or a cached record naming a generation an online migration has since dropped
        # (vectorstore/migration): read the registry again before saying the store is gone.
        request.app[_CACHE].pop(store_id, None)
        fresh = await _store(request, store_id)
        if fresh.table_name == record.table_name:
            raise store_not_found(store_id) from None
        try:
            hits = await _run(request, fresh, query_text, mode, weights, where, params, limit=fetch)
        except pg_errors.UndefinedTable:
            request.app[_CACHE].pop(store_id, None)
            raise store_not_found(store_id) from None
    if reranker is not None and len(hits) > 1:
        ranked = await reranker.rerank(query_text, [hit.content for hit in hits], top_n=limit)
        if ranked is not None:
            hits = [_rescored(hits[item.index], item.score) for item in ranked]
    hits = hits[:limit]
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


async def _migrating(request: web.Request, store_id: str) -> bool:
    async with state.pool(request).connection() as conn:
        migration = await migrations.get(conn, store_id)
    return migration is not None and migration.active and migration.reembed


def _rescored(hit: Hit, score: float) -> Hit:
    return Hit(hit.id, hit.file_id, hit.filename, hit.content, hit.attributes, hit.distance, score)


async def _run(
    request: web.Request,
    record: stores.StoreRecord,
    query_text: str,
    mode: str,
    weights: hybrid.Weights,
    where: Any,
    params: list[Any],
    *,
    limit: int,
) -> list[Hit]:
    """Hits of the store for the query in `mode`, best first; falls back to the vector ranking when the store's
    keyword index is still being built or the query has no indexable term. Each statement runs on a read
    replica that has replayed the caller's writes when database.read_replicas is on (storage/replicas.py)."""
    fallback = "none"
    if mode != "vector" and record.text_search != "ready":
        mode, fallback = "vector", "upgrading"
    exact = exact_is_cheap(record.analyzed_rows)
    stats = text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)
    reads = state.reads(request)
    if mode == "keyword":
        result = await reads.run(
            lambda conn: hybrid.run_keyword(
                conn, record.layout, stats, query_text, limit=limit, where=where, where_params=params
            )
        )
        if result.terms > 0:
            metrics.count_search("keyword")
            return result.hits
        mode, fallback = "vector", "no_terms"
    try:
        embedding = await state.embedder(request).embed_query(
            query_text, model=record.model, dimensions=record.dimensions
        )
    except UpstreamError as exc:
        if not await _migrating(request, record.id):
            raise
        # The store migrates to a new model and the upstream no longer embeds with the old one (say it dropped
        # it): the old generation can still be ranked by keywords, but not by vectors.
        if mode == "hybrid" and record.text_search == "ready":
            log.warning(
                "search of store %s: its model %r can't embed the query during its migration (%s);"
                " answering by keyword ranking",
                record.id,
                record.model,
                exc.message,
            )
            result = await reads.run(
                lambda conn: hybrid.run_keyword(
                    conn, record.layout, stats, query_text, limit=limit, where=where, where_params=params
                )
            )
            metrics.count_search("keyword", "old_model_unavailable")
            return result.hits
        raise ServiceUnavailable(
            f"Vector store {record.id} is migrating to a new embedding model, and its current model"
            f" {record.model!r} can't embed the query any more ({exc.message}). Vector search on it returns when the"
            f" migration swaps in the new generation (GET /v1/vector_stores/{record.id}/migration says when); keyword"
            " search (search_mode: keyword) answers meanwhile.",
            code="store_migrating",
        ) from None
    if mode == "hybrid":
        result = await reads.run(
            lambda conn: hybrid.run_hybrid(
                conn,
                record.layout,
                stats,
                query_text,
                embedding,
                limit=limit,
                depth=hybrid.depth_for(limit),
                ef_search=record.ef_search,
                weights=weights,
                where=where,
                where_params=params,
                exact=exact,
            )
        )
        metrics.count_search("hybrid", "none" if result.terms else "no_terms")
        return result.hits
    hits = await reads.run(
        lambda conn: run_search(
            conn,
            record.layout,
            embedding,
            limit=limit,
            ef_search=record.ef_search,
            where=where,
            where_params=params,
            exact=exact,
        )
    )
    metrics.count_search("vector", fallback)
    return hits
