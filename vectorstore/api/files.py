"""`/files`: upload (multipart), list, retrieve, delete, content. Also wires ingestion into the app.

`setup(app)` starts the ingestion worker once the database is ready, counts files for the stores API
(`FILE_COUNTS`) and lets store creation attach `file_ids` (`STORE_CREATED_HOOK`).

A key limited to some stores (`auth.keys[].stores`) sees only the files it uploaded: file ids are not
secrets, and such a key must not read what was uploaded for stores it can't see.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from aiohttp import BodyPartReader, web

from vectorstore import auth, files, state, stores
from vectorstore.api import common
from vectorstore.api.vector_stores import STORE_CREATED_HOOK
from vectorstore.chunking import ChunkingError
from vectorstore.errors import BadRequest, NotFound, PayloadTooLarge
from vectorstore.worker import BATCHES_PER_COPY, Worker

routes = web.RouteTableDef()

WORKER = web.AppKey("ingest_worker", Worker)
POLL_AFTER_MS = "250"
"""`openai-poll-after-ms` on retrieves: the SDK's pollers would otherwise wait a whole second per poll."""
_READ_SIZE = 1 << 16
# Past the limit the rest of the body is read and dropped (up to this much) so the client, still sending,
# gets the 413 rather than a reset connection.
_DRAIN_LIMIT = 256 << 20


def file_owner(request: web.Request) -> str | None:
    """The owner filter for this caller: None for keys that see every store (and so every file)."""
    principal = auth.principal(request)
    return None if principal.store_ids is None else principal.name


async def visible_file(
    request: web.Request, conn: psycopg.AsyncConnection[Any], file_id: str, param: str
) -> files.FileRecord:
    record = await files.get_file(conn, file_id)
    owner = file_owner(request)
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"No file found with id '{file_id}'.", param=param)
    return record


def _base_name(name: str | None) -> str:
    """The last path component, without control characters: a name like `../../etc/passwd` must never reach a
    client (or `vectorstore ingest`) that joins it to a directory. Empty, `.` and `..` become `upload`."""
    base = re.split(r"[/\\]", name or "")[-1]
    base = "".join(char for char in base if char.isprintable()).strip()
    return base if base not in ("", ".", "..") else "upload"


@routes.post("/files")
async def upload(request: web.Request) -> web.Response:
    limit = state.spec(request).server.max_upload_bytes
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("Upload a file as multipart/form-data with fields 'file' and 'purpose'.", param="file")
    reader = await request.multipart()
    purpose: str | None = None
    content: bytes | None = None
    filename: str | None = None
    content_type: str | None = None
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise BadRequest("Nested multipart bodies are not supported.", param="file")
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = _base_name(part.filename)
            content_type = part.headers.get("Content-Type")
            content = await _read_limited(request, part, limit)
        else:
            await part.release()
    if content is None:
        raise BadRequest("Missing required parameter: 'file'.", param="file")
    if not purpose:
        raise BadRequest("Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in files.PURPOSES:
        raise BadRequest(
            f"'purpose' must be one of {', '.join(files.PURPOSES)}; got '{purpose[:40]}'.", param="purpose"
        )
    assert filename is not None
    async with state.pool(request).connection() as conn:
        record = await files.insert_file(
            conn,
            filename=filename[:512],
            purpose=purpose,
            content=content,
            content_type=content_type,
            owner=auth.principal(request).name,
        )
    return web.json_response(record.to_json())


async def _read_limited(request: web.Request, part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while True:
        piece = await part.read_chunk(_READ_SIZE)
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > limit:
            drained = 0
            with contextlib.suppress(Exception):
                while drained < _DRAIN_LIMIT:
                    rest = await request.content.read(_READ_SIZE)
                    if not rest:
                        break
                    drained += len(rest)
            raise PayloadTooLarge(
                f"The file '{part.filename}' is larger than the limit of {limit} bytes (server.max_upload_bytes).",
                param="file",
            )


@routes.get("/files")
@auth.read_only
async def list_files(request: web.Request) -> web.Response:
    limit = common.query_int(request, "limit", default=10000, lo=1, hi=10000)
    order = common.query_choice(request, "order", default="desc", choices=("asc", "desc"))
    purpose = request.query.get("purpose") or None
    async with state.pool(request).connection() as conn:
        records, has_more = await files.list_files(
            conn,
            purpose=purpose,
            limit=limit,
            descending=order == "desc",
            after=request.query.get("after") or None,
            owner=file_owner(request),
        )
    data = [record.to_json() for record in records]
    return web.json_response(common.list_page(data, has_more))


@routes.get("/files/{file_id}")
@auth.read_only
async def retrieve_file(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        record = await visible_file(request, conn, request.match_info["file_id"], "file_id")
    return web.json_response(record.to_json(), headers={"openai-poll-after-ms": POLL_AFTER_MS})


@routes.get("/files/{file_id}/content")
@auth.read_only
async def file_content(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        record = await visible_file(request, conn, request.match_info["file_id"], "file_id")
        content = await files.file_content(conn, record.id)
    if content is None:
        raise NotFound(f"No file found with id '{record.id}'.", param="file_id")
    return web.Response(
        body=content,
        content_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{_header_safe(record.filename)}"'},
    )


def _header_safe(name: str) -> str:
    return "".join(c if c.isprintable() and c not in '"\\' and ord(c) < 128 else "_" for c in name)


@routes.delete("/files/{file_id}")
async def delete_file(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn, conn.transaction():
        record = await visible_file(request, conn, request.match_info["file_id"], "file_id")
        await files.delete_file(conn, record.id)
    return web.json_response({"id": record.id, "object": "file", "deleted": True})


# --- wiring ---------------------------------------------------------------------------------------------


async def _store_created(
    request: web.Request, conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, body: dict[str, Any]
) -> None:
    """`POST /vector_stores` with `file_ids` (and `chunking_strategy`): attach them in the create transaction."""
    from vectorstore.api.vector_store_files import default_strategy

    try:
        strategy = default_strategy(request, record, body.get("chunking_strategy"))
    except ChunkingError as exc:
        raise BadRequest(exc.message, param=exc.param) from None
    for index, file_id in enumerate(body.get("file_ids") or []):
        await visible_file(request, conn, file_id, f"file_ids[{index}]")
        await files.attach(conn, record, file_id, attributes=None, strategy=strategy)
    request.app[WORKER].wake()


async def _embed(app: web.Application, store: stores.StoreRecord, texts: list[str]) -> list[list[float]]:
    return await app[state.EMBEDDER].embed(texts, model=store.model, dimensions=store.dimensions)


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    async def embed(store: stores.StoreRecord, texts: list[str]) -> list[list[float]]:
        return await _embed(app, store, texts)

    spec = app[state.SPEC]
    worker = Worker(
        app[state.SETTINGS].dsn,
        embed,
        concurrency=spec.server.ingest_concurrency,
        batch_chunks=spec.embedding.batch_size * BATCHES_PER_COPY,
    )
    app[WORKER] = worker
    readiness = app[state.READINESS]

    async def start_when_ready() -> None:
        await readiness.done.wait()
        if readiness.ready:
            worker.start()

    starter = asyncio.create_task(start_when_ready())
    yield
    starter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starter
    await worker.stop()


def setup(app: web.Application) -> None:
    app[state.FILE_COUNTS] = files.file_counts
    app[STORE_CREATED_HOOK] = _store_created
    # Appended after the core's contexts, so it is torn down first: workers stop before the pool closes.
    app.cleanup_ctx.append(_worker_ctx)
