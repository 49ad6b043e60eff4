"""Request parsing shared by resource modules: JSON bodies, typed params, store lookup.

Every helper raises `BadRequest` naming the parameter, so handlers never hand-roll a 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson
import psycopg
from aiohttp import web

from vectorstore.api import auth
from vectorstore.errors import BadRequest, NotFound, PayloadTooLarge, store_not_found
from vectorstore.storage import files, stores

# JSON bodies are parsed in memory: cap them below the upload limit (files are multipart, not JSON).
# 16 MiB fits a prototype batch of 2,048 embeddings of 768 floats.
MAX_JSON_BYTES = 16 * 1024 * 1024
POLL_AFTER_MS = "250"
"""`openai-poll-after-ms` on retrieves: the SDK's pollers would otherwise wait a whole second per poll."""


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response encoded by orjson: about 15 times faster than `json.dumps` on a page of search results
    (bench/search_http.py profiles). orjson refuses integers beyond 64 bits, which a stored attribute may hold:
    those pages take the standard library's path."""
    try:
        body = orjson.dumps(data)
    except TypeError:
        body = json.dumps(data, ensure_ascii=False).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


async def json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object. An empty body is `{}` when allowed (the OpenAI client may send one on DELETE)."""
    limit = min(MAX_JSON_BYTES, request.app._client_max_size)
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The JSON body is larger than the limit of {limit} bytes.")
    raw = await request.read()
    if len(raw) > limit:
        raise PayloadTooLarge(f"The JSON body is larger than the limit of {limit} bytes.")
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("The request body must be a JSON object.", param="body")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.", param="body") from None
    if not isinstance(data, dict):
        raise BadRequest(f"The request body must be a JSON object, not {_kind(data)}.", param="body")
    return data


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def reject_unknown(body: Mapping[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise BadRequest(f"Unknown parameter: '{key}'.", param=key)


def opt_str(body: Mapping[str, Any], key: str, *, max_len: int | None = None, param: str | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{param or key}' must be a string, not {_kind(value)}.", param=param or key)
    if max_len is not None and len(value) > max_len:
        raise BadRequest(f"'{param or key}' is longer than {max_len} characters.", param=param or key)
    return value


def req_str(body: Mapping[str, Any], key: str, *, param: str | None = None) -> str:
    value = opt_str(body, key, param=param)
    if value is None:
        raise BadRequest(f"Missing required parameter: '{param or key}'.", param=param or key)
    return value


def opt_int(body: Mapping[str, Any], key: str, *, lo: int, hi: int, param: str | None = None) -> int | None:
    value = body.get(key)
    name = param or key
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise BadRequest(f"'{name}' must be an integer, not {_kind(value)}.", param=name)
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}; got {value}.", param=name)
    return int(value)


def opt_number(body: Mapping[str, Any], key: str, *, lo: float, hi: float, param: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{param}' must be a number, not {_kind(value)}.", param=param)
    if not lo <= value <= hi:
        raise BadRequest(f"'{param}' must be between {lo} and {hi}; got {value}.", param=param)
    return float(value)


def opt_bool(body: Mapping[str, Any], key: str, *, param: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadRequest(f"'{param or key}' must be a boolean, not {_kind(value)}.", param=param or key)
    return value


def opt_object(body: Mapping[str, Any], key: str, *, param: str | None = None) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"'{param or key}' must be an object, not {_kind(value)}.", param=param or key)
    return value


def metadata(body: Mapping[str, Any], key: str = "metadata") -> dict[str, str] | None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    value = opt_object(body, key)
    if value is None:
        return None
    if len(value) > 16:
        raise BadRequest(f"'{key}' has {len(value)} pairs; at most 16 are allowed.", param=key)
    for k, v in value.items():
        if len(k) > 64:
            raise BadRequest(f"'{key}' key '{k[:20]}...' is longer than 64 characters.", param=f"{key}.{k[:64]}")
        if not isinstance(v, str):
            raise BadRequest(f"'{key}.{k}' must be a string, not {_kind(v)}.", param=f"{key}.{k}")
        if len(v) > 512:
            raise BadRequest(f"'{key}.{k}' is longer than 512 characters.", param=f"{key}.{k}")
    return dict(value)


def query_int(request: web.Request, key: str, *, default: int, lo: int, hi: int) -> int:
    text = request.query.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"'{key}' must be an integer; got '{text[:40]}'.", param=key) from None
    if not lo <= value <= hi:
        raise BadRequest(f"'{key}' must be between {lo} and {hi}; got {value}.", param=key)
    return value


def query_choice(request: web.Request, key: str, *, default: str, choices: tuple[str, ...]) -> str:
    value = request.query.get(key) or default
    if value not in choices:
        raise BadRequest(f"'{key}' must be one of {', '.join(choices)}; got '{value[:40]}'.", param=key)
    return value


async def visible_store(
    request: web.Request, conn: psycopg.AsyncConnection[Any], store_id: str, *, for_update: bool = False
) -> stores.StoreRecord:
    """The store, or 404 if it does not exist or the caller's key may not see it."""
    auth.check_store(request, store_id)
    record = await stores.get(conn, store_id, for_update=for_update)
    if record is None:
        raise store_not_found(store_id)
    return record


def list_page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list envelope; the SDK's auto-pagination reads `has_more` and continues after `last_id`."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def file_owner(request: web.Request) -> str | None:
    """The owner filter for this caller: None for keys that see every store (and so every file).

    A key limited to some stores (`auth.keys[].stores`) sees only the files it uploaded: file ids are not
    secrets, and such a key must not read what was uploaded for stores it can't see.
    """
    principal = auth.principal(request)
    return None if principal.store_ids is None else principal.name


async def visible_file(
    request: web.Request, conn: psycopg.AsyncConnection[Any], file_id: str, param: str
) -> files.FileRecord:
    """The file, or 404 if it does not exist or the caller's key may not see it."""
    record = await files.get_file(conn, file_id)
    owner = file_owner(request)
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"No file found with id '{file_id}'.", param=param)
    return record
