"""Request parsing shared by resource modules: JSON bodies, typed params, store lookup.

Every helper raises `BadRequest` naming the parameter, so handlers never hand-roll a 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
import psycopg
from aiohttp import hdrs, web

from vectorstore.api import auth
from vectorstore.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType, store_not_found
from vectorstore.ingest.chunking import count_tokens
from vectorstore.storage import files, stores
from vectorstore.values import MAX_JSON_DEPTH, as_float, is_number, shown, too_deep

# JSON bodies are parsed in memory: cap them below the upload limit (files are multipart, not JSON).
# 16 MiB fits a prototype batch of 2,048 embeddings of 768 floats.
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_INPUT_TOKENS = 8192
"""Text the server embeds for a request (a search query, a prototype row without its vector) is one input of
the embedding upstream: OpenAI's embedding models take at most 8,192 tokens per input."""
MAX_INPUT_CHARS = 65536
"""Refused before counting tokens, so a hostile text costs nothing to turn down."""
# Under this many characters a text can't reach MAX_INPUT_TOKENS (a cl100k token is at least one UTF-8 byte, a
# character at most four), so most texts are never counted.
_UNCOUNTED_CHARS = MAX_INPUT_TOKENS // 4
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
    """The request's JSON object. An empty body is `{}` when allowed (the OpenAI client may send one on DELETE).

    Refused before it is parsed: a body that says it is not JSON (415; a body with no Content-Type at all is
    read as JSON, as the prototype did), one over the size limit (413), and one nested deeper than
    MAX_JSON_DEPTH (400), which would otherwise exhaust the parser's recursion.
    """
    limit = min(MAX_JSON_BYTES, request.app._client_max_size)
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The JSON body is larger than the limit of {limit} bytes.")
    if request.body_exists:
        _require_json_content_type(request)
    raw = await request.read()
    if len(raw) > limit:
        raise PayloadTooLarge(f"The JSON body is larger than the limit of {limit} bytes.")
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("The request body must be a JSON object.", param="body")
    if too_deep(raw):
        raise BadRequest(
            f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; "
            f"{MAX_JSON_DEPTH} is the limit.",
            param="body",
            code="json_too_deep",
        )
    try:
        # What json.loads does with bytes, with one decoder for every request (json.loads with options builds a
        # decoder per call).
        data = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.", param="body") from None
    except RecursionError:
        # The depth check above should make this unreachable; a 400 all the same, never a 500.
        raise BadRequest(
            f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep.", param="body"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest(f"The request body must be a JSON object, not {_kind(data)}.", param="body")
    return data


def _require_json_content_type(request: web.Request) -> None:
    if hdrs.CONTENT_TYPE not in request.headers:
        return
    media_type = request.content_type
    if media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"This route reads a JSON body: send it with 'Content-Type: application/json' (got '{media_type[:80]}').",
        param="body",
    )


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity; JSON (RFC 8259) has no such numbers.
    raise ValueError(f"{name} is not a JSON value (numbers must be finite)")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def embeddable(text: str, param: str, *, code: str = "input_too_long") -> str:
    """The text, or 400 when it is longer than one embedding input may be: more than MAX_INPUT_TOKENS
    (cl100k_base, counted exactly) or MAX_INPUT_CHARS."""
    if len(text) <= _UNCOUNTED_CHARS:
        return text
    if len(text) > MAX_INPUT_CHARS:
        raise BadRequest(
            f"'{param}' is {len(text)} characters long; it may have at most {MAX_INPUT_TOKENS} tokens "
            f"and {MAX_INPUT_CHARS} characters (one embedding input).",
            param=param,
            code=code,
        )
    tokens = count_tokens(text)
    if tokens > MAX_INPUT_TOKENS:
        raise BadRequest(
            f"'{param}' is {tokens} tokens long; it may have at most {MAX_INPUT_TOKENS} tokens (cl100k_base), "
            "one embedding input.",
            param=param,
            code=code,
        )
    return text


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


def reject_unknown_in(value: Mapping[str, Any], allowed: set[str], path: str) -> None:
    """`reject_unknown` for a nested object, naming the key by its full path (`ranking_options.x`)."""
    for key in value:
        if key not in allowed:
            raise BadRequest(f"Unknown parameter: '{path}.{key}'.", param=f"{path}.{key}")


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
    if not is_number(value):
        raise BadRequest(f"'{name}' must be an integer, not {_kind(value)}.", param=name)
    if isinstance(value, float) and not value.is_integer():
        # Covers NaN and the infinities too, which are floats and not integers.
        raise BadRequest(f"'{name}' must be an integer; got {shown(value)}.", param=name)
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}; got {shown(value)}.", param=name)
    return int(value)


def opt_number(body: Mapping[str, Any], key: str, *, lo: float, hi: float, param: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_number(value):
        raise BadRequest(f"'{param}' must be a number, not {_kind(value)}.", param=param)
    number = as_float(value)
    if number is None or not lo <= number <= hi:
        # NaN, an infinity or an integer too big for a float: all outside the range, and said so.
        raise BadRequest(f"'{param}' must be a number between {lo} and {hi}; got {shown(value)}.", param=param)
    return number


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
        raise BadRequest(f"'{key}' must be between {lo} and {hi}; got {shown(value)}.", param=key)
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
