"""OGX's chunk API: `POST /vector-io/insert` and `POST /vector-io/query`, in the shapes OGX's client sends.

This is how OGX users load chunks they embedded elsewhere, and how OGX's own tests load their fixtures. A chunk
is `{content, metadata, embedding?, chunk_id?, embedding_model?, embedding_dimension?, chunk_metadata?}`; the
store is `vector_store_id` (or the older `vector_db_id`). A precomputed embedding must have the store's
dimensions (400 otherwise); a chunk without one is embedded by the store's model. Inserted chunks are rows
without a file, like the prototype's `/embeddings` rows, so every search route finds them; inserting a chunk id
again replaces that chunk. `chunk_metadata` is accepted but not stored: a query answers with one rebuilt from
the row (its id, `document_id` and `source` from its metadata, its creation time).

A query takes `params` as OGX does: `max_chunks`, `mode` (`vector | keyword | hybrid`), `score_threshold`,
and `ranker` `{"strategy": "rrf", "params": {"k": k}}` or `{"strategy": "weighted", "params": {"weights":
[vector, keyword]}}` (OGX reads the first weight as alpha, the vector share). It answers `{chunks, scores}`,
each chunk with its embedding.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from psycopg import errors as pg_errors
from psycopg import sql

from vectorstore import state
from vectorstore.api import auth, common, embeddings, search
from vectorstore.errors import BadRequest, store_not_found
from vectorstore.search import hybrid
from vectorstore.search.vector import NO_FILTER, Hit
from vectorstore.storage import stores
from vectorstore.values import shown

routes = web.RouteTableDef()

_INSERT_FIELDS = {"vector_store_id", "vector_db_id", "chunks", "ttl_seconds"}
_CHUNK_FIELDS = {
    "content",
    "metadata",
    "embedding",
    "chunk_id",
    "stored_chunk_id",
    "embedding_model",
    "embedding_dimension",
    "chunk_metadata",
}
_QUERY_FIELDS = {"vector_store_id", "vector_db_id", "query", "params"}
_PARAMS = {"max_chunks", "mode", "score_threshold", "ranker"}
_MODES = ("vector", "keyword", "hybrid")
MAX_CHUNK_ID = 256
MAX_CHUNKS_PER_QUERY = 100


def _store_id(body: dict[str, Any]) -> str:
    store_id = common.opt_str(body, "vector_store_id")
    older = common.opt_str(body, "vector_db_id")
    if store_id is not None and older is not None and older != store_id:
        raise BadRequest("'vector_store_id' and 'vector_db_id' name different stores; send one.", param="vector_db_id")
    chosen = store_id or older
    if not chosen:
        raise BadRequest("Missing required parameter: 'vector_store_id'.", param="vector_store_id")
    return chosen


def _text(value: Any, param: str) -> str:
    """OGX's InterleavedContent as text: a string, a text item, or a list of them (joined as OGX joins them).
    Images are refused: the store embeds text."""
    if isinstance(value, str):
        return value
    items = value if isinstance(value, list) else [value]
    parts: list[str] = []
    for index, item in enumerate(items):
        where = f"{param}[{index}]" if isinstance(value, list) else param
        if isinstance(item, str):
            parts.append(item)
            continue
        if not isinstance(item, dict) or item.get("type", "text") != "text" or not isinstance(item.get("text"), str):
            raise BadRequest(
                f"'{where}' must be text: a string or {{'type': 'text', 'text': ...}} (this store embeds text only).",
                param=where,
            )
        parts.append(item["text"])
    if not parts:
        raise BadRequest(f"'{param}' holds no text.", param=param)
    return " ".join(parts)


def _chunk(value: Any, index: int, store: stores.StoreRecord) -> embeddings.Item:
    path = f"chunks[{index}]"
    if not isinstance(value, dict):
        raise BadRequest(f"'{path}' must be an object.", param=path)
    common.reject_unknown_in(value, _CHUNK_FIELDS, path)
    if "content" not in value:
        raise BadRequest(f"Missing required parameter: '{path}.content'.", param=f"{path}.content")
    content = _text(value["content"], f"{path}.content")
    if not content.strip():
        raise BadRequest(f"'{path}.content' must not be empty.", param=f"{path}.content")
    metadata = embeddings.parse_metadata(value, f"{path}.")
    # OGX moves a `chunk_id` found in the metadata to the chunk itself; so does this.
    chunk_id = common.opt_str(value, "chunk_id", max_len=MAX_CHUNK_ID, param=f"{path}.chunk_id")
    chunk_id = chunk_id or common.opt_str(value, "stored_chunk_id", max_len=MAX_CHUNK_ID, param=f"{path}.chunk_id")
    from_metadata = metadata.pop("chunk_id", None)
    if chunk_id is None and from_metadata is not None:
        chunk_id = str(from_metadata)[:MAX_CHUNK_ID]
    common.opt_object(value, "chunk_metadata", param=f"{path}.chunk_metadata")
    model = common.opt_str(value, "embedding_model", max_len=512, param=f"{path}.embedding_model")
    if model is not None and model != store.model:
        raise BadRequest(
            f"'{path}.embedding_model' is '{model[:120]}', but vector store '{store.id}' embeds with "
            f"'{store.model}': vectors of another model don't compare with its own.",
            param=f"{path}.embedding_model",
        )
    dimension = common.opt_int(value, "embedding_dimension", lo=1, hi=64000, param=f"{path}.embedding_dimension")
    if dimension is not None and dimension != store.dimensions:
        raise BadRequest(
            f"'{path}.embedding_dimension' is {dimension}; vector store '{store.id}' holds {store.dimensions}.",
            param=f"{path}.embedding_dimension",
            code="dimension_mismatch",
        )
    vector = embeddings.parse_embedding(value, f"{path}.", store.dimensions)
    if vector is None:
        common.embeddable(content, f"{path}.content")
    return embeddings.Item(content, vector, metadata, id=chunk_id)


@routes.post("/vector-io/insert")
async def insert(request: web.Request) -> web.Response:
    body = await common.json_body(request)
    common.reject_unknown(body, _INSERT_FIELDS)
    store_id = _store_id(body)
    if body.get("ttl_seconds") is not None:
        raise BadRequest(
            "'ttl_seconds' is not supported: chunks stay until they are replaced or their store is deleted "
            "(a store's expires_after expires it whole).",
            param="ttl_seconds",
        )
    raw = body.get("chunks")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'chunks' must be a non-empty array.", param="chunks")
    if len(raw) > embeddings.MAX_BATCH:
        limit = embeddings.MAX_BATCH
        raise BadRequest(f"'chunks' holds {len(raw)} chunks; at most {limit} per insert.", param="chunks")
    async with state.pool(request).connection() as conn:
        record = await common.visible_store(request, conn, store_id)
    items = [_chunk(value, index, record) for index, value in enumerate(raw)]
    ids = [item.id for item in items if item.id is not None]
    if len(set(ids)) != len(ids):
        raise BadRequest("Two chunks share a chunk_id.", param="chunks")
    record, rows = await embeddings.insert_items(request, store_id, items)
    return web.json_response(
        {"object": "vector_io.insert", "vector_store_id": record.id, "chunk_ids": [row.id for row in rows]}
    )


_WEIGHTS = "params.ranker.params.weights"


def _weighted(weights: Any) -> hybrid.Weights:
    """`[vector, keyword]`: the vector side's share (OGX's alpha) and, when given, the keyword side's, which must
    be the rest. Every entry is checked: one that is not a share was silently ignored before."""
    if not isinstance(weights, list) or not 1 <= len(weights) <= 2:
        raise BadRequest(
            f"'{_WEIGHTS}' must be [vector, keyword] weights: one or two numbers between 0 and 1.", param=_WEIGHTS
        )
    shares = []
    for index, weight in enumerate(weights):
        param = f"{_WEIGHTS}[{index}]"
        if weight is None:
            raise BadRequest(f"'{param}' must be a number between 0 and 1, not null.", param=param)
        shares.append(common.opt_number({"weight": weight}, "weight", lo=0.0, hi=1.0, param=param) or 0.0)
    alpha = shares[0]
    if len(shares) == 2 and abs(shares[0] + shares[1] - 1.0) > 1e-9:
        raise BadRequest(
            f"'{_WEIGHTS}' are the vector and keyword shares and must add up to 1 (the keyword share is 1 minus "
            f"the vector share); got {shown(weights[0])} and {shown(weights[1])}.",
            param=f"{_WEIGHTS}[1]",
        )
    return hybrid.Weights(embedding=alpha, text=1.0 - alpha)


def _ranker(params: dict[str, Any]) -> hybrid.Weights | None:
    value = common.opt_object(params, "ranker", param="params.ranker")
    if value is None:
        return None
    common.reject_unknown_in(value, {"strategy", "params"}, "params.ranker")
    strategy = common.opt_str(value, "strategy", param="params.ranker.strategy") or "rrf"
    options = common.opt_object(value, "params", param="params.ranker.params") or {}
    if strategy == "rrf":
        common.reject_unknown_in(options, {"k"}, "params.ranker.params")
        k = common.opt_number(options, "k", lo=0.0, hi=10000.0, param="params.ranker.params.k")
        if k is not None and k <= 0:
            raise BadRequest("'params.ranker.params.k' must be a number above 0.", param="params.ranker.params.k")
        return hybrid.Weights(k=hybrid.RRF_K if k is None else k)
    if strategy == "weighted":
        common.reject_unknown_in(options, {"weights"}, "params.ranker.params")
        return _weighted(options.get("weights", [0.5, 0.5]))
    raise BadRequest(
        f"'params.ranker.strategy' must be 'rrf' or 'weighted'; got '{strategy[:40]}'.",
        param="params.ranker.strategy",
    )


async def _embeddings(request: web.Request, record: stores.StoreRecord, ids: list[str]) -> dict[str, tuple[Any, int]]:
    if not ids:
        return {}

    async def read(conn: Any) -> dict[str, tuple[Any, int]]:
        cur = await conn.execute(
            sql.SQL("SELECT id, embedding, created_at FROM {t} WHERE id = ANY(%s)").format(t=record.layout.ident),
            [ids],
        )
        return {str(row[0]): (row[1], int(row[2])) for row in await cur.fetchall()}

    result: dict[str, tuple[Any, int]] = await state.reads(request).run(read)
    return result


def chunk_json(record: stores.StoreRecord, hit: Hit, embedding: Any, created_at: int | None) -> dict[str, Any]:
    """A row as OGX's `Chunk`: content, metadata, embedding and the backend's chunk_metadata."""
    # pgvector's loader gives a numpy array (or its own Vector / HalfVector without numpy).
    raw = embedding.to_list() if hasattr(embedding, "to_list") else embedding.tolist() if embedding is not None else []
    vector = [float(x) for x in raw]
    metadata = dict(hit.attributes)
    document_id = metadata.get("document_id", hit.file_id)
    source = metadata.get("source", hit.filename)
    return {
        "chunk_id": hit.id,
        "content": hit.content,
        "metadata": metadata,
        "embedding": vector,
        "embedding_model": record.model,
        "embedding_dimension": record.dimensions,
        "chunk_metadata": {
            "chunk_id": hit.id,
            "document_id": document_id if isinstance(document_id, str) else None,
            "source": source if isinstance(source, str) else None,
            "created_timestamp": created_at,
            "updated_timestamp": created_at,
            "chunk_embedding_model": record.model,
            "chunk_embedding_dimension": record.dimensions,
        },
    }


@routes.post("/vector-io/query")
@auth.read_only
async def query(request: web.Request) -> web.Response:
    body = await common.json_body(request)
    common.reject_unknown(body, _QUERY_FIELDS)
    store_id = _store_id(body)
    if body.get("query") is None:
        raise BadRequest("Missing required parameter: 'query'.", param="query")
    text = _text(body["query"], "query")
    if not text.strip():
        raise BadRequest("'query' must not be empty.", param="query")
    common.embeddable(text, "query", code="query_too_long")
    params = common.opt_object(body, "params") or {}
    common.reject_unknown_in(params, _PARAMS, "params")
    limit = common.opt_int(params, "max_chunks", lo=1, hi=MAX_CHUNKS_PER_QUERY, param="params.max_chunks")
    mode = common.opt_str(params, "mode", param="params.mode")
    if mode is not None and mode not in _MODES:
        raise BadRequest("'params.mode' must be 'vector', 'keyword' or 'hybrid'.", param="params.mode")
    threshold = common.opt_number(params, "score_threshold", lo=0.0, hi=1.0, param="params.score_threshold")
    weights = _ranker(params)

    record = await search.searchable_store(request, store_id)
    settings = state.spec(request).search_for(record.id)
    limit = limit if limit is not None else settings.default_max_num_results
    mode = mode or ("hybrid" if weights is not None else settings.mode)
    weights = weights or hybrid.Weights(settings.embedding_weight, settings.text_weight)
    try:
        hits = await search.ranked_hits(request, record, text, mode, weights, NO_FILTER, [], limit=limit)
        hits = [hit for hit in hits[:limit] if threshold is None or hit.score >= threshold]
        stored = await _embeddings(request, record, [hit.id for hit in hits])
    except pg_errors.UndefinedTable:
        raise store_not_found(store_id) from None
    chunks = [chunk_json(record, hit, *stored.get(hit.id, (None, None))) for hit in hits]
    return common.json_response({"chunks": chunks, "scores": [hit.score for hit in hits]})
