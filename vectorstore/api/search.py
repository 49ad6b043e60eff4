"""`POST /vector_stores/{id}/search`: OpenAI's search, OGX's `search_mode`, and the prototype's `limit`,
`return_metadata` and flat filters.

What a request doesn't say comes from the store's `search` settings in the spec (the top-level ones for stores
created through the API): the mode (hybrid by default), the hybrid weights, how many results, and whether to
rerank. A request can override the mode with OGX's `search_mode` (`vector | keyword | hybrid`) and the weights
with OpenAI's `ranking_options.hybrid_search` (`{embedding_weight, text_weight}`, which also selects hybrid)
or OGX's `rrf` / `weighted` rankers (RRF's k, or the weights: see `_fusion`); `ranking_options.ranker: none`
skips the reranker, and OGX's `neural` runs it even on a store whose `search.rerank` is off. Scores are 0..1
in every mode (docs/search.md says what they mean in each). `rewrite_query` is accepted and ignored: the query
is searched as written, and `search_query` reports exactly that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from psycopg import errors as pg_errors

from vectorstore import state
from vectorstore.api import auth, common
from vectorstore.calibration import plans as calibration_plans
from vectorstore.calibration import service as calibration
from vectorstore.errors import BadRequest, ServiceUnavailable, UpstreamError, store_not_found
from vectorstore.migration import records as migrations
from vectorstore.observability import metrics
from vectorstore.search import hybrid, text
from vectorstore.search import service as search_service
from vectorstore.search.filters import compile_filters
from vectorstore.search.rerank import Reranker
from vectorstore.search.vector import NO_FILTER, Hit, exact_is_cheap, run_search
from vectorstore.storage import stores
from vectorstore.values import shown

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
_RANKING_FIELDS = {"ranker", "score_threshold", "hybrid_search", "impact_factor", "alpha", "weights", "model"}
_RANKERS = ("auto", "none", "default-2024-11-15")
_FUSION_RANKERS = ("rrf", "weighted")
"""OGX's algorithm rankers: they choose how hybrid search fuses its two rankings (see `_fusion`)."""
_MAX_IMPACT_FACTOR = 10000.0
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


@dataclass(frozen=True)
class _Ranking:
    weights: hybrid.Weights | None
    """Set when the request chose the fusion (OpenAI's `hybrid_search`, or OGX's `rrf` / `weighted`)."""
    rerank: bool
    """Whether the store's reranker may run: not for `none`, nor when the request named its fusion ranker."""
    neural: bool = False
    """The request asked for the reranker by name (OGX's `ranker: neural` or `model`): it runs even on a store
    whose `search.rerank` is off, which only sets the default of requests that name no ranker (as `none` skips
    it on a store where it is on). Keeping the fused order there answered the request with something else."""


def _impact_factor(value: dict[str, Any], param: str) -> float:
    k = common.opt_number(value, "impact_factor", lo=0.0, hi=_MAX_IMPACT_FACTOR, param=param)
    if k is None:
        return float(hybrid.RRF_K)
    if k <= 0:
        raise BadRequest(f"'{param}' must be a number above 0 (RRF's k, 60 by default); got {shown(k)}.", param=param)
    return k


