"""Scopes, store limits, injection, path traversal, upload bounds, keys in logs, secrets in manifests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import yaml

from config.names import API_KEY_ENV_PREFIX, EMBEDDING_API_KEY_ENV
from robustness.harness import (
    EMBEDDING_KEY,
    KEYS,
    ServerProcess,
    Upstream,
    attach,
    declared_store_ids,
    upload,
    wait_file,
)

REPO = Path(__file__).resolve().parents[2]

INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE vector_stores; --",
    'x") OR true --',
    "lang' ) OR ( attributes->>'lang",
    "$1",
    "%s",
    "{}",
    "\\'",
    "attributes #>> '{}'",
]


@pytest.fixture(scope="module")
async def corpus(shared_server: ServerProcess) -> AsyncIterator[dict[str, Any]]:
    """A store of our own with two ingested files with different attributes."""
    async with shared_server.session() as http:
        response = await http.post("/v1/vector_stores", json={"name": "security-corpus"})
        assert response.status == 200, await response.text()
        store = (await response.json())["id"]
        files = {}
        for lang, n, text in (("en", 1, "apples and pears grow in the orchard"), ("fr", 2, "pommes et poires")):
            file_id = await upload(http, f"{lang}.txt", text.encode())
            await attach(http, store, file_id, {"lang": lang, "n": n})
            files[lang] = file_id
        for file_id in files.values():
            done = await wait_file(http, store, file_id, {"completed", "failed"})
            assert done["status"] == "completed", done
        yield {"store": store, "files": files}


async def _search(http: aiohttp.ClientSession, store: str, filters: Any) -> tuple[int, Any]:
    response = await http.post(
        f"/v1/vector_stores/{store}/search", json={"query": "apples", "filters": filters, "max_num_results": 10}
    )
    return response.status, await response.json()


def _fingerprint(dsn: str) -> list[Any]:
    """Everything an injection could change: stores, files, attachments, and their attributes."""
    with psycopg.connect(dsn) as conn:
        return [
            conn.execute("SELECT id, name, metadata::text FROM vector_stores ORDER BY id").fetchall(),
            conn.execute("SELECT id, filename, bytes FROM files ORDER BY id").fetchall(),
            conn.execute(
                "SELECT vector_store_id, file_id, status, attributes::text FROM vector_store_files ORDER BY 1, 2"
            ).fetchall(),
            conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").fetchall(),
        ]


async def test_read_key_reads_and_searches_but_never_writes(shared_server: ServerProcess) -> None:
    alpha = declared_store_ids(shared_server.spec)["alpha"]
    async with shared_server.session("reader") as http:
        assert (await http.get("/v1/vector_stores")).status == 200
        assert (await http.get(f"/v1/vector_stores/{alpha}")).status == 200
        assert (await http.get("/openapi.json")).status == 200
        response = await http.post(f"/v1/vector_stores/{alpha}/search", json={"query": "anything"})
        assert response.status == 200, await response.text()
        form = aiohttp.FormData()
        form.add_field("purpose", "assistants")
        form.add_field("file", b"x", filename="x.txt")
        for method, path, kwargs in (
            ("POST", "/v1/vector_stores", {"json": {"name": "nope"}}),
            ("POST", f"/v1/vector_stores/{alpha}", {"json": {"name": "nope"}}),
            ("DELETE", f"/v1/vector_stores/{alpha}", {}),
            ("POST", f"/v1/vector_stores/{alpha}/embeddings", {"json": {"content": "x"}}),
            ("POST", f"/v1/vector_stores/{alpha}/files", {"json": {"file_id": "file-x"}}),
            ("POST", "/v1/files", {"data": form}),
        ):
            response = await http.request(method, path, **kwargs)
            body = await response.json()
            assert response.status == 403, (method, path, body)
            assert body["error"]["code"] == "insufficient_permissions"


async def test_store_limited_key_gets_404_for_other_stores(shared_server: ServerProcess) -> None:
    ids = declared_store_ids(shared_server.spec)
    alpha, beta = ids["alpha"], ids["beta"]
    async with shared_server.session("limited") as limited, shared_server.session("writer") as writer:
        assert (await limited.get(f"/v1/vector_stores/{alpha}")).status == 200
        listed = await (await limited.get("/v1/vector_stores")).json()
        assert [store["id"] for store in listed["data"]] == [alpha]
        other = (await writer.post("/v1/vector_stores", json={"name": "not-for-limited"})).status
        assert other == 200
        missing = await limited.get("/v1/vector_stores/no-such-store")
        missing_body = await missing.json()
        for method, path, body in (
            ("GET", f"/v1/vector_stores/{beta}", None),
            ("POST", f"/v1/vector_stores/{beta}", {"name": "x"}),
            ("DELETE", f"/v1/vector_stores/{beta}", None),
            ("POST", f"/v1/vector_stores/{beta}/search", {"query": "x"}),
            ("GET", f"/v1/vector_stores/{beta}/files", None),
            ("POST", f"/v1/vector_stores/{beta}/files", {"file_id": "file-x"}),
            ("POST", f"/v1/vector_stores/{beta}/file_batches", {"file_ids": ["file-x"]}),
            ("POST", f"/v1/vector_stores/{beta}/embeddings", {"content": "x"}),
        ):
            response = await limited.request(method, path, json=body)
            answer = await response.json()
            assert response.status == 404, (method, path, answer)
            # Indistinguishable from a store that does not exist, except for the id it names.
            assert answer["error"]["code"] == missing_body["error"]["code"] == "not_found"
            assert answer["error"]["type"] == missing_body["error"]["type"]


async def test_injection_through_filters_ids_cursors_metadata_attributes_changes_nothing(
    shared_server: ServerProcess, corpus: dict[str, Any], module_dsn: str
) -> None:
    store = corpus["store"]
    async with shared_server.session() as http:
        status, baseline = await _search(http, store, None)
        assert status == 200 and len(baseline["data"]) == 2
        status, english = await _search(http, store, {"type": "eq", "key": "lang", "value": "en"})
        assert status == 200 and [hit["attributes"]["lang"] for hit in english["data"]] == ["en"]
        before = _fingerprint(module_dsn)
        for text in INJECTIONS:
            for filters in (
                {"type": "eq", "key": "lang", "value": text},
                {"type": "eq", "key": text, "value": "en"},
                {"type": "in", "key": text, "value": [text, "en"]},
                {"type": "gt", "key": "n", "value": text},
                {"type": "or", "filters": [{"type": "eq", "key": text, "value": text}]},
                {text: text},  # the prototype's flat equality filters
            ):
                status, body = await _search(http, store, filters)
                assert status in (200, 400), (filters, body)
                if status == 200:
                    assert body["data"] == [], (filters, body)
            for method, path in (
                ("GET", f"/v1/vector_stores/{text}"),
                ("GET", f"/v1/files/{text}"),
                ("GET", f"/v1/vector_stores/{store}/files/{text}"),
                ("GET", f"/v1/vector_stores/{text}/files"),
            ):
                response = await http.request(method, path.replace("%", "%25").replace("#", "%23").replace("?", "%3F"))
                assert response.status in (400, 404), (method, path, response.status)
            for cursor in ("after", "before"):
                response = await http.get("/v1/vector_stores", params={cursor: text})
                assert response.status == 400, await response.text()
                response = await http.get(f"/v1/vector_stores/{store}/files", params={cursor: text})
                assert response.status in (200, 400), await response.text()
                if response.status == 200:
                    assert (await response.json())["data"] == []
        assert _fingerprint(module_dsn) == before

        # Stored hostile metadata and attributes are data: they come back verbatim and filter as values.
        hostile = INJECTIONS[1]
        response = await http.post("/v1/vector_stores", json={"name": hostile, "metadata": {hostile[:60]: hostile}})
        assert response.status == 200
        created = await response.json()
        assert created["name"] == hostile and created["metadata"] == {hostile[:60]: hostile}
        file_id = corpus["files"]["fr"]
        response = await http.post(
            f"/v1/vector_stores/{store}/files/{file_id}", json={"attributes": {"lang": hostile, hostile[:60]: 1}}
        )
        assert response.status == 200, await response.text()
        status, body = await _search(http, store, {"type": "eq", "key": "lang", "value": hostile})
        assert status == 200 and [hit["file_id"] for hit in body["data"]] == [file_id]
        status, body = await _search(http, store, {"type": "eq", "key": hostile[:60], "value": 1})
        assert status == 200 and [hit["file_id"] for hit in body["data"]] == [file_id]
        status, body = await _search(http, store, None)
        assert len(body["data"]) == 2, "nothing was dropped"


async def test_path_traversal_in_filenames_and_ids_fails(shared_server: ServerProcess) -> None:
    async with shared_server.session() as http:
        for name in ("../../etc/passwd", "..\\..\\boot.ini", "/etc/shadow", "a/../../b.txt", "..", "....//....//x.txt"):
            form = aiohttp.FormData()
            form.add_field("purpose", "assistants")
            form.add_field("file", b"traversal attempt", filename=name)
            response = await http.post("/v1/files", data=form)
            body = await response.json()
            assert response.status in (200, 400), body
            if response.status == 200:
                stored = body["filename"]
                assert "/" not in stored and "\\" not in stored and stored not in ("", ".", ".."), stored
                content = await http.get(f"/v1/files/{body['id']}/content")
                assert await content.read() == b"traversal attempt"
                assert "/" not in content.headers.get("Content-Disposition", "").split("filename=")[-1]
        for path in ("/v1/files/..%2F..%2Fetc%2Fpasswd/content", "/v1/files/%2e%2e/content", "/v1/../../etc/passwd"):
            response = await http.get(path)
            assert response.status == 404, path


async def test_uploads_and_bodies_are_bounded(shared_server: ServerProcess) -> None:
    limit = 256 * 1024  # the test spec's server.max_upload_bytes
    async with shared_server.session() as http:
        form = aiohttp.FormData()
        form.add_field("purpose", "assistants")
        form.add_field("file", b"a" * (limit + 1), filename="big.txt")
        response = await http.post("/v1/files", data=form)
        body = await response.json()
        assert response.status == 413, body
        assert body["error"]["code"] == "payload_too_large"
        response = await http.post("/v1/vector_stores", data=b"{" + b" " * (limit + 10) + b"}")
        assert response.status == 413
        # Just under the limit is fine.
        form = aiohttp.FormData()
        form.add_field("purpose", "assistants")
        form.add_field("file", b"a" * (limit - 1024), filename="fits.txt")
        assert (await http.post("/v1/files", data=form)).status == 200


async def test_keys_never_appear_in_logs(shared_server: ServerProcess) -> None:
    alpha = declared_store_ids(shared_server.spec)["alpha"]
    async with shared_server.session(key=None) as http:
        # Keys in every place a careless log line could pick them up: headers, wrong schemes, paths, queries,
        # bodies and the request id.
        for key in KEYS.values():
            await http.get("/v1/vector_stores", headers={"Authorization": f"Bearer {key}x"})
            await http.get("/v1/vector_stores", headers={"Authorization": key})
            await http.get(f"/v1/vector_stores/{key}", headers={"Authorization": f"Bearer {key}"})
            await http.get("/v1/vector_stores", params={"after": key}, headers={"Authorization": f"Bearer {key}"})
            await http.get("/v1/files", headers={"Authorization": f"Bearer {key}", "x-request-id": key})
            await http.post(
                f"/v1/vector_stores/{alpha}/search",
                data=json.dumps({"query": key, "filters": {"type": "eq", "key": key, "value": key}}),
                headers={"Authorization": f"Bearer {key}"},
            )
    logs = shared_server.logs()
    assert '"logger": "vectorstore.access"' in logs, "the access log is there to be checked"
    for secret in (*KEYS.values(), EMBEDDING_KEY):
        assert secret not in logs, f"a key leaked into the logs: {secret[:10]}..."
    # Each line is one JSON object (the startup banner lines excepted).
    lines = [line for line in logs.splitlines() if line.startswith("{")]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


async def test_a_key_sent_as_request_id_reaches_no_log_line(
    shared_server: ServerProcess, module_upstream: Upstream
) -> None:
    """The way the review found it: the key as `x-request-id` on a request that logs warnings (the upstream fails,
    and the server logs each retry while serving the request)."""
    alpha = declared_store_ids(shared_server.spec)["alpha"]
    before = len(shared_server.logs())
    module_upstream.mode = "500"
    try:
        async with shared_server.session(key=None) as http:
            for name, key in KEYS.items():
                response = await http.post(
                    f"/v1/vector_stores/{alpha}/search",
                    json={"query": f"request id {name}"},
                    headers={"Authorization": f"Bearer {key}", "x-request-id": key},
                )
                assert response.status in (404, 502), await response.text()
                assert response.headers["x-request-id"] != key
                assert key not in await response.text()
    finally:
        module_upstream.mode = "ok"
    logs = shared_server.logs()[before:]
    assert '"level": "warning"' in logs and "retry" in logs, "the requests did log warnings"
    for secret in (*KEYS.values(), EMBEDDING_KEY):
        assert secret not in logs, f"a key leaked into the logs: {secret[:10]}..."


def test_rendered_manifests_hold_no_secret_value() -> None:
    directory = REPO / "manifests"
    documents = [
        doc
        for path in sorted(directory.glob("*.y*ml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict)
    ]
    assert documents, "manifests/ is rendered and committed"
    # LiteLLM's Deployment patch wires its key too (litellm.api_key_env of config/stack.yaml).
    secret_envs = {"PGPASSWORD", EMBEDDING_API_KEY_ENV, "VECTOR_STORE_API_KEY"}
    checked = 0
    for doc in documents:
        assert doc.get("kind") != "Secret" or not (doc.get("data") or doc.get("stringData")), doc["metadata"]
        for env in _envs(doc):
            name = env.get("name", "")
            if name in secret_envs or name.startswith(API_KEY_ENV_PREFIX):
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), env
                checked += 1
    assert checked >= 3, "the Deployment wires the keys and the database password from secrets, the patch LiteLLM's"
    # LiteLLM's snippet references its key through os.environ, never a literal.
    litellm = directory / "litellm.yml"
    if litellm.exists():
        text = litellm.read_text(encoding="utf-8")
        for match in (line.split(":", 1)[1].strip() for line in text.splitlines() if "api_key:" in line):
            assert match.startswith("os.environ/"), match


def _envs(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            found += [env for env in node["env"] if isinstance(env, dict)]
        for value in node.values():
            found += _envs(value)
    elif isinstance(node, list):
        for value in node:
            found += _envs(value)
    return found
