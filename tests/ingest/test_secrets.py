"""Secrets never leave, tested the way the review found the two leaks.

1. The embedding upstream answers 401 quoting the Authorization header it received (LiteLLM's proxy does): its
   text must reach no 502 message and no failed file's `last_error`.
2. A client sends an API key as its `x-request-id`, on a request that logs warnings: no log line may carry it.

Then a sweep: no secret the server knows in any response body seen, any log line, `/metrics` or `last_error`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fakeembed import FakeEmbedder
from localhttp import serve_locally
from psycopg.conninfo import make_conninfo
from server.conftest import KEY_VALUES, READ_KEY, WRITE_KEY, RunningServer, start_server, write_spec

from ingest.conftest import STORE_ID, ingest_spec
from vectorstore.ingest import worker
from vectorstore.observability import logs
from vectorstore.state import SETTINGS

EMBEDDING_KEY = "sk-embedding-secret-7c41d9"
DB_PASSWORD = "db-password-secret-93be"
SECRETS = (*KEY_VALUES.values(), EMBEDDING_KEY, DB_PASSWORD)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The server's JSON logs, configured as `vectorstore serve` does (commands._configure_logging)."""
    stream = io.StringIO()
    logs.configure(logging.INFO, stream=stream)
    try:
        yield stream
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_vectorstore", False):
                root.removeHandler(handler)


@pytest.fixture
async def reflecting_server(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, log_stream: io.StringIO
) -> AsyncIterator[RunningServer]:
    spec = write_spec(tmp_path / "stack.yaml", ingest_spec(fake_embedder.base_url))
    # The DSN carries a password the database ignores (trust authentication): the server must treat it as secret.
    dsn = make_conninfo(fresh_dsn, password=DB_PASSWORD)
    running = await start_server(spec, dsn, embedding_api_key=EMBEDDING_KEY)
    logs.add_secrets(running.app[SETTINGS].secret_values())
    try:
        yield running
    finally:
        await running.stop()


def _no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret[:8]}... leaked into {where}: {text[:2000]}"


async def test_an_upstream_quoting_the_key_leaks_nothing(
    reflecting_server: RunningServer,
    fake_embedder: FakeEmbedder,
    log_stream: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "RETRY_DELAYS", (0.05, 0.05))
    fake_embedder.reflect_authorization = True
    seen: list[str] = []
    url = reflecting_server.url
    async with aiohttp.ClientSession() as http:

        async def call(
            method: str,
            path: str,
            key: str = WRITE_KEY,
            *,
            body: dict[str, Any] | None = None,
            form: aiohttp.FormData | None = None,
            request_id: str | None = None,
        ) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {key}"}
            if request_id is not None:
                headers["x-request-id"] = request_id
            async with http.request(method, url(path), headers=headers, json=body, data=form) as response:
                text = await response.text()
                seen.append(text)
                seen.append(json.dumps(dict(response.headers)))
                return response.status, json.loads(text)

        # A search with a read key, and the prototype's route that embeds: 502 naming the status only.
        for key in (READ_KEY, WRITE_KEY):
            # The request id is the caller's own key: the second leak the review found.
            status, body = await call(
                "POST",
                f"/v1/vector_stores/{STORE_ID}/search",
                key,
                body={"query": f"a query by {key[:4]}"},
                request_id=key,
            )
            assert status == 502, body
            message = body["error"]["message"]
            assert "401" in message and "Unauthorized" in message, message
            assert "Received" not in message and "Bearer" not in message, message
        status, body = await call("POST", f"/v1/vector_stores/{STORE_ID}/embeddings", body={"content": "x"})
        assert status == 502, body

        # Ingestion: the file fails after its retries, with a last_error that names the status, not the body.
        form = aiohttp.FormData()
        form.add_field("purpose", "assistants")
        form.add_field("file", b"some text to embed\n" * 20, filename="doc.txt")
        status, uploaded = await call("POST", "/v1/files", form=form)
        assert status == 200, uploaded
        status, attached = await call("POST", f"/v1/vector_stores/{STORE_ID}/files", body={"file_id": uploaded["id"]})
        assert status == 200, attached
        for _ in range(200):
            status, attached = await call("GET", f"/v1/vector_stores/{STORE_ID}/files/{uploaded['id']}")
            if attached["status"] != "in_progress":
                break
            await asyncio.sleep(0.1)
        assert attached["status"] == "failed", attached
        last_error = json.dumps(attached["last_error"])
        assert "401" in last_error, last_error
        _no_secret(last_error, "last_error")
        status, _ = await call("GET", f"/v1/vector_stores/{STORE_ID}/files")
        assert status == 200

        async with http.get(url("/metrics")) as response:
            metrics_text = await response.text()

    assert fake_embedder.calls and all(call.authorization == f"Bearer {EMBEDDING_KEY}" for call in fake_embedder.calls)
    for text in seen:
        _no_secret(text, "a response")
    _no_secret(metrics_text, "/metrics")
    log_text = log_stream.getvalue()
    assert "embedding upstream" in log_text and "401" in log_text, "the operator still sees what happened"
    _no_secret(log_text, "the logs")
    lines = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert lines and all(isinstance(line, dict) for line in lines)
    assert any(line.get("level") == "warning" and line.get("request_id") for line in lines), (
        "warning lines written while serving a request carry its id"
    )


URL_PASSWORD = "url-password-secret-4e2f"


async def test_a_password_in_an_upstream_url_reaches_no_log_or_answer(
    fresh_dsn: str, tmp_path: Path, log_stream: io.StringIO
) -> None:
    """validate refuses user:password@ in every URL of the spec (tests/specs/invalid/*-credentials.yaml). One
    that reaches the server some other way (here: put into the loaded spec) is still never shown: the upstream
    redirects to itself until aiohttp gives up (which was a 500 and a traceback)."""
    hops: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hops.append(request.headers.get("Authorization", ""))
        raise web.HTTPTemporaryRedirect(str(request.url))  # 307: the POST is repeated

    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/embeddings", redirect)
    runner, port = await serve_locally(upstream_app)
    spec = write_spec(tmp_path / "stack.yaml", ingest_spec(f"http://127.0.0.1:{port}"))
    base_url = f"http://litellm:{URL_PASSWORD}@127.0.0.1:{port}"
    spec = dataclasses.replace(spec, embedding=dataclasses.replace(spec.embedding, base_url=base_url))
    running = await start_server(spec, fresh_dsn, embedding_api_key=None)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {WRITE_KEY}"}
            async with http.post(
                running.url(f"/v1/vector_stores/{STORE_ID}/search"), headers=headers, json={"query": "a query"}
            ) as response:
                body = await response.text()
                status = response.status
    finally:
        await running.stop()
        await runner.cleanup()
    assert hops, "the upstream was asked"
    # A 502 naming the upstream (without the password), not a 500 with a traceback in the log.
    assert status == 502 and f"upstream http://127.0.0.1:{port}/" in body and "redirected too many times" in body, body
    assert URL_PASSWORD not in body
    log_text = log_stream.getvalue()
    assert "/search 502" in log_text
    assert "Traceback" not in log_text
    assert URL_PASSWORD not in log_text
