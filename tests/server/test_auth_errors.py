"""Each auth rule and each error case, checked on the wire: status, OpenAI envelope, no internals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import psycopg
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI

from config.names import derived_store_id
from server.conftest import (
    DOCS_ID,
    LIMITED_KEY,
    READ_KEY,
    WRITE_KEY,
    RunningServer,
    auth,
    spec_data,
    start_server,
    write_spec,
)
from vectorstore.settings import StartupError, resolve_secrets

NOTES_ID = derived_store_id("notes")


def assert_envelope(body: Any, status: int) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    text = json.dumps(body)
    for leak in ("Traceback", "psycopg", "SELECT ", 'File "'):
        assert leak not in text, f"{status}: internal detail in {text}"
    return dict(error)


async def call(
    http: aiohttp.ClientSession, method: str, url: str, *, key: str | None = WRITE_KEY, **kwargs: Any
) -> tuple[int, Any, Any]:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers.update(auth(key))
    async with http.request(method, url, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None), response.headers


async def test_auth_rules(server: RunningServer, http: aiohttp.ClientSession) -> None:
    stores = server.url("/v1/vector_stores")
    for key, header in ((None, {}), (None, {"Authorization": "Bearer wrong"}), (None, {"Authorization": "Basic x"})):
        status, body, _ = await call(http, "GET", stores, key=key, headers=header)
        assert status == 401
        assert assert_envelope(body, status)["code"] == "invalid_api_key"
    # /health and /ready need no key.
    for path in ("/health", "/ready"):
        status, body, _ = await call(http, "GET", server.url(path), key=None)
        assert status == 200, body

    # A read key lists, retrieves and searches, and gets 403 on every write.
    assert (await call(http, "GET", stores, key=READ_KEY))[0] == 200
    assert (await call(http, "GET", f"{stores}/{DOCS_ID}", key=READ_KEY))[0] == 200
    status, _, _ = await call(http, "POST", f"{stores}/{DOCS_ID}/search", key=READ_KEY, json={"query": "q"})
    assert status == 200
    for method, url, payload in (
        ("POST", stores, {"name": "x"}),
        ("POST", f"{stores}/{DOCS_ID}", {"name": "x"}),
        ("DELETE", f"{stores}/{DOCS_ID}", None),
        ("POST", f"{stores}/{DOCS_ID}/embeddings", {"content": "x"}),
    ):
        status, body, _ = await call(http, method, url, key=READ_KEY, json=payload)
        assert status == 403
        assert_envelope(body, status)

    # A key limited to "docs" sees only docs: the other store is 404 everywhere, and absent from lists.
    status, body, _ = await call(http, "GET", stores, key=LIMITED_KEY)
    assert [s["id"] for s in body["data"]] == [DOCS_ID]
    for method, url, payload in (
        ("GET", f"{stores}/{NOTES_ID}", None),
        ("POST", f"{stores}/{NOTES_ID}/search", {"query": "q"}),
        ("POST", f"{stores}/{NOTES_ID}/embeddings", {"content": "x"}),
    ):
        status, body, _ = await call(http, method, url, key=LIMITED_KEY, json=payload)
        assert status == 404
        assert assert_envelope(body, status)["code"] == "not_found"
    assert (await call(http, "GET", f"{stores}/{DOCS_ID}", key=LIMITED_KEY))[0] == 200


def test_missing_auth_key_env_is_a_clear_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_data("http://127.0.0.1:9"))
    with pytest.raises(StartupError) as info:
        resolve_secrets(spec, {"VECTORSTORE_API_KEY_WRITER": "x"})
    assert "VECTORSTORE_API_KEY_READER" in str(info.value) and "VECTORSTORE_API_KEY_LIMITED" in str(info.value)
    # Through the real command: exit non-zero, the variable named, no traceback.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VECTORSTORE_API_KEY")}
    env["DATABASE_URL"] = "postgresql://127.0.0.1:9/none"
    result = subprocess.run(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "serve", "--spec", str(tmp_path / "s.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "VECTORSTORE_API_KEY_WRITER" in result.stderr and "Traceback" not in result.stderr


def test_missing_embedding_key_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_data("http://127.0.0.1:9"))
    env = {"VECTORSTORE_API_KEY_WRITER": "w", "VECTORSTORE_API_KEY_READER": "r", "VECTORSTORE_API_KEY_LIMITED": "l"}
    keys, embedding_key = resolve_secrets(spec, env)
    assert keys == {"writer": "w", "reader": "r", "limited": "l"} and embedding_key is None
    assert "VECTORSTORE_EMBEDDING_API_KEY" in caplog.text


async def test_request_errors(server: RunningServer, http: aiohttp.ClientSession) -> None:
    search = server.url(f"/v1/vector_stores/{DOCS_ID}/search")
    cases: list[tuple[str, str, dict[str, Any], int, str | None]] = [
        ("POST", search, {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "body"),
        ("POST", search, {"json": ["a list"]}, 400, "body"),
        ("POST", search, {"json": {"query": 5}}, 400, "query"),
        ("POST", search, {"json": {"query": "q", "max_num_results": 51}}, 400, "max_num_results"),
        ("POST", search, {"json": {"query": "q", "max_num_results": 0}}, 400, "max_num_results"),
        ("POST", search, {"json": {"query": "q", "max_num_results": "5"}}, 400, "max_num_results"),
        ("POST", search, {"json": {"query": "q", "rewrite_query": "yes"}}, 400, "rewrite_query"),
        (
            "POST",
            search,
            {"json": {"query": "q", "ranking_options": {"score_threshold": 2}}},
            400,
            "ranking_options.score_threshold",
        ),
        (
            "POST",
            search,
            {"json": {"query": "q", "filters": {"type": "gt", "key": "n", "value": True}}},
            400,
            "filters.value",
        ),
        (
            "POST",
            search,
            {"json": {"query": "q", "filters": {"type": "and", "filters": [{"type": "zz", "key": "k"}]}}},
            400,
            "filters.filters[0].type",
        ),
        (
            "POST",
            search,
            {"json": {"query": "q", "filters": {"type": "in", "key": "k", "value": "a"}}},
            400,
            "filters.value",
        ),
        (
            "POST",
            search,
            {"json": {"query": "q", "filters": {"type": "near", "key": "k", "value": 1}}},
            400,
            "filters.type",
        ),
        ("POST", search, {"json": {"query": "q", "bogus": 1}}, 400, "bogus"),
        ("POST", server.url("/v1/vector_stores"), {"json": {"name": 7}}, 400, "name"),
        ("POST", server.url("/v1/vector_stores"), {"json": {"metadata": {"k": 1}}}, 400, "metadata.k"),
        ("GET", server.url("/v1/vector_stores?limit=500"), {}, 400, "limit"),
        ("GET", server.url("/v1/vector_stores?order=sideways"), {}, 400, "order"),
        ("GET", server.url("/v1/vector_stores?after=vs_nope"), {}, 400, "after"),
        ("GET", server.url("/v1/vector_stores/vs_nope"), {}, 404, "vector_store_id"),
        ("POST", server.url("/v1/vector_stores/vs_nope/search"), {"json": {"query": "q"}}, 404, "vector_store_id"),
        ("GET", server.url("/v1/no/such/route"), {}, 404, None),
        ("PUT", server.url("/v1/vector_stores"), {}, 405, None),
        (
            "POST",
            search,
            {"data": b"x" * (17 * 1024 * 1024), "headers": {"Content-Type": "application/json"}},
            413,
            None,
        ),
    ]
    for method, url, kwargs, want, param in cases:
        status, body, _ = await call(http, method, url, **kwargs)
        assert status == want, (method, url, kwargs.get("json"), body)
        error = assert_envelope(body, status)
        assert error["param"] == param, (url, kwargs.get("json"), error)


async def test_upstream_failures(
    server: RunningServer, http: aiohttp.ClientSession, fake_embedder: FakeEmbedder, client: AsyncOpenAI
) -> None:
    search = server.url(f"/v1/vector_stores/{DOCS_ID}/search")
    fake_embedder.fail_status = 401
    status, body, _ = await call(http, "POST", search, json={"query": "one"})
    assert status == 502 and "status 401" in assert_envelope(body, status)["message"]
    assert len(fake_embedder.calls) == 1  # a 4xx is not retried

    fake_embedder.fail_status = 503
    status, body, _ = await call(http, "POST", search, json={"query": "two"})
    assert status == 502 and "503" in assert_envelope(body, status)["message"]
    assert len(fake_embedder.calls) == 1 + 3  # max_retries: 2

    fake_embedder.reset()
    fake_embedder.wrong_dimensions = True
    status, body, _ = await call(http, "POST", search, json={"query": "three"})
    assert status == 502 and "9 dimensions" in assert_envelope(body, status)["message"]

    # 429 with Retry-After, then success: the client waits and retries.
    fake_embedder.reset()
    fake_embedder.rate_limit_times = 2
    fake_embedder.retry_after = "0.2"
    page = await client.vector_stores.search(DOCS_ID, query="four")
    assert page.data == [] and len(fake_embedder.calls) == 3

    fake_embedder.reset()
    fake_embedder.fail_status = 500
    fake_embedder.fail_times = 1
    await client.vector_stores.search(DOCS_ID, query="five")
    assert len(fake_embedder.calls) == 2


async def test_database_unavailable_is_503(server: RunningServer, http: aiohttp.ClientSession, pg_dsn: str) -> None:
    stores = server.url("/v1/vector_stores")
    assert (await call(http, "GET", stores))[0] == 200
    dbname = psycopg.conninfo.conninfo_to_dict(server.dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
    for _ in range(2):  # broken pooled connections are discarded; new ones can't connect
        status, body, _ = await call(http, "GET", stores)
        assert status == 503
        assert assert_envelope(body, status)["code"] == "service_unavailable"
    status, body, _ = await call(http, "GET", server.url("/ready"), key=None)
    assert status == 503
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')  # for the fixture's teardown


async def test_openai_client_exceptions(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.retrieve("vs_missing")
    with pytest.raises(openai.BadRequestError) as info:
        await client.vector_stores.search(DOCS_ID, query="q", max_num_results=99)
    assert info.value.param == "max_num_results"


async def test_unready_server_answers_503(fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_data(fake_embedder.base_url))
    unreachable = "postgresql://postgres@127.0.0.1:9/nothing?connect_timeout=1"
    running = await start_server(spec, unreachable, wait_ready=False)
    try:
        async with aiohttp.ClientSession() as http:
            status, body, _ = await call(http, "GET", running.url("/health"), key=None)
            assert status == 200 and body == {"status": "healthy"}
            status, body, _ = await call(http, "GET", running.url("/ready"), key=None)
            assert status == 503 and "not reachable" in assert_envelope(body, status)["message"]
            status, body, _ = await call(http, "GET", running.url("/v1/vector_stores"))
            assert status == 503
            assert_envelope(body, status)
    finally:
        await running.stop()
