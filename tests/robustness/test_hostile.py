"""Hostile input the outside review sent, each class the way it was sent, to a real `vectorstore serve`.

Every answer must be a 4xx with OpenAI's envelope, never a 500, and the server must log no traceback.
Siblings of each class are sent too: every JSON route, every place a number or a nested value is read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from robustness.harness import KEYS, ServerProcess, Upstream, declared_store_ids, upload
from vectorstore.api.observability import openapi_document
from vectorstore.api.search import MAX_QUERY_CHARS, MAX_QUERY_TOKENS
from vectorstore.values import MAX_JSON_DEPTH

BIG = 10**400
"""An integer no float can hold: `float(BIG)` overflows."""
DEEP = 3000


def _nested(depth: int) -> str:
    """JSON text of objects and arrays nested `depth` levels deep (json.dumps itself can't write one)."""
    return '{"k": [' * (depth // 2) + '"v"' + "]}" * (depth // 2)


def _deep_text(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.fixture(scope="module")
def ids(shared_server: ServerProcess) -> dict[str, str]:
    return {
        "vector_store_id": declared_store_ids(shared_server.spec)["alpha"],
        "file_id": "file-nosuchfile",
        "batch_id": "vsfb_nosuchbatch",
    }


def _json_operations(ids: dict[str, str]) -> list[tuple[str, str]]:
    """(method, path) of every operation of the contract that reads a JSON body."""
    found = []
    for path, operations in openapi_document()["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}
            if "application/json" in content:
                found.append((method.upper(), path.format(**ids)))
    # stores: create, modify; search; embeddings x2; files: attach, update; batches; OGX vector-io: insert, query
    assert len(found) == 10, found
    return found


@pytest.fixture
def no_traceback(shared_server: ServerProcess) -> Iterator[None]:
    """The server logs no traceback and no error line while the test runs."""
    before = len(shared_server.logs())
    yield
    new = shared_server.logs()[before:]
    assert "Traceback" not in new, new[-3000:]
    assert '"level": "error"' not in new, new[-3000:]


async def _send(http: aiohttp.ClientSession, method: str, path: str, text: str, **headers: str) -> tuple[int, Any]:
    response = await http.request(
        method, path, data=text.encode(), headers={"Content-Type": "application/json", **headers}
    )
    body = await response.json(content_type=None)
    return response.status, body


async def test_deeply_nested_json_gets_400_naming_the_limit_on_every_json_route(
    shared_server: ServerProcess, ids: dict[str, str], no_traceback: None
) -> None:
    alpha = ids["vector_store_id"]
    bodies = {
        "top level": '{"a": ' + _deep_text(DEEP) + "}",
        "inside filters": '{"query": "x", "filters": ' + _nested(DEEP) + "}",
        "inside attributes": '{"file_id": "file-x", "attributes": {"k": ' + _nested(DEEP) + "}}",
        "inside metadata": '{"content": "x", "metadata": {"k": ' + _nested(DEEP) + "}}",
        "just over the limit": '{"a": ' + _deep_text(MAX_JSON_DEPTH) + "}",
    }
    async with shared_server.session() as http:
        for method, path in _json_operations(ids):
            for name, text in bodies.items():
                status, body = await _send(http, method, path, text)
                assert status == 400, (method, path, name, body)
                assert body["error"]["code"] == "json_too_deep" and str(MAX_JSON_DEPTH) in body["error"]["message"]
        # Deep filters within the body limit are the filter compiler's to refuse, with a 400 too.
        filters: Any = {"type": "eq", "key": "k", "value": 1}
        for _ in range(20):
            filters = {"type": "and", "filters": [filters]}
        status, body = await _send(
            http, "POST", f"/v1/vector_stores/{alpha}/search", json.dumps({"query": "x", "filters": filters})
        )
        assert status == 400 and "16 levels" in body["error"]["message"], body
        # An ordinary nested body is fine.
        status, body = await _send(
            http, "POST", f"/v1/vector_stores/{alpha}/search", '{"query": "x", "filters": ' + _nested(4) + "}"
        )
        assert status == 400 and body["error"]["code"] != "json_too_deep", body


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


GOOD = _multipart("XX", [("purpose", None, b"assistants"), ("file", "a.txt", b"hello multipart")])
MALFORMED_MULTIPART = {
    "no boundary": ("multipart/form-data", GOOD),
    "boundary never appears": ("multipart/form-data; boundary=YY", GOOD),
    "truncated": ("multipart/form-data; boundary=XX", GOOD[: len(GOOD) // 2]),
    "truncated in the file part": ("multipart/form-data; boundary=XX", GOOD[:-12]),
    "empty": ("multipart/form-data; boundary=XX", b""),
    "garbage": ("multipart/form-data; boundary=XX", b"\x00\xff\xfe garbage \r\n\r\n--\r\n" * 10),
    "empty boundary": ("multipart/form-data; boundary=", GOOD),
    "boundary too long": ("multipart/form-data; boundary=" + "b" * 100, GOOD),
    "part header without colon": (
        "multipart/form-data; boundary=XX",
        b"--XX\r\nContent-Disposition\r\n\r\nx\r\n--XX--\r\n",
    ),
    "purpose not UTF-8": (
        "multipart/form-data; boundary=XX",
        _multipart("XX", [("purpose", None, b"\xff\xfe"), ("file", "a.txt", b"x")]),
    ),
    "unknown charset": (
        "multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\nContent-Type: text/plain; charset=nope\r\n'
        b"\r\nassistants\r\n--XX--\r\n",
    ),
}


async def test_malformed_multipart_uploads_get_400(shared_server: ServerProcess, no_traceback: None) -> None:
    async with shared_server.session() as http:
        response = await http.post("/v1/files", data=GOOD, headers={"Content-Type": "multipart/form-data; boundary=XX"})
        assert response.status == 200, await response.text()
        for name, (content_type, body) in MALFORMED_MULTIPART.items():
            response = await http.post("/v1/files", data=body, headers={"Content-Type": content_type})
            answer = await response.json()
            assert response.status == 400, (name, answer)
            assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] in ("file", "body")
        # Not multipart at all: the route reads multipart only.
        response = await http.post("/v1/files", data=b"hello", headers={"Content-Type": "text/plain"})
        assert response.status == 415, await response.text()


async def test_numbers_too_big_for_a_float_get_400(
    shared_server: ServerProcess, ids: dict[str, str], no_traceback: None
) -> None:
    alpha = ids["vector_store_id"]
    search = f"/v1/vector_stores/{alpha}/search"
    big_attributes = {"n": BIG}
    requests: list[tuple[str, str, Any]] = [
        ("POST", search, {"query": "x", "ranking_options": {"score_threshold": BIG}}),
        ("POST", search, {"query": "x", "ranking_options": {"score_threshold": -BIG}}),
        ("POST", search, {"query": "x", "max_num_results": BIG}),
        ("POST", search, {"query": "x", "limit": BIG}),
        ("POST", search, {"query": "x", "filters": {"type": "eq", "key": "n", "value": BIG}}),
        ("POST", search, {"query": "x", "filters": {"type": "gt", "key": "n", "value": -BIG}}),
        ("POST", search, {"query": "x", "filters": {"type": "in", "key": "n", "value": [1, BIG]}}),
        ("POST", search, {"query": "x", "filters": {"n": BIG}}),
        ("POST", f"/v1/vector_stores/{alpha}/files", {"file_id": "file-x", "attributes": big_attributes}),
        ("POST", f"/v1/vector_stores/{alpha}/files/file-x", {"attributes": big_attributes}),
        ("POST", f"/v1/vector_stores/{alpha}/file_batches", {"file_ids": ["file-x"], "attributes": big_attributes}),
        (
            "POST",
            f"/v1/vector_stores/{alpha}/file_batches",
            {"files": [{"file_id": "file-x", "attributes": big_attributes}]},
        ),
        *(
            (
                "POST",
                f"/v1/vector_stores/{alpha}/files",
                {"file_id": "file-x", "chunking_strategy": {"type": "static", "static": static}},
            )
            for static in (
                {"max_chunk_size_tokens": BIG, "chunk_overlap_tokens": 10},
                {"max_chunk_size_tokens": 400, "chunk_overlap_tokens": -BIG},
            )
        ),
        ("POST", "/v1/vector_stores", {"name": "big", "expires_after": {"anchor": "last_active_at", "days": BIG}}),
        ("POST", f"/v1/vector_stores/{alpha}/embeddings", {"content": "x", "embedding": [BIG] + [0.0] * 7}),
        ("POST", f"/v1/vector_stores/{alpha}/embeddings", {"content": "x", "metadata": {"n": BIG}}),
        (
            "POST",
            f"/v1/vector_stores/{alpha}/embeddings/batch",
            {"embeddings": [{"content": "x", "metadata": {"n": -BIG}}]},
        ),
    ]
    async with shared_server.session() as http:
        for method, path, body in requests:
            status, answer = await _send(http, method, path, json.dumps(body))
            assert status == 400, (path, body, answer)
            message = answer["error"]["message"]
            assert len(message) < 400 and str(BIG)[:50] not in message, message
        # JSON numbers past a float's range parse as infinities: refused the same way.
        for text in (
            '{"query": "x", "ranking_options": {"score_threshold": 1e400}}',
            '{"query": "x", "limit": -1e999}',
        ):
            status, answer = await _send(http, "POST", search, text)
            assert status == 400, answer


async def test_nan_and_infinity_are_refused_in_words(shared_server: ServerProcess, ids: dict[str, str]) -> None:
    search = f"/v1/vector_stores/{ids['vector_store_id']}/search"
    async with shared_server.session() as http:
        for literal in ("NaN", "Infinity", "-Infinity"):
            text = '{"query": "x", "ranking_options": {"score_threshold": ' + literal + "}}"
            status, answer = await _send(http, "POST", search, text)
            message = answer["error"]["message"]
            assert status == 400 and literal in message and "finite" in message, message
            assert "not a number" not in message, message
        status, answer = await _send(
            http, "POST", search, '{"query": "x", "ranking_options": {"score_threshold": 1e999}}'
        )
        assert status == 400
        assert answer["error"]["message"] == (
            "'ranking_options.score_threshold' must be a number between 0.0 and 1.0; got inf."
        ), answer


async def test_json_routes_refuse_other_content_types_with_415(
    shared_server: ServerProcess, ids: dict[str, str], module_dsn: str
) -> None:
    import psycopg

    def stores() -> int:
        with psycopg.connect(module_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM vector_stores").fetchone()
            assert row is not None
            return int(row[0])

    before = stores()
    async with shared_server.session() as http:
        for method, path in _json_operations(ids):
            for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                status, answer = await _send(
                    http, method, path, '{"name": "via-text"}', **{"Content-Type": content_type}
                )
                assert status == 415, (method, path, content_type, answer)
                assert answer["error"]["code"] == "unsupported_media_type"
        assert stores() == before, "a refused body is never acted on"
        # JSON with parameters, a +json type, and no Content-Type at all (read as JSON, as the prototype did).
        for headers in (
            {"Content-Type": "application/json; charset=utf-8"},
            {"Content-Type": "application/vnd.x+json"},
        ):
            status, answer = await _send(http, "POST", "/v1/vector_stores", '{"name": "typed"}', **headers)
            assert status == 200, answer
        response = await http.post("/v1/vector_stores", data=b'{"name": "untyped"}', skip_auto_headers=["Content-Type"])
        assert response.status == 200, await response.text()
        # DELETE with the OpenAI client's empty JSON body keeps working (tests/server has the client itself).
        created = await (await http.post("/v1/vector_stores", json={"name": "to-delete"})).json()
        response = await http.delete(
            f"/v1/vector_stores/{created['id']}", data=b"", headers={"Content-Type": "application/json"}
        )
        assert response.status == 200, await response.text()


async def test_search_queries_are_bounded_before_the_upstream(
    shared_server: ServerProcess, ids: dict[str, str], module_upstream: Upstream
) -> None:
    search = f"/v1/vector_stores/{ids['vector_store_id']}/search"
    async with shared_server.session() as http:
        calls = module_upstream.calls
        # 200,000 characters: the test spec caps bodies at 256 KiB (in production a 1 MiB query gets the same 400).
        for query in ("x" * 200_000, ["y" * (MAX_QUERY_CHARS // 2 + 1)] * 2, "word " * (MAX_QUERY_TOKENS + 10)):
            response = await http.post(search, json={"query": query})
            answer = await response.json()
            assert response.status == 400 and answer["error"]["code"] == "query_too_long", answer
            assert str(MAX_QUERY_TOKENS) in answer["error"]["message"]
        # The prototype's rows the server embeds itself are one upstream input too.
        alpha = ids["vector_store_id"]
        for path, body in (
            (f"/v1/vector_stores/{alpha}/embeddings", {"content": "z" * 100_000}),
            (
                f"/v1/vector_stores/{alpha}/embeddings/batch",
                {"embeddings": [{"content": "ok"}, {"content": "word " * 9000}]},
            ),
        ):
            response = await http.post(path, json=body)
            answer = await response.json()
            assert response.status == 400 and answer["error"]["code"] == "input_too_long", answer
            assert answer["error"]["param"] in ("content", "embeddings[1].content"), answer
        assert module_upstream.calls == calls, "a refused query never reaches the embedding upstream"
        # Just under the bound is searched (" word" is one cl100k token).
        fits = f"{uuid.uuid4()} " + "word " * (MAX_QUERY_TOKENS - 100)
        response = await http.post(search, json={"query": fits})
        assert response.status == 200, await response.text()
        assert module_upstream.calls == calls + 1


async def test_error_messages_never_echo_a_key(shared_server: ServerProcess) -> None:
    """An error message that quotes the client's input is redacted of every key the server knows."""
    key = KEYS["writer"]
    async with shared_server.session() as http:
        response = await http.post(
            "/v1/files",
            data=_multipart("XX", [("purpose", None, key.encode()), ("file", f"{key}.txt", b"x")]),
            headers={"Content-Type": "multipart/form-data; boundary=XX"},
        )
        answer = await response.text()
        assert response.status == 400 and key not in answer, answer
        file_id = await upload(http, "plain.txt", b"plain")
        assert file_id.startswith("file-")