def _fusion(ranking: dict[str, Any], spec_rerank_model: str | None) -> _Ranking:
    """`ranking_options` as OpenAI and OGX send it.

    OpenAI: `ranker` is `auto`, `none` or `default-2024-11-15`, and `hybrid_search` sets the two weights.
    OGX: `ranker` is `rrf` or `weighted`, either as a string with `impact_factor` / `alpha` / `weights` beside it
    (llama-stack-client's `SearchRankingOptions`), or as an object `{"type": "rrf", "impact_factor": k}` /
    `{"type": "weighted", "alpha": a}`. Both select hybrid search: `rrf` sets RRF's k (equal weights);
    `weighted` sets the weights with OGX's meaning of alpha, the vector side's share (1 = vector only,
    0 = keyword only: OGX's `(1 - alpha) * keyword + alpha * vector`), fused by RRF with k = 60 rather than
    OGX's average of min-max normalised scores, so scores keep the meaning docs/search.md gives them.
    `neural` (and OGX's `model`) is the spec's reranker: accepted when one is declared, under its model, and
    run whatever the store's `search.rerank` says (that is the default of requests naming no ranker).
    """
    raw = ranking.get("ranker")
    extras = {key: ranking[key] for key in ("impact_factor", "alpha", "weights") if ranking.get(key) is not None}
    prefix = "ranking_options"
    if isinstance(raw, dict):
        kind = common.req_str(raw, "type", param="ranking_options.ranker.type")
        if extras:
            key = next(iter(extras))
            raise BadRequest(
                f"'ranking_options.{key}' can't be given beside a ranker object; put it in 'ranking_options.ranker'.",
                param=f"ranking_options.{key}",
            )
        prefix = "ranking_options.ranker"
        allowed = {"type", "impact_factor"} if kind == "rrf" else {"type", "alpha"} if kind == "weighted" else set()
        if not allowed:
            raise BadRequest(
                f"'ranking_options.ranker.type' must be 'rrf' or 'weighted'; got '{kind[:40]}'.",
                param="ranking_options.ranker.type",
            )
        common.reject_unknown_in(raw, allowed, prefix)
        extras = {key: raw[key] for key in ("impact_factor", "alpha") if raw.get(key) is not None}
    else:
        kind = common.opt_str(ranking, "ranker", param="ranking_options.ranker") or "auto"
    model = common.opt_str(ranking, "model", max_len=512, param="ranking_options.model")
    if kind == "neural" or model is not None:
        if spec_rerank_model is None or (model is not None and model != spec_rerank_model):
            what = (
                "no reranker is declared (spec: rerank)"
                if spec_rerank_model is None
                else (f"the reranker is '{spec_rerank_model}'")
            )
            param = f"ranking_options.{'model' if model is not None else 'ranker'}"
            raise BadRequest(f"'{param}' asks for a neural reranker, but {what}.", param=param)
        if kind not in ("neural", "auto", "default-2024-11-15"):
            raise BadRequest("'ranking_options.model' goes with ranker 'neural'.", param="ranking_options.model")
        if extras:
            key = next(iter(extras))
            raise BadRequest(
                f"'ranking_options.{key}' goes with ranker 'rrf' or 'weighted', not 'neural'.",
                param=f"ranking_options.{key}",
            )
        return _Ranking(_weights(ranking), rerank=True, neural=True)
    if kind in _RANKERS:
        if extras:
            key = next(iter(extras))
            raise BadRequest(
                f"'ranking_options.{key}' goes with ranker 'rrf' or 'weighted', not '{kind}'.",
                param=f"ranking_options.{key}",
            )
        return _Ranking(_weights(ranking), rerank=kind != "none")
    if kind not in _FUSION_RANKERS:
        raise BadRequest(
            "'ranking_options.ranker' must be 'auto', 'none', 'default-2024-11-15', 'rrf', 'weighted' or 'neural'; "
            f"got '{kind[:40]}'.",
            param="ranking_options.ranker",
        )
    if ranking.get("hybrid_search") is not None:
        raise BadRequest(
            f"'ranking_options.hybrid_search' can't be combined with ranker '{kind}'; use one of them.",
            param="ranking_options.hybrid_search",
        )
    if kind == "rrf":
        for key in ("alpha", "weights"):
            if key in extras:
                raise BadRequest(f"'{prefix}.{key}' goes with ranker 'weighted'.", param=f"{prefix}.{key}")
        return _Ranking(hybrid.Weights(k=_impact_factor(extras, f"{prefix}.impact_factor")), rerank=False)
    if "impact_factor" in extras:
        raise BadRequest(f"'{prefix}.impact_factor' goes with ranker 'rrf'.", param=f"{prefix}.impact_factor")
    if "alpha" in extras and "weights" in extras:
        raise BadRequest(
            "Give 'ranking_options.alpha' or 'ranking_options.weights', not both.", param=f"{prefix}.weights"
        )
    if "weights" in extras:
        return _Ranking(_ogx_weights(ranking), rerank=False)
    alpha = common.opt_number(extras, "alpha", lo=0.0, hi=1.0, param=f"{prefix}.alpha")
    alpha = 0.5 if alpha is None else alpha
    return _Ranking(hybrid.Weights(embedding=alpha, text=1.0 - alpha), rerank=False)


def _ogx_weights(ranking: dict[str, Any]) -> hybrid.Weights:
    value = common.opt_object(ranking, "weights", param="ranking_options.weights") or {}
    common.reject_unknown_in(value, {"vector", "keyword", "neural"}, "ranking_options.weights")
    vector, keyword, neural = (
        common.opt_number(value, key, lo=0.0, hi=100.0, param=f"ranking_options.weights.{key}")
        for key in ("vector", "keyword", "neural")
    )
    if neural:
        raise BadRequest(
            "'ranking_options.weights.neural' has no score to weigh here: the reranker replaces the fused order "
            "(ranker 'neural') instead of joining it.",
            param="ranking_options.weights.neural",
        )
    embedding_weight = 1.0 if vector is None else vector
    text_weight = 1.0 if keyword is None else keyword
    if embedding_weight == 0 and text_weight == 0:
        raise BadRequest("'ranking_options.weights' needs a weight above 0.", param="ranking_options.weights")
    return hybrid.Weights(embedding_weight, text_weight)


