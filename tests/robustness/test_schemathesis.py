"""Schemathesis holds the running server (real PostgreSQL, fake upstream over HTTP) to vectorstore/api/openapi.json.

Every operation gets generated requests, valid and invalid, with a write key and with no key. Each answer
must be: no 5xx, a documented status code, a body that matches the documented schema and content type.

Path parameters are narrowed, in this test's copy of the document only, to ids of objects the fixture made
plus one that does not exist: random strings would only ever reach 404, and the point is to send hostile
bodies and queries to real stores, files and batches.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from robustness.harness import KEYS, ServerProcess, declared_store_ids
from vectorstore.api.observability import openapi_document

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]
# Per operation (27 of them): valid and invalid requests with a key, a few without; about a minute on 2 cores.
POSITIVE_EXAMPLES = 30
NEGATIVE_EXAMPLES = 20
ANONYMOUS_EXAMPLES = 4
MISSING = "does-not-exist-0000"


async def _objects(server: ServerProcess) -> dict[str, list[str]]:
    """A store of our own, a File, an attached file and a batch: ids the generated requests can reach."""
    alpha = declared_store_ids(server.spec)["alpha"]
    async with server.session() as http:
        response = await http.post("/v1/vector_stores", json={"name": "fuzz-target", "metadata": {"k": "v"}})
        assert response.status == 200, await response.text()
        own = (await response.json())["id"]
        form = aiohttp.FormData()
        form.add_field("purpose", "assistants")
        form.add_field("file", b"Schemathesis fuzzes this file.\n\nSecond paragraph.", filename="fuzz.txt")
        response = await http.post("/v1/files", data=form)
        assert response.status == 200, await response.text()
        file_id = (await response.json())["id"]
        response = await http.post(
            f"/v1/vector_stores/{alpha}/files", json={"file_id": file_id, "attributes": {"n": 1}}
        )
        assert response.status == 200, await response.text()
        response = await http.post(f"/v1/vector_stores/{own}/file_batches", json={"file_ids": [file_id]})
        assert response.status == 200, await response.text()
        batch_id = (await response.json())["id"]
    return {
        "vector_store_id": [alpha, own, MISSING],
        "file_id": [file_id, MISSING],
        "batch_id": [batch_id, MISSING],
    }


def _narrowed(ids: dict[str, list[str]]) -> dict[str, Any]:
    document = copy.deepcopy(openapi_document())
    for item in document["paths"].values():
        for parameter in item.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] in ids:
                parameter["schema"] = {"type": "string", "enum": ids[parameter["name"]]}
    return document


@pytest.fixture(scope="module")
def api_schema(shared_server: ServerProcess) -> Iterator[schemathesis.BaseSchema]:
    import asyncio

    ids = asyncio.run(_objects(shared_server))
    schema = schemathesis.openapi.from_dict(_narrowed(ids))
    yield schema


_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "phases": [Phase.explicit, Phase.generate],
    "suppress_health_check": list(HealthCheck),
}


def _explain(response: Any) -> str:
    try:
        return json.dumps(response.json())[:500]
    except ValueError:
        return str(response.text)[:500]


# schemathesis' own pytest integration (`from_fixture`) breaks on pytest 9 (it sets `node._nodeid`), so each
# operation is a plain parametrized test that runs a hypothesis loop over schemathesis' strategy for it.
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in openapi_document()["paths"].items()
    for method in ("get", "post", "delete")
    if method in item
)
PUBLIC = {"/health", "/ready", "/metrics"}


def _run(operation: Any, mode: schemathesis.GenerationMode, examples: int, check: Callable[[Any], None]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, **_SETTINGS)
    def run(case: Any) -> None:
        check(case)

    run()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_with_a_write_key(
    method: str, path: str, api_schema: schemathesis.BaseSchema, shared_server: ServerProcess
) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {KEYS['writer']}"}

    def check(case: Any) -> None:
        case.call_and_validate(base_url=shared_server.base_url, headers=headers, checks=CHECKS)

    # Invalid requests need something to be invalid: operations without parameters or body get none.
    item = openapi_document()["paths"][path]
    takes_input = "parameters" in item or bool({"parameters", "requestBody"} & set(item[method.lower()]))
    modes = [(schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES)]
    if takes_input:
        modes.append((schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES))
    for mode, examples in modes:
        _run(operation, mode, examples, check)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_without_a_key(
    method: str, path: str, api_schema: schemathesis.BaseSchema, shared_server: ServerProcess
) -> None:
    operation = api_schema[path][method]

    def check(case: Any) -> None:
        if case.headers:
            case.headers.pop("Authorization", None)
        response = case.call(base_url=shared_server.base_url)
        assert response.status_code == (200 if path in PUBLIC else 401), _explain(response)
        case.validate_response(response, checks=CHECKS)

    _run(operation, schemathesis.GenerationMode.POSITIVE, ANONYMOUS_EXAMPLES, check)
