"""`/files`: upload (multipart), list, retrieve, delete, content.

A key limited to some stores (`auth.keys[].stores`) sees only the files it uploaded: file ids are not
secrets, and such a key must not read what was uploaded for stores it can't see.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Iterator

from aiohttp import BodyPartReader, web

from vectorstore import state
from vectorstore.api import auth, common
from vectorstore.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from vectorstore.storage import files

routes = web.RouteTableDef()

_READ_SIZE = 1 << 16
# Past the limit the rest of the body is read and dropped (up to this much) so the client, still sending,
# gets the 413 rather than a reset connection.
_DRAIN_LIMIT = 256 << 20


def _base_name(name: str | None) -> str:
    """The last path component, without control characters: a name like `../../etc/passwd` must never reach a
    client (or `vectorstore ingest`) that joins it to a directory. Empty, `.` and `..` become `upload`."""
    base = re.split(r"[/\\]", name or "")[-1]
    base = "".join(char for char in base if char.isprintable()).strip()
    return base if base not in ("", ".", "..") else "upload"


def _malformed(reason: str) -> BadRequest:
    return BadRequest(
        f"The multipart/form-data body is malformed: {reason}. Upload a file as multipart/form-data with "
        "fields 'file' and 'purpose'.",
        param="file",
        code="invalid_multipart",
    )


@contextlib.contextmanager
def _multipart_errors() -> Iterator[None]:
    """aiohttp's multipart reader fails with ValueError (no boundary, a boundary that never appears, a body
    that ends early), LookupError (an unknown charset) or RuntimeError (an unknown transfer encoding): all are
    the client's mistake, so a 400 that says so, never a 500. Its messages quote the body, so none is relayed."""
    try:
        yield
    except (ValueError, LookupError, RuntimeError, zlib.error) as exc:
        text = str(exc)
        if "boundary missed" in text:
            raise _malformed("its Content-Type has no boundary parameter") from None
        if "boundary" in text and "too long" in text:
            raise _malformed("its boundary is longer than 70 characters") from None
        if "starting boundary" in text:
            raise _malformed("the boundary given in Content-Type never appears in it (empty or wrong body)") from None
        if "after EOF" in text:
            raise _malformed("it ends before its closing boundary (truncated)") from None
        raise _malformed(f"a part can't be read ({type(exc).__name__})") from None


@routes.post("/files")
async def upload(request: web.Request) -> web.Response:
    limit = state.spec(request).server.max_upload_bytes
    if not request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType(
            "Upload a file as multipart/form-data with fields 'file' and 'purpose' "
            f"(got Content-Type '{request.content_type[:80]}').",
            param="file",
        )
    purpose: str | None = None
    content: bytes | None = None
    filename: str | None = None
    content_type: str | None = None
    with _multipart_errors():
        reader = await request.multipart()
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
            owner=common.file_owner(request),
        )
    data = [record.to_json() for record in records]
    return web.json_response(common.list_page(data, has_more))


@routes.get("/files/{file_id}")
@auth.read_only
async def retrieve_file(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        record = await common.visible_file(request, conn, request.match_info["file_id"], "file_id")
    return web.json_response(record.to_json(), headers={"openai-poll-after-ms": common.POLL_AFTER_MS})


@routes.get("/files/{file_id}/content")
@auth.read_only
async def file_content(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        record = await common.visible_file(request, conn, request.match_info["file_id"], "file_id")
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
        record = await common.visible_file(request, conn, request.match_info["file_id"], "file_id")
        await files.delete_file(conn, record.id)
    return web.json_response({"id": record.id, "object": "file", "deleted": True})
