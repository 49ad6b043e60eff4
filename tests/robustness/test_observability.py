"""Unit tests of logs, metrics and their wiring, on a small aiohttp app (no database needed)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from vectorstore.api import observability
from vectorstore.observability import logs, metrics

SECRET = "sk-very-secret-key-123"


async def _ok(request: web.Request) -> web.Response:
    logging.getLogger("vectorstore.test").info("handling %s", request.match_info.get("item_id"))
    return web.json_response({"ok": True})


async def _boom(request: web.Request) -> web.Response:
    raise web.HTTPConflict(text="no")


async def _crash(request: web.Request) -> web.Response:
    raise RuntimeError(f"database said: password={SECRET}")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure(logging.INFO, secrets=[SECRET], stream=stream)
    try:
        yield stream
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_vectorstore", False):
                root.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    observability.setup(app)
    app.router.add_get("/v1/items/{item_id}", _ok)
    app.router.add_post("/v1/boom", _boom)
    app.router.add_get("/v1/crash", _crash)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def _count(route: str, status: str, method: str = "GET") -> float:
    value = metrics.REGISTRY.get_sample_value(
        "vectorstore_http_requests_total", {"method": method, "route": route, "status": status}
    )
    return value or 0.0


async def test_request_id_generated_echoed_and_logged(
    client: TestClient[web.Request, web.Application], log_stream: io.StringIO
) -> None:
    response = await client.get("/v1/items/abc", headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status == 200
    rid = response.headers[logs.REQUEST_ID_HEADER]
    assert len(rid) == 32
    lines = _lines(log_stream)
    handler_line = next(line for line in lines if line["logger"] == "vectorstore.test")
    access = [line for line in lines if line["logger"] == logs.ACCESS_LOGGER]
    assert len(access) == 1, "exactly one access line per request"
    assert handler_line["request_id"] == rid == access[0]["request_id"]
    assert access[0]["route"] == "/v1/items/{item_id}"
    assert access[0]["status"] == 200 and access[0]["method"] == "GET" and access[0]["path"] == "/v1/items/abc"
    assert access[0]["duration_ms"] >= 0
    assert SECRET not in log_stream.getvalue() and "Authorization" not in log_stream.getvalue()


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [("litellm-req-42", True), ("a" * 128, True), ("a" * 129, False), ("x y", False), ('"}{"evil', False), ("", False)],
)
async def test_incoming_request_id_kept_only_when_sane(
    client: TestClient[web.Request, web.Application], incoming: str, kept: bool
) -> None:
    response = await client.get("/v1/items/1", headers={logs.REQUEST_ID_HEADER: incoming})
    echoed = response.headers[logs.REQUEST_ID_HEADER]
    assert (echoed == incoming) is kept
    if not kept:
        assert len(echoed) == 32


async def test_errors_and_unmatched_routes_are_counted_and_carry_request_id(
    client: TestClient[web.Request, web.Application], log_stream: io.StringIO
) -> None:
    before_conflict = _count("/v1/boom", "409", "POST")
    before_unmatched = _count(metrics.UNMATCHED_ROUTE, "404")
    before_crash = _count("/v1/crash", "500")
    conflict = await client.post("/v1/boom")
    assert conflict.status == 409 and conflict.headers[logs.REQUEST_ID_HEADER]
    missing = await client.get("/no/such/thing/1234")
    assert missing.status == 404 and missing.headers[logs.REQUEST_ID_HEADER]
    crash = await client.get("/v1/crash")
    assert crash.status == 500 and crash.headers[logs.REQUEST_ID_HEADER]
    assert _count("/v1/boom", "409", "POST") == before_conflict + 1
    assert _count(metrics.UNMATCHED_ROUTE, "404") == before_unmatched + 1
    assert _count("/v1/crash", "500") == before_crash + 1
    access = [line for line in _lines(log_stream) if line["logger"] == logs.ACCESS_LOGGER]
    assert [line["status"] for line in access] == [409, 404, 500]
    assert access[1]["route"] is None
    assert access[2]["level"] == "warning"
    # aiohttp logs the unhandled exception with its traceback: the secret in it is redacted.
    text = log_stream.getvalue()
    assert SECRET not in text and logs.REDACTED in text


async def test_metrics_endpoint_exposes_every_family(client: TestClient[web.Request, web.Application]) -> None:
    metrics.observe_search(0.004)
    metrics.observe_embedding("request", 0.02)
    metrics.observe_embedding("ingest", 5.0, metrics.embedding_error_reason(exc=TimeoutError()))
    metrics.observe_ingest("completed", 1.5)
    metrics.observe_ingest("retry in 5s")
    metrics.observe_ingest("something unexpected happened")
    stats = {"pool_size": 4, "pool_available": 1, "requests_waiting": 2, "pool_max": 10}
    metrics.add_gauge_source("pool", metrics.pool_gauges(lambda: stats))
    metrics.add_gauge_source("queue", metrics.queue_gauge(lambda: {"queued": 3, "running": 1}))

    def broken() -> Iterator[Any]:
        raise OSError("database down")

    metrics.add_gauge_source("broken", broken)
    try:
        await client.get("/v1/items/9")
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    finally:
        for name in ("pool", "queue", "broken"):
            metrics.remove_gauge_source(name)
    for needle in (
        'vectorstore_http_requests_total{method="GET",route="/v1/items/{item_id}",status="200"}',
        'vectorstore_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/v1/items/{item_id}"}',
        "vectorstore_search_duration_seconds_count",
        'vectorstore_embedding_request_duration_seconds_count{purpose="request"}',
        'vectorstore_embedding_errors_total{purpose="ingest",reason="timeout"}',
        'vectorstore_ingest_files_total{outcome="completed"}',
        'vectorstore_ingest_files_total{outcome="retry"}',
        'vectorstore_ingest_files_total{outcome="other"}',
        "vectorstore_ingest_file_duration_seconds_count",
        "vectorstore_db_pool_in_use 3.0",
        "vectorstore_db_pool_waiting 2.0",
        "vectorstore_db_pool_max 10.0",
        'vectorstore_ingest_queue_depth{state="queued"} 3.0',
        "process_resident_memory_bytes",
    ):
        assert needle in text, needle
    # Ids never become labels: the path's `9` appears nowhere.
    assert "/v1/items/9" not in text


def test_embedding_error_reasons() -> None:
    assert metrics.embedding_error_reason(status=429) == "status_429"
    assert metrics.embedding_error_reason(status=503) == "status_5xx"
    assert metrics.embedding_error_reason(exc=TimeoutError()) == "timeout"
    assert metrics.embedding_error_reason(exc=ValueError("dims")) == "other"


def test_redacting_filter_covers_message_args_extras_and_bearer() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RedactingFilter([SECRET, "short"]))
    logger = logging.getLogger("vectorstore.redact-test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("key %s here", SECRET, extra={"header": f"Bearer {SECRET}", "other": "Bearer abc.def"})
        logger.warning("Authorization: bearer some-unknown-token, done")
        try:
            raise ValueError(f"dsn=postgresql://u:{SECRET}@h/db")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = _lines(stream)
    text = stream.getvalue()
    assert SECRET not in text and "some-unknown-token" not in text and "abc.def" not in text
    assert lines[0]["msg"] == f"key {logs.REDACTED} here"
    assert lines[0]["header"] == f"Bearer {logs.REDACTED}"
    assert lines[1]["msg"] == f"Authorization: bearer {logs.REDACTED}, done"
    assert "ValueError" in lines[2]["exc"] and logs.REDACTED in lines[2]["exc"]
    # Values shorter than 6 characters are not secrets worth redacting ordinary words for.
    assert logs.RedactingFilter(["short"]).secrets == set()


def test_a_url_password_is_redacted_whatever_the_url() -> None:
    """validate refuses user:password@ in the spec's URLs; one that arrives another way (an environment
    variable, a library quoting the URL it was given) loses its password in every log field and error body,
    whoever the server knows as secret. Scheme and user stay, so the line still says which URL it was."""
    redactor = logs.Redactor()
    cases = {
        "upstream https://litellm:sk-9f3e2a@litellm.example:4000/v1/embeddings failed": (
            f"upstream https://litellm:{logs.REDACTED}@litellm.example:4000/v1/embeddings failed"
        ),
        "url=URL('http://u:p4ss@127.0.0.1:9/v1')": f"url=URL('http://u:{logs.REDACTED}@127.0.0.1:9/v1')",
        "DATABASE_URL=postgresql://app:pw-83d1@db:5432/app": f"DATABASE_URL=postgresql://app:{logs.REDACTED}@db:5432/app",
        "s3://AKIA:wJalr@bucket/x and git://h/x": f"s3://AKIA:{logs.REDACTED}@bucket/x and git://h/x",
    }
    for text, expected in cases.items():
        assert redactor.redact(text) == expected
    # A user without a password, an address in a path, and scp-style git: nothing to hide, left as they are.
    for text in ("ssh://git@github.com/a/b", "see http://host/@models", "git@github.com:a/b.git", "a@b.c"):
        assert redactor.redact(text) == text
    assert redactor.redact_value({"url": ["https://u:pw-x@h"]}) == {"url": [f"https://u:{logs.REDACTED}@h"]}


def test_redaction_covers_every_field_whatever_its_source() -> None:
    """The request id comes from the client (a key sent as `x-request-id` once reached warning lines) and extra
    fields may be any type: every field of the finished line is redacted, by the filter and by the formatter."""
    for handler_setup in ("filter", "formatter"):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        if handler_setup == "filter":
            handler.setFormatter(logs.JsonFormatter())
            handler.addFilter(logs.RedactingFilter([SECRET]))
        else:
            handler.setFormatter(logs.JsonFormatter(logs.Redactor([SECRET])))
        logger = logging.getLogger(f"vectorstore.redact-{handler_setup}")
        logger.addHandler(handler)
        logger.propagate = False
        token = logs.request_id_var.set(SECRET)
        try:
            logger.warning("upstream failed", extra={"nested": {"k": [SECRET, 1]}, SECRET[:8]: (SECRET,)})
        finally:
            logs.request_id_var.reset(token)
            logger.removeHandler(handler)
        text = stream.getvalue()
        assert SECRET not in text, (handler_setup, text)
        line = _lines(stream)[0]
        assert line["request_id"] == logs.REDACTED and line["nested"] == {"k": [logs.REDACTED, 1]}, line


def test_a_secret_is_never_taken_as_the_request_id(log_stream: io.StringIO) -> None:
    assert logs.accept_request_id("litellm-abc123") == "litellm-abc123"
    assert logs.accept_request_id(SECRET) != SECRET


async def test_openapi_route_serves_the_committed_document(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get(observability.OPENAPI_PATH)
    assert response.status == 200
    served = await response.json()
    assert served == observability.openapi_document()
    assert served["openapi"].startswith("3.1")


class _Failure(Exception):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class _UpstreamFailure(_Failure):
    """Like the client's UpstreamError: its own `status` is 502, the upstream's is separate."""

    def __init__(self, message: str, upstream_status: int | None) -> None:
        super().__init__(message, 502)
        self.upstream_status = upstream_status


def _errors(purpose: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "vectorstore_embedding_errors_total", {"purpose": purpose, "reason": reason}
    )
    return value or 0.0


async def test_timed_decorators_record_latency_and_classify_failures() -> None:
    @metrics.timed_embedding
    async def attempt(error: Exception | None) -> int:
        if error is not None:
            raise error
        return 1

    @metrics.timed_search
    async def search() -> str:
        return "hits"

    def count(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0

    searches = count("vectorstore_search_duration_seconds_count")
    assert await search() == "hits"
    assert count("vectorstore_search_duration_seconds_count") == searches + 1

    calls = count("vectorstore_embedding_request_duration_seconds_count", {"purpose": "ingest"})
    before = {
        reason: _errors("ingest", reason) for reason in ("status_429", "status_5xx", "timeout", "connect", "bad_answer")
    }
    assert await attempt(None) == 1
    for error in (
        _Failure("status 429", 429),
        _Failure("status 503", 503),
        _Failure("timed out", None),
        _Failure("unreachable (ClientConnectorError)", None),
        _UpstreamFailure("returned 11 dimensions; the store expects 8", 200),
    ):
        with pytest.raises(_Failure):
            await attempt(error)
    after = {reason: _errors("ingest", reason) for reason in before}
    assert all(after[reason] == before[reason] + 1 for reason in before), (before, after)
    assert count("vectorstore_embedding_request_duration_seconds_count", {"purpose": "ingest"}) == calls + 6
    # Inside a request (a request id is set) the purpose is `request`.
    token = logs.request_id_var.set("rid")
    try:
        await attempt(None)
    finally:
        logs.request_id_var.reset(token)
    assert count("vectorstore_embedding_request_duration_seconds_count", {"purpose": "request"}) >= 1
