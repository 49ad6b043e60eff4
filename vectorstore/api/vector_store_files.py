"""`/vector_stores/{id}/files` and `/vector_stores/{id}/file_batches` (OpenAI, REFERENCE §4).

Attaching queues the file for the ingestion worker and answers at once with status `in_progress`; the
SDK's `create_and_poll` / `upload_and_poll` then poll the retrieve routes, which send `openai-poll-after-ms`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from aiohttp import web
from psycopg import errors as pg_errors

from vectorstore import state
from vectorstore.api import auth, common, ogx
from vectorstore.errors import BadRequest, Conflict, NotFound
from vectorstore.ingest import service
from vectorstore.storage import files, stores
from vectorstore.storage.strategy import AUTO, ChunkingError, Strategy, parse_strategy, validate_static

routes = web.RouteTableDef()

_ATTACH_FIELDS = {"file_id", "attributes", "chunking_strategy"} | ogx.FIELDS
_BATCH_FIELDS = {"file_ids", "files", "attributes", "chunking_strategy"} | ogx.FIELDS
_MAX_BATCH_FILES = 2000


def default_strategy(
    request: web.Request, store: stores.StoreRecord, value: object, param: str = "chunking_strategy"
) -> Strategy:
    """The request's strategy; without one, the store's declared chunking (spec), else `auto`."""
    default = AUTO
    declared = next((s for s in state.spec(request).stores if s.id == store.id), None)
    if declared is not None:
        default = validate_static(declared.max_chunk_size_tokens, declared.chunk_overlap_tokens)
    return parse_strategy(value, default, param)


def _strategy(request: web.Request, store: stores.StoreRecord, value: object, param: str) -> Strategy:
    try:
        return default_strategy(request, store, value, param)
    except ChunkingError as exc:
        raise BadRequest(exc.message, param=exc.param) from None


async def attach_at_creation(
    request: web.Request, conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, body: dict[str, Any]
) -> None:
    """`POST /vector_stores` with `file_ids` (and `chunking_strategy`): attach them in the create transaction."""
    strategy = _strategy(request, record, body.get("chunking_strategy"), "chunking_strategy")
    for index, file_id in enumerate(body.get("file_ids") or []):
        await common.visible_file(request, conn, file_id, f"file_ids[{index}]")
        await files.attach(
            conn,
            record,
            file_id,
            attributes=None,
            strategy=strategy,
            chunking_default=body.get("chunking_strategy") is None,
        )
    service.wake(request.app)


@contextlib.asynccontextmanager
async def _attaching() -> AsyncIterator[None]:
    """Two requests attaching the same file to the same store at once: the loser gets a retryable 409. A file
    deleted (or expired, `server.unattached_file_ttl_hours`) while being attached: 404."""
    try:
        yield
    except (pg_errors.UniqueViolation, pg_errors.DeadlockDetected):
        raise Conflict("The file is being attached to this vector store by another request; retry.") from None
    except pg_errors.ForeignKeyViolation:
        raise NotFound("The file was deleted while it was being attached.", param="file_id") from None


def _file_not_in_store(store_id: str, file_id: str) -> NotFound:
    return NotFound(f"No file '{file_id}' in vector store '{store_id}'.", param="file_id")


async def _list(request: web.Request, batch_id: str | None) -> web.Response:
    limit = common.query_int(request, "limit", default=20, lo=1, hi=100)
    order = common.query_choice(request, "order", default="desc", choices=("asc", "desc"))
    status = request.query.get("filter") or None
    if status is not None and status not in files.STATUSES:
        raise BadRequest(f"'filter' must be one of {', '.join(files.STATUSES)}; got '{status[:40]}'.", param="filter")
    async with state.pool(request).connection() as conn:
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        if batch_id is not None and await files.get_batch(conn, store.id, batch_id) is None:
            raise NotFound(f"No file batch '{batch_id}' in vector store '{store.id}'.", param="batch_id")
        rows, has_more = await files.list_store_files(
            conn,
            store.id,
            status=status,
            batch_id=batch_id,
            limit=limit,
            descending=order == "desc",
            after=request.query.get("after") or None,
            before=request.query.get("before") or None,
        )
    return web.json_response(common.list_page([row.to_json() for row in rows], has_more))


@routes.post("/vector_stores/{vector_store_id}/files")
async def attach_file(request: web.Request) -> web.Response:
    body = await common.json_body(request)
    common.reject_unknown(body, _ATTACH_FIELDS)
    file_id = common.req_str(body, "file_id")
    attributes = files.validate_attributes(body.get("attributes"))
    async with _attaching(), state.pool(request).connection() as conn, conn.transaction():
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        ogx.check_store_model(state.spec(request), store, body)
        strategy = _strategy(request, store, body.get("chunking_strategy"), "chunking_strategy")
        await common.visible_file(request, conn, file_id, "file_id")
        # A strategy given with the file is kept when the store's declared `chunking` changes (OpenAI's
        # semantics); one taken from the store's default follows it (vectorstore/migration).
        attached = await files.attach(
            conn,
            store,
            file_id,
            attributes=attributes,
            strategy=strategy,
            chunking_default=body.get("chunking_strategy") is None,
        )
    service.wake(request.app)
    return web.json_response(attached.to_json())


@routes.get("/vector_stores/{vector_store_id}/files")
@auth.read_only
async def list_store_files(request: web.Request) -> web.Response:
    return await _list(request, None)


@routes.get("/vector_stores/{vector_store_id}/files/{file_id}")
@auth.read_only
async def retrieve_store_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    async with state.pool(request).connection() as conn:
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        attached = await files.get_store_file(conn, store.id, file_id)
    if attached is None:
        raise _file_not_in_store(store.id, file_id)
    # The chunk count is no field of OpenAI's object; `vectorstore ingest` reads it from this header.
    headers = {"openai-poll-after-ms": common.POLL_AFTER_MS, "x-vectorstore-chunks": str(attached.chunk_count)}
    return web.json_response(attached.to_json(), headers=headers)


@routes.post("/vector_stores/{vector_store_id}/files/{file_id}")
async def update_store_file(request: web.Request) -> web.Response:
    body = await common.json_body(request)
    common.reject_unknown(body, {"attributes"})
    if "attributes" not in body:
        raise BadRequest("Missing required parameter: 'attributes'.", param="attributes")
    attributes = files.validate_attributes(body["attributes"]) or {}
    file_id = request.match_info["file_id"]
    async with state.pool(request).connection() as conn, conn.transaction():
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        updated = await files.update_attributes(conn, store, file_id, attributes)
    if updated is None:
        raise _file_not_in_store(store.id, file_id)
    return web.json_response(updated.to_json())


@routes.delete("/vector_stores/{vector_store_id}/files/{file_id}")
async def detach_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    async with state.pool(request).connection() as conn, conn.transaction():
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        if not await files.detach(conn, store, file_id):
            raise _file_not_in_store(store.id, file_id)
    return web.json_response({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})


@routes.get("/vector_stores/{vector_store_id}/files/{file_id}/content")
@auth.read_only
async def store_file_content(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    async with state.pool(request).connection() as conn:
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        if await files.get_store_file(conn, store.id, file_id) is None:
            raise _file_not_in_store(store.id, file_id)
        # OGX's extra query: each chunk's vector and metadata. Without them, OpenAI's shape exactly.
        with_embeddings = ogx.query_flag(request, "include_embeddings")
        with_metadata = ogx.query_flag(request, "include_metadata")
        if with_embeddings or with_metadata:
            chunks = await files.chunks_of(conn, store, file_id, with_embeddings=with_embeddings)
            data = [ogx.content_item(store, chunk, with_embeddings, with_metadata) for chunk in chunks]
        else:
            data = [{"type": "text", "text": text} for text in await files.chunk_texts(conn, store, file_id)]
    return common.json_response(
        {"object": "vector_store.file_content.page", "data": data, "has_more": False, "next_page": None}
    )


# --- batches -------------------------------------------------------------------------------------------


@routes.post("/vector_stores/{vector_store_id}/file_batches")
async def create_batch(request: web.Request) -> web.Response:
    body = await common.json_body(request)
    common.reject_unknown(body, _BATCH_FIELDS)
    file_ids, entries = body.get("file_ids"), body.get("files")
    if (file_ids is None) == (entries is None):
        raise BadRequest("Give exactly one of 'file_ids' or 'files'.", param="file_ids")
    shared_attributes = files.validate_attributes(body.get("attributes"))
    items: list[tuple[str, dict[str, Any] | None, object, str]] = []
    if file_ids is not None:
        if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
            raise BadRequest("'file_ids' must be an array of file id strings.", param="file_ids")
        items = [(f, shared_attributes, body.get("chunking_strategy"), "chunking_strategy") for f in file_ids]
    else:
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise BadRequest("'files' must be an array of objects with 'file_id'.", param="files")
        for index, entry in enumerate(entries):
            common.reject_unknown(entry, {"file_id", "attributes", "chunking_strategy"})
            file_id = common.req_str(entry, "file_id", param=f"files[{index}].file_id")
            attributes = files.validate_attributes(entry.get("attributes"), f"files[{index}].attributes")
            if attributes is None:
                attributes = shared_attributes
            strategy_value = entry.get("chunking_strategy", body.get("chunking_strategy"))
            items.append((file_id, attributes, strategy_value, f"files[{index}].chunking_strategy"))
    if not items:
        raise BadRequest("A file batch needs at least one file.", param="file_ids")
    if len(items) > _MAX_BATCH_FILES:
        raise BadRequest(f"A file batch holds at most {_MAX_BATCH_FILES} files; got {len(items)}.", param="file_ids")
    if len({item[0] for item in items}) != len(items):
        raise BadRequest("A file batch lists the same file twice.", param="file_ids")
    async with _attaching(), state.pool(request).connection() as conn, conn.transaction():
        store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
        ogx.check_store_model(state.spec(request), store, body)
        strategies = [_strategy(request, store, value, param) for _, _, value, param in items]
        for index, (file_id, *_rest) in enumerate(items):
            await common.visible_file(
                request, conn, file_id, f"file_ids[{index}]" if file_ids is not None else f"files[{index}].file_id"
            )
        batch_id = await files.create_batch(conn, store.id)
        for (file_id, attributes, value, _), strategy in zip(items, strategies, strict=True):
            await files.attach(
                conn,
                store,
                file_id,
                attributes=attributes,
                strategy=strategy,
                chunking_default=value is None,
                batch_id=batch_id,
            )
        batch = await files.get_batch(conn, store.id, batch_id)
    service.wake(request.app)
    assert batch is not None
    return web.json_response(batch.to_json())


async def _batch(conn: psycopg.AsyncConnection[Any], request: web.Request) -> files.Batch:
    store = await common.visible_store(request, conn, request.match_info["vector_store_id"])
    batch_id = request.match_info["batch_id"]
    batch = await files.get_batch(conn, store.id, batch_id)
    if batch is None:
        raise NotFound(f"No file batch '{batch_id}' in vector store '{store.id}'.", param="batch_id")
    return batch


@routes.get("/vector_stores/{vector_store_id}/file_batches/{batch_id}")
@auth.read_only
async def retrieve_batch(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        batch = await _batch(conn, request)
    return web.json_response(batch.to_json(), headers={"openai-poll-after-ms": common.POLL_AFTER_MS})


@routes.post("/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel")
async def cancel_batch(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        async with conn.transaction():
            batch = await _batch(conn, request)
            await files.cancel_batch(conn, batch.vector_store_id, batch.id)
        batch = await _batch(conn, request)
    return web.json_response(batch.to_json())


@routes.get("/vector_stores/{vector_store_id}/file_batches/{batch_id}/files")
@auth.read_only
async def list_batch_files(request: web.Request) -> web.Response:
    return await _list(request, request.match_info["batch_id"])
