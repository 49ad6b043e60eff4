"""The embedding upstream down, slow, failing, rate-limiting or answering with the wrong dimensions.

The server's spec here allows a 2 s upstream timeout and 1 retry, so each failure resolves in seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from robustness.harness import (
    DIMENSIONS,
    ServerProcess,
    Upstream,
    attach,
    chunk_rows,
    declared_store_ids,
    upload,
    wait_file,
)

SEARCH_BOUND_SECONDS = 15.0


@pytest.fixture
def upstream_mode(module_upstream: Upstream) -> Iterator[Upstream]:
    """The module's upstream, put back to `ok` after each test."""
    yield module_upstream
    module_upstream.mode = "ok"
    module_upstream.delay = 0.0


@pytest.mark.parametrize(
    ("mode", "needle"),
    [("500", "500"), ("429", "429"), ("wrongdim", "dimensions"), ("slow", "timed out"), ("down", "unreachable")],
)
async def test_search_gets_a_clear_502_or_503(
    shared_server: ServerProcess, upstream_mode: Upstream, mode: str, needle: str
) -> None:
    alpha = declared_store_ids(shared_server.spec)["alpha"]
    upstream_mode.mode = mode
    if mode == "slow":
        upstream_mode.delay = 5.0
    calls = upstream_mode.calls
    async with shared_server.session(timeout=60.0) as http:
        started = time.monotonic()
        # A query never asked before, so the query cache can't answer it.
        response = await http.post(f"/v1/vector_stores/{alpha}/search", json={"query": f"fault {uuid.uuid4()}"})
        elapsed = time.monotonic() - started
        body = await response.json()
    assert response.status in (502, 503), body
    assert elapsed < SEARCH_BOUND_SECONDS
    message = body["error"]["message"]
    assert "embedding upstream" in message and needle in message, message
    assert "Traceback" not in message
    if mode == "down":
        return
    attempts = upstream_mode.calls - calls
    if mode == "wrongdim":
        assert attempts == 1, "a wrong answer is not retried"
    else:
        assert attempts == 2, "one retry, as the spec says"
    if mode == "429":
        # Retry-After: 1 was honoured before the retry.
        assert elapsed >= 1.0


async def test_ingestion_retries_and_never_stores_a_wrong_vector(
    shared_server: ServerProcess, upstream_mode: Upstream, module_dsn: str
) -> None:
    beta = declared_store_ids(shared_server.spec)["beta"]
    async with shared_server.session() as http:
        files: dict[str, str] = {}
        for mode in ("wrongdim", "500"):
            upstream_mode.mode = mode
            calls = upstream_mode.calls
            file_id = await upload(http, f"{mode}.txt", f"Ingested while the upstream answers {mode}.\n".encode() * 20)
            files[mode] = file_id
            await attach(http, beta, file_id)
            deadline = time.monotonic() + 15.0
            while upstream_mode.calls == calls:
                assert time.monotonic() < deadline, "the worker never called the upstream"
                await _sleep(0.1)
            await _sleep(1.0)
            state = await wait_file(http, beta, file_id, {"in_progress", "failed"})
            # Either waiting for a retry or failed; in both cases nothing of it is stored.
            assert chunk_rows(module_dsn, beta, file_id) == [], mode
            if state["status"] == "failed":
                assert state["last_error"]["message"]
        upstream_mode.mode = "ok"
        for file_id in files.values():
            done = await wait_file(http, beta, file_id, {"completed", "failed"}, within=45.0)
            assert done["status"] == "completed", done
            rows = chunk_rows(module_dsn, beta, file_id)
            assert rows, "the retried file was ingested"
            assert {dims for _, _, dims in rows} == {DIMENSIONS}
            assert [index for _, index, _ in rows] == list(range(len(rows))), "each chunk exactly once"


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_metrics_show_the_faults(shared_server: ServerProcess) -> None:
    """After the tests above, the server's own /metrics tells an operator what happened (runs last here)."""
    async with shared_server.session(key=None) as http:
        response = await http.get("/metrics")
        assert response.status == 200
        text = await response.text()
    for needle in (
        'vectorstore_embedding_errors_total{purpose="request",reason="status_5xx"}',
        'vectorstore_embedding_errors_total{purpose="request",reason="status_429"}',
        'vectorstore_embedding_errors_total{purpose="request",reason="timeout"}',
        'vectorstore_embedding_errors_total{purpose="request",reason="bad_answer"}',
        'vectorstore_embedding_errors_total{purpose="ingest",reason="bad_answer"}',
        'vectorstore_ingest_files_total{outcome="retry"}',
        'vectorstore_ingest_files_total{outcome="completed"}',
        'vectorstore_http_requests_total{method="POST",route="/v1/vector_stores/{vector_store_id}/search",status="502"}',
        "vectorstore_search_duration_seconds_count",
        "vectorstore_db_pool_size",
        "vectorstore_db_pool_in_use",
        'vectorstore_ingest_queue_depth{state="ready"}',
    ):
        assert needle in text, (needle, [line for line in text.splitlines() if "errors_total{" in line])
