"""The route table and openapi.json agree, and every non-public route answers 401 with the envelope, no key."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest

from config.names import HEALTH_PATH, METRICS_PATH, READY_PATH
from config.spec import load_spec
from robustness.harness import KEYS, ServerProcess, write_spec
from vectorstore.api.observability import OPENAPI_PATH, openapi_document
from vectorstore.app import API_PREFIX, create_app
from vectorstore.settings import Settings

PUBLIC = {HEALTH_PATH, READY_PATH, METRICS_PATH}
ROOT_ONLY = PUBLIC | {OPENAPI_PATH}
METHODS = ("get", "post", "put", "patch", "delete")


def _route_table(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, template) of every route the real app factory registers; HEAD is aiohttp's automatic twin of GET."""
    spec = load_spec(write_spec(tmp_path / "spec.yaml", "http://127.0.0.1:9"))
    app = create_app(spec, settings=Settings(dsn="", api_keys=dict(KEYS)))
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def _documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in METHODS
        if method in item
    }


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    routes = _route_table(tmp_path)
    documented = _documented()
    # The document lists /v1 routes once; the server also serves each without the prefix (REFERENCE §2).
    expected = set(documented)
    for method, path in documented:
        if path.startswith(API_PREFIX + "/"):
            expected.add((method, path[len(API_PREFIX) :]))
    assert sorted(routes - expected) == [], "routes missing from vectorstore/api/openapi.json"
    assert sorted(expected - routes) == [], "documented routes the server does not have"
    assert "without the `/v1` prefix" in openapi_document()["info"]["description"]


def test_document_is_valid_openapi_31_with_security_where_needed() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    # Every $ref resolves.
    text = (Path(__file__).parents[2] / "vectorstore" / "api" / "openapi.json").read_text()
    refs = set(re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', text))
    for section, name in refs:
        assert name in document["components"][section], f"dangling $ref {section}/{name}"
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for path, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            operation = item[method]
            public = path in PUBLIC
            assert (operation.get("security") == []) is public, f"{method} {path}: security"
            if not public:
                assert "401" in operation["responses"], f"{method} {path} must document 401"
            assert all(re.fullmatch(r"[1-5][0-9][0-9]", code) for code in operation["responses"])


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    return _route_table(tmp_path_factory.mktemp("routes"))


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x-does-not-exist", template)


async def test_every_route_but_public_ones_needs_a_key(
    shared_server: ServerProcess, routes: set[tuple[str, str]]
) -> None:
    error_schema = openapi_document()["components"]["schemas"]["Error"]
    checked = 0
    for key_header in (None, "Bearer wrong-key-0000000000", "Basic dXNlcjpwYXNz", "Bearer ", KEYS["writer"]):
        headers = {"Authorization": key_header} if key_header is not None else {}
        async with shared_server.session(key=None) as http:
            for method, template in sorted(routes):
                response = await http.request(method, _concrete(template), headers=headers, json={})
                if template in PUBLIC:
                    assert response.status == 200, (method, template, response.status)
                    continue
                body = await response.json()
                assert response.status == 401, (method, template, key_header, response.status, body)
                jsonschema.validate(body, error_schema)
                assert body["error"]["code"] == "invalid_api_key"
                assert "x-request-id" in response.headers
                checked += 1
    assert checked >= 4 * (len(routes) - len(PUBLIC))


async def test_unknown_route_and_wrong_method_use_the_envelope(shared_server: ServerProcess) -> None:
    error_schema = openapi_document()["components"]["schemas"]["Error"]
    async with shared_server.session() as http:
        for method, path, status in (
            ("GET", "/v1/nope", 404),
            ("GET", "/../../etc/passwd", 404),
            ("PUT", "/v1/vector_stores", 405),
            ("PATCH", "/v1/files", 405),
        ):
            response = await http.request(method, path)
            assert response.status == status, (method, path)
            jsonschema.validate(await response.json(), error_schema)
