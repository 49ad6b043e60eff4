"""Walk the app's route table: every API route answers OpenAI's error envelope without a key (401) and on
malformed input (400, or 404 for an id that does not exist), under /v1 and bare."""

from __future__ import annotations

import re

import aiohttp
from aiohttp import web

from server.conftest import DOCS_ID, RunningServer, auth
from server.test_auth_errors import assert_envelope

# Public probes, and the OpenAPI document (served bare only, and keyed: tests/robustness/test_contract.py).
PUBLIC = {"/health", "/ready", "/metrics"}
DOCUMENTS = {"/openapi.json"}


def api_routes(app: web.Application) -> list[tuple[str, str]]:
    routes: list[tuple[str, str]] = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method in ("HEAD", "OPTIONS", "*") or path in PUBLIC:
            continue
        routes.append((route.method, path))
    return sorted(set(routes))


def fill(path: str, method: str) -> str:
    """Put a real store id where a store goes (unknown for DELETE: it is declared) and unknown ids elsewhere."""
    if method != "DELETE":
        path = path.replace("{vector_store_id}", DOCS_ID)
    return re.sub(r"\{[^}]+\}", "missing_id_0", path)


async def test_every_route_answers_the_error_envelope(server: RunningServer, http: aiohttp.ClientSession) -> None:
    routes = api_routes(server.app)
    paths = {path for _, path in routes}
    # Served under /v1 and bare, each of them.
    for _, path in routes:
        if path in DOCUMENTS:
            continue
        other = path.removeprefix("/v1") if path.startswith("/v1/") else "/v1" + path
        assert other in paths, f"{path} has no twin {other}"
    assert ("POST", "/v1/vector_stores/{vector_store_id}/search") in routes
    checked = 0
    for method, path in routes:
        url = server.url(fill(path, method))
        async with http.request(method, url) as response:
            assert response.status == 401, (method, path, response.status)
            assert_envelope(await response.json(), 401)
        headers = {**auth(), "Content-Type": "application/json"}
        body = b"{malformed" if method in ("POST", "PUT", "PATCH") else None
        async with http.request(method, url, headers=headers, data=body) as response:
            payload = await response.json(content_type=None)
            if method in ("POST", "PUT", "PATCH"):
                assert response.status in (400, 404, 415), (method, path, response.status, payload)
            else:
                assert 200 <= response.status < 300 or response.status in (400, 404), (method, path, payload)
            if response.status >= 400:
                error = assert_envelope(payload, response.status)
                if response.status == 400:
                    assert error["param"], (method, path, error)
        checked += 1
    assert checked >= 12
