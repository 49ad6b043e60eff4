"""The prototype's `POST /vector_stores/{id}/embeddings` and `.../embeddings/batch` (REFERENCE §3).

Rows added here have no file (file_id NULL); their `metadata` becomes the row's attributes, so search
filters see it. When `embedding` is omitted it is computed by the embedding upstream.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from psycopg import errors as pg_errors

from vectorstore import state
from vectorstore.api import common
from vectorstore.errors import BadRequest, Conflict, ServiceUnavailable
from vectorstore.search import statistics
from vectorstore.storage import stores, tables
from vectorstore.values import as_float, epoch_seconds, is_number, shown

routes = web.RouteTableDef()

_ITEM_FIELDS = {"content", "embedding", "metadata"}
MAX_BATCH = 2048


@dataclass
class Item:
    """One row without a file: its text, its vector (None: the store's model embeds it), its attributes."""

    content: str
    embedding: list[float] | None
    metadata: dict[str, Any]
    id: str | None = None
    """None: a new id. A given id replaces the file-less row of that id (OGX's chunk ids)."""


def parse_metadata(value: Any, prefix: str) -> dict[str, Any]:
    """A row's attributes: an object of strings, numbers and booleans (what filters and OpenAI's results hold)."""
    metadata = common.opt_object(value, "metadata", param=f"{prefix}metadata") or {}
    for key, item in metadata.items():
        if isinstance(item, (dict, list)):
            raise BadRequest(
                f"'{prefix}metadata.{key}' must be a string, number or boolean.", param=f"{prefix}metadata.{key}"
            )
        if is_number(item) and as_float(item) is None:
            raise BadRequest(
                f"'{prefix}metadata.{key}' must be a finite number a 64-bit float can hold; got {shown(item)}.",
                param=f"{prefix}metadata.{key}",
            )
    return dict(metadata)


def parse_embedding(value: Any, prefix: str, dimensions: int) -> list[float] | None:
    """The item's `embedding`, checked against the store's dimensions; None when it has none."""
    raw = value.get("embedding")
    embedding: list[float] | None = None
    if raw is not None:
        if not isinstance(raw, list) or not all(is_number(x) for x in raw):
            raise BadRequest(f"'{prefix}embedding' must be an array of numbers.", param=f"{prefix}embedding")
        if len(raw) != dimensions:
            raise BadRequest(
                f"'{prefix}embedding' has {len(raw)} dimensions; this store expects {dimensions}.",
                param=f"{prefix}embedding",
                code="dimension_mismatch",
            )
        floats = [as_float(x) for x in raw]
        for index, number in enumerate(floats):
            if number is None:
                raise BadRequest(
                    f"'{prefix}embedding[{index}]' must be a finite number a float can hold; got {shown(raw[index])}.",
                    param=f"{prefix}embedding[{index}]",
                )
        embedding = [number for number in floats if number is not None]
    return embedding


def _item(value: Any, path: str, dimensions: int) -> Item:
    if not isinstance(value, dict):
        raise BadRequest(f"'{path}' must be an object.", param=path or "body")
    prefix = f"{path}." if path else ""
    for key in value:
        if key not in _ITEM_FIELDS:
            raise BadRequest(f"Unknown parameter: '{prefix}{key}'.", param=f"{prefix}{key}")
    content = common.req_str(value, "content", param=f"{prefix}content")
    metadata = parse_metadata(value, prefix)
    embedding = parse_embedding(value, prefix, dimensions)
    if embedding is None:
        # The server embeds it: one upstream input, bounded like a search query.
        common.embeddable(content, f"{prefix}content")
    return Item(content, embedding, metadata)


async def insert_items(
    request: web.Request, store_id: str, items: list[Item]
) -> tuple[stores.StoreRecord, list[tables.ChunkRow]]:
    """Embed what has no vector (the store's model), then write every item in one transaction: searchable by
    every search route at once, as file chunks are."""
    async with state.pool(request).connection() as conn:
        record = await common.visible_store(request, conn, store_id)
    missing = [item for item in items if item.embedding is None]
    if missing:
        vectors = await state.embedder(request).embed(
            [item.content for item in missing], model=record.model, dimensions=record.dimensions
        )
        for item, vector in zip(missing, vectors, strict=True):
            item.embedding = vector
    rows = [
        tables.ChunkRow(
            id=item.id or "emb_" + uuid.uuid4().hex,
            content=item.content,
            embedding=item.embedding or [],
            attributes=item.metadata,
        )
        for item in items
    ]
    given = [item.id for item in items if item.id is not None]
    async with state.pool(request).connection() as conn:
        async with conn.transaction():
            embedded_with = (record.model, record.dimensions)
            record = await common.visible_store(request, conn, store_id, for_update=True)
            if (record.model, record.dimensions) != embedded_with:
                # An online migration swapped the store's model while this request embedded (vectorstore/migration):
                # its vectors belong to the replaced generation. Nothing was written; the client retries (503).
                raise ServiceUnavailable(
                    f"Vector store {record.id} switched to a new embedding model while this request was being"
                    " embedded; nothing was written. Retry the request.",
                    code="store_migrated",
                )
            if given:
                await tables.delete_rows_without_file(conn, record.layout, given)
            try:
                await tables.copy_chunks(conn, record.layout, rows)
            except pg_errors.UniqueViolation:
                raise Conflict(
                    "A chunk id names a chunk of a file in this vector store; file chunks change only with their file.",
                    retry=False,
                ) from None
            await stores.update_fields(conn, record.id, {})
            await statistics.flush_table_counters(conn)
        # Scripts load stores through these routes in bulk: keep the planner's statistics current as they do.
        await statistics.after_write(conn, record.id)
    return record, rows


async def _insert(request: web.Request, items: list[Item]) -> tuple[stores.StoreRecord, list[dict[str, Any]]]:
    now = epoch_seconds()
    record, rows = await insert_items(request, request.match_info["vector_store_id"], items)
    out = [
        {
            "object": "embedding",
            "id": row.id,
            "vector_store_id": record.id,
            "content": row.content,
            "metadata": dict(row.attributes or {}),
            "created_at": now,
        }
        for row in rows
    ]
    return record, out


@routes.post("/vector_stores/{vector_store_id}/embeddings")
async def add_embedding(request: web.Request) -> web.Response:
    body = await common.json_body(request)
    async with state.pool(request).connection() as conn:
        record = await common.visible_store(request, conn, request.match_info["vector_store_id"])
    item = _item(body, "", record.dimensions)
    _, [out] = await _insert(request, [item])
    return web.json_response(out)


@routes.post("/vector_stores/{vector_store_id}/embeddings/batch")
async def add_embeddings(request: web.Request) -> web.Response:
    body = await common.json_body(request)
    common.reject_unknown(body, {"embeddings"})
    raw = body.get("embeddings")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'embeddings' must be a non-empty array.", param="embeddings")
    if len(raw) > MAX_BATCH:
        raise BadRequest(f"'embeddings' holds {len(raw)} items; at most {MAX_BATCH} per batch.", param="embeddings")
    async with state.pool(request).connection() as conn:
        record = await common.visible_store(request, conn, request.match_info["vector_store_id"])
    items = [_item(value, f"embeddings[{i}]", record.dimensions) for i, value in enumerate(raw)]
    _, out = await _insert(request, items)
    return web.json_response({"object": "embedding.batch", "data": out, "created": epoch_seconds()})