async def searchable_store(request: web.Request, store_id: str) -> stores.StoreRecord:
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
    started = time.perf_counter()
    store_id = request.match_info["vector_store_id"]
    body = await common.json_body(request)
    common.reject_unknown(body, _FIELDS)
    query_text, search_query = _query(body)
    ranking = common.opt_object(body, "ranking_options") or {}
    common.reject_unknown_in(ranking, _RANKING_FIELDS, "ranking_options")
    threshold = common.opt_number(ranking, "score_threshold", lo=0.0, hi=1.0, param="ranking_options.score_threshold")
    spec = state.spec(request)
    fusion = _fusion(ranking, spec.rerank.model if spec.rerank is not None else None)
    weights = fusion.weights
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

    record = await searchable_store(request, store_id)
    settings = spec.search_for(record.id)
    limit = limit if limit is not None else settings.default_max_num_results
    if mode is None:
        mode = "hybrid" if weights is not None else settings.mode
    weights = weights or hybrid.Weights(settings.embedding_weight, settings.text_weight)
    reranker = request.app[RERANKER] if fusion.neural or (settings.rerank and fusion.rerank) else None
    fetch = max(limit, reranker.settings.candidates) if reranker is not None else limit
    try:
        # On a read replica that has replayed the caller's writes when database.read_replicas is on.
        hits = await ranked_hits(request, record, query_text, mode, weights, where, params, limit=fetch)
    except pg_errors.UndefinedTable:
        # A deleted store, or a cached record naming a generation an online migration has since dropped
        # (vectorstore/migration): read the registry again before saying the store is gone.
        request.app[_CACHE].pop(store_id, None)
        fresh = await searchable_store(request, store_id)
        if fresh.table_name == record.table_name:
            raise store_not_found(store_id) from None
        try:
            hits = await ranked_hits(request, fresh, query_text, mode, weights, where, params, limit=fetch)
        except pg_errors.UndefinedTable:
            request.app[_CACHE].pop(store_id, None)
            raise store_not_found(store_id) from None
    if reranker is not None and len(hits) > 1:
        ranked = await reranker.rerank(query_text, [hit.content for hit in hits], top_n=limit)
        if ranked is not None:
            hits = [_rescored(hits[item.index], item.score) for item in ranked]
    hits = hits[:limit]
    declared = next((item.name for item in state.spec(request).stores if item.id == record.id), None)
    metrics.observe_store_search(declared or metrics.UNDECLARED_STORE, mode, time.perf_counter() - started)
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


async def ranked_hits(
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
    cache = request.app.get(search_service.POSTINGS_CACHE)
    if mode == "keyword":
        result = await reads.run(
            lambda conn: hybrid.run_keyword(
                conn, record.layout, stats, query_text, limit=limit, where=where, where_params=params, cache=cache
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
                    conn, record.layout, stats, query_text, limit=limit, where=where, where_params=params, cache=cache
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
    # With a target recall, the calibrated settings (vectorstore/calibration), and the query kept (in memory only)
    # as a sample for the next calibration.
    tuned = None if exact else calibration.current(request.app, record)
    if calibration.target_of(state.spec(request), record)[0] is not None:
        request.app[calibration.CALIBRATIONS].samples.record(record.id, embedding, where, params)
    unfiltered = tuned.plan_for(None) if tuned is not None else None
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
                ef_search=unfiltered.ef_search if unfiltered is not None else record.ef_search,
                weights=weights,
                where=where,
                where_params=params,
                exact=exact,
                cache=cache,
            )
        )
        metrics.count_search("hybrid", "none" if result.terms else "no_terms")
        return result.hits

    async def vector_search(conn: Any) -> list[Hit]:
        plan = calibration_plans.Plan(record.ef_search, exact=exact)
        if tuned is not None:
            selectivity = await calibration_plans.estimate_selectivity(
                conn, record.layout, where, params, record.analyzed_rows
            )
            plan = tuned.plan_for(selectivity) or plan
        return await run_search(
            conn,
            record.layout,
            embedding,
            limit=limit,
            ef_search=plan.ef_search,
            where=where,
            where_params=params,
            exact=plan.exact,
            max_scan_tuples=plan.max_scan_tuples,
            binary_depth=plan.binary_depth,
        )

    hits = await reads.run(vector_search)
    metrics.count_search("vector", fallback)
    return hits
