"""OGX (ex-Llama Stack) clients work unchanged: the OpenAI SDK sending what OGX's client and docs send.

`embedding_model`, `embedding_dimension` and `provider_id` on create, attach and batches; OGX's rankers on
search; its chunk API (`/v1/vector-io/insert` and `/query`); file contents with embeddings and metadata.
OGX's own client (`llama-stack-client`) runs against a real server in `test_llama_stack_client`, in a
subprocess (tests/server/ogx_client_script.py) with a Python >= 3.12 that has it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from fakeembed import FakeEmbedder, fake_vector
from openai import AsyncOpenAI

from config.names import derived_store_id
from server.conftest import (
    DIMS,
    DOCS_ID,
    READ_KEY,
    WRITE_KEY,
    RunningServer,
    auth,
    spec_data,
    start_server,
    write_spec,
)

WIDE_MODEL = "wide-model"
WIDE_DIMS = 12
WIDE_ID = derived_store_id("wide")


@pytest.fixture
async def ogx_server(fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path) -> AsyncIterator[RunningServer]:
    fake_embedder.model_dimensions[WIDE_MODEL] = WIDE_DIMS
    data = spec_data(
        fake_embedder.base_url,
        stores=[
            {"name": "docs", "id": DOCS_ID},
            {"name": "wide", "embedding": {"model": WIDE_MODEL, "dimensions": WIDE_DIMS}},
        ],
    )
    running = await start_server(write_spec(tmp_path / "stack.yaml", data), fresh_dsn)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def oai(ogx_server: RunningServer) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=ogx_server.url("/v1"), api_key=WRITE_KEY, max_retries=0, timeout=30)
    try:
        yield client
    finally:
        await client.close()


def _error(exc: pytest.ExceptionInfo[openai.BadRequestError]) -> dict[str, Any]:
    body = exc.value.body
    assert isinstance(body, dict)
    return body


# --- embedding_model, embedding_dimension, provider_id -----------------------------------------------------


async def test_create_accepts_what_the_store_would_get(oai: AsyncOpenAI) -> None:
    for provider in ("pgvector", "remote::pgvector"):
        store = await oai.vector_stores.create(
            name=f"ogx-{provider}",
            extra_body={"embedding_model": "fake-model", "embedding_dimension": DIMS, "provider_id": provider},
        )
        assert store.object == "vector_store" and store.status == "completed"
    # The whole cycle OGX's docs walk through: list, retrieve, modify, delete.
    assert store.id in [s.id async for s in oai.vector_stores.list()]
    assert (await oai.vector_stores.retrieve(store.id)).name == "ogx-remote::pgvector"
    assert (await oai.vector_stores.update(store.id, name="renamed")).name == "renamed"
    assert (await oai.vector_stores.delete(store.id)).deleted


async def test_create_honours_another_servable_model(
    oai: AsyncOpenAI, ogx_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    store = await oai.vector_stores.create(name="wide-too", extra_body={"embedding_model": WIDE_MODEL})
    # The store embeds with the model named: rows of its dimensions go in, the fake model's 8 would not.
    url = ogx_server.url(f"/v1/vector_stores/{store.id}/embeddings")
    async with http.post(url, headers=auth(), json={"content": "a", "embedding": [0.1] * WIDE_DIMS}) as response:
        assert response.status == 200, await response.text()
    async with http.post(url, headers=auth(), json={"content": "b", "embedding": [0.1] * DIMS}) as response:
        assert response.status == 400 and "expects 12" in (await response.json())["error"]["message"]
    # Searching embeds the query with the store's model (the fake upstream answers 12 dimensions for it).
    page = await oai.vector_stores.search(store.id, query="a", extra_body={"search_mode": "vector"})
    assert [hit.content[0].text for hit in page.data] == ["a"]


# One server for all the cases of a table: each case is one request.
CREATE_REFUSALS: list[tuple[dict[str, Any], str, list[str]]] = [
    ({"embedding_model": "all-MiniLM-L6-v2"}, "embedding_model", ["'fake-model' (8 dimensions)", WIDE_MODEL]),
    ({"embedding_model": "fake-model", "embedding_dimension": 384}, "embedding_dimension", ["384", "8 dim"]),
    ({"embedding_dimension": 12}, "embedding_dimension", ["12", "'fake-model' (8 dimensions)"]),
    ({"provider_id": "faiss"}, "provider_id", ["'pgvector'", "'remote::pgvector'"]),
    ({"provider_id": 7}, "provider_id", ["string"]),
    ({"embedding_dimension": "8"}, "embedding_dimension", ["integer"]),
    ({"embedding_dimension": 0}, "embedding_dimension", ["between 1"]),
    ({"embedding_model": ["fake-model"]}, "embedding_model", ["string"]),
]


async def test_create_refuses_what_it_cant_serve(oai: AsyncOpenAI) -> None:
    before = [s.id async for s in oai.vector_stores.list()]
    for extra, param, words in CREATE_REFUSALS:
        with pytest.raises(openai.BadRequestError) as exc:
            await oai.vector_stores.create(name="refused", extra_body=extra)
        error = _error(exc)
        assert error["param"] == param, (extra, error)
        for word in words:
            assert word in error["message"], (word, error["message"])
    assert [s.id async for s in oai.vector_stores.list()] == before  # nothing half-created


async def test_attach_and_batches_name_the_stores_own_model(oai: AsyncOpenAI) -> None:
    uploaded = await oai.files.create(file=("n.txt", b"notes about pgvector", "text/plain"), purpose="assistants")
    attached = await oai.vector_stores.files.create(
        vector_store_id=WIDE_ID,
        file_id=uploaded.id,
        extra_body={"embedding_model": WIDE_MODEL, "embedding_dimension": WIDE_DIMS, "provider_id": "pgvector"},
    )
    assert attached.status in ("in_progress", "completed")
    batch = await oai.vector_stores.file_batches.create(
        vector_store_id=DOCS_ID, file_ids=[uploaded.id], extra_body={"embedding_model": "fake-model"}
    )
    assert batch.file_counts.total == 1
    # The spec's own model is not the declared store's: the declared one counts.
    with pytest.raises(openai.BadRequestError) as exc:
        await oai.vector_stores.files.create(
            vector_store_id=WIDE_ID, file_id=uploaded.id, extra_body={"embedding_model": "fake-model"}
        )
    error = _error(exc)
    assert error["param"] == "embedding_model" and f"embeds with '{WIDE_MODEL}'" in error["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        await oai.vector_stores.file_batches.create(
            vector_store_id=DOCS_ID, file_ids=[uploaded.id], extra_body={"embedding_dimension": WIDE_DIMS}
        )
    assert _error(exc)["param"] == "embedding_dimension"
    with pytest.raises(openai.BadRequestError) as exc:
        await oai.vector_stores.file_batches.create(
            vector_store_id=DOCS_ID, file_ids=[uploaded.id], extra_body={"embedding_model": "nomic-embed-text"}
        )
    assert "nor one this server can serve" in _error(exc)["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        await oai.vector_stores.files.create(
            vector_store_id=DOCS_ID, file_id=uploaded.id, extra_body={"provider_id": "milvus"}
        )
    assert _error(exc)["param"] == "provider_id"
    # The refused batches attached nothing: the store holds the one file of the accepted batch.
    assert [f.id async for f in oai.vector_stores.files.list(vector_store_id=DOCS_ID)] == [uploaded.id]


# --- OGX's rankers on search ---------------------------------------------------------------------------------

TEXTS = [
    "apple banana smoothie",
    "apple pie recipe",
    "banana bread",
    "cherry tart",
    "apple apple apple orchard",
    "elderberry wine",
    "banana split with apple",
]
QUERY = "apple banana"


@pytest.fixture
async def ranked_store(oai: AsyncOpenAI, ogx_server: RunningServer, http: aiohttp.ClientSession) -> str:
    store = await oai.vector_stores.create(name="ranked")
    url = ogx_server.url(f"/v1/vector_stores/{store.id}/embeddings/batch")
    rows = [{"content": text} for text in TEXTS]
    async with http.post(url, headers=auth(), json={"embeddings": rows}) as response:
        assert response.status == 200, await response.text()
    return store.id


async def _search(oai: AsyncOpenAI, store_id: str, **extra: Any) -> list[tuple[str, float]]:
    page = await oai.vector_stores.search(store_id, query=QUERY, max_num_results=20, extra_body=extra)
    return [(hit.content[0].text, hit.score) for hit in page.data]


def _rrf(legs: list[tuple[list[str], float]], k: float) -> dict[str, float]:
    """Weighted RRF over the legs' rankings, normalised by its largest possible value: what docs/search.md says."""
    top = sum(weight for _, weight in legs) / (k + 1)
    scores: dict[str, float] = {}
    for ranking, weight in legs:
        for rank, text in enumerate(ranking, start=1):
            scores[text] = scores.get(text, 0.0) + weight / (k + rank) / top
    return scores


async def test_ogx_rankers(oai: AsyncOpenAI, ranked_store: str) -> None:
    vector = [text for text, _ in await _search(oai, ranked_store, search_mode="vector")]
    keyword = [text for text, _ in await _search(oai, ranked_store, search_mode="keyword")]
    assert keyword and len(keyword) < len(TEXTS)  # the two legs differ: fusion has something to do

    # rrf: impact_factor is RRF's k, in both shapes OGX sends.
    for k in (1.0, 60.0, 500.0):
        for options in ({"ranker": "rrf", "impact_factor": k}, {"ranker": {"type": "rrf", "impact_factor": k}}):
            hits = await _search(oai, ranked_store, ranking_options=options)
            expected = _rrf([(vector, 1.0), (keyword, 1.0)], k)
            assert {text for text, _ in hits} == set(expected)
            for text, score in hits:
                assert score == pytest.approx(expected[text], abs=1e-6), (options, text)
            assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)

    # weighted: alpha is the vector side's share, as in OGX (1 vector only, 0 keyword only).
    for shape in ("string", "object"):

        def weighted(alpha: float, shape: str = shape) -> dict[str, Any]:
            if shape == "string":
                return {"ranker": "weighted", "alpha": alpha}
            return {"ranker": {"type": "weighted", "alpha": alpha}}

        only_vector = [text for text, _ in await _search(oai, ranked_store, ranking_options=weighted(1.0))]
        assert only_vector == vector, shape
        only_keyword = [text for text, _ in await _search(oai, ranked_store, ranking_options=weighted(0.0))]
        assert only_keyword[: len(keyword)] == keyword, shape
        hits = await _search(oai, ranked_store, ranking_options=weighted(0.7))
        expected = _rrf([(vector, 0.7), (keyword, 0.3)], 60.0)
        for text, score in hits:
            assert score == pytest.approx(expected[text], abs=1e-6), (shape, text)

    # weighted with OGX's `weights`.
    hits = await _search(
        oai, ranked_store, ranking_options={"ranker": "weighted", "weights": {"vector": 2.0, "keyword": 1.0}}
    )
    expected = _rrf([(vector, 2.0), (keyword, 1.0)], 60.0)
    assert all(score == pytest.approx(expected[text], abs=1e-6) for text, score in hits)
    # An explicit search_mode wins: the ranker only says how hybrid search fuses.
    keyword_again = await _search(oai, ranked_store, search_mode="keyword", ranking_options={"ranker": "rrf"})
    assert [text for text, _ in keyword_again] == keyword


RANKER_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"ranker": "weighted", "alpha": 1.5}, "ranking_options.alpha"),
    ({"ranker": "weighted", "alpha": -0.1}, "ranking_options.alpha"),
    ({"ranker": "weighted", "alpha": "half"}, "ranking_options.alpha"),
    ({"ranker": {"type": "weighted", "alpha": 2}}, "ranking_options.ranker.alpha"),
    ({"ranker": "rrf", "impact_factor": 0}, "ranking_options.impact_factor"),
    ({"ranker": "rrf", "impact_factor": -5}, "ranking_options.impact_factor"),
    ({"ranker": "rrf", "impact_factor": 1e300}, "ranking_options.impact_factor"),
    ({"ranker": {"type": "rrf", "impact_factor": 0}}, "ranking_options.ranker.impact_factor"),
    ({"ranker": {"type": "rrf", "alpha": 0.5}}, "ranking_options.ranker.alpha"),
    ({"ranker": {"type": "bm25"}}, "ranking_options.ranker.type"),
    ({"ranker": {"impact_factor": 5}}, "ranking_options.ranker.type"),
    ({"ranker": {"type": "rrf"}, "alpha": 0.5}, "ranking_options.alpha"),
    ({"ranker": "rrf", "alpha": 0.5}, "ranking_options.alpha"),
    ({"ranker": "weighted", "impact_factor": 5}, "ranking_options.impact_factor"),
    ({"ranker": "auto", "alpha": 0.5}, "ranking_options.alpha"),
    ({"ranker": "weighted", "alpha": 0.5, "weights": {"vector": 1}}, "ranking_options.weights"),
    ({"ranker": "weighted", "weights": {"neural": 1}}, "ranking_options.weights.neural"),
    ({"ranker": "weighted", "weights": {"sparse": 1}}, "ranking_options.weights.sparse"),
    ({"ranker": "weighted", "weights": {"vector": 0, "keyword": 0}}, "ranking_options.weights"),
    ({"ranker": "rrf", "hybrid_search": {"text_weight": 1}}, "ranking_options.hybrid_search"),
    ({"ranker": "neural"}, "ranking_options.ranker"),
    ({"model": "rerank-v3.5"}, "ranking_options.model"),
    ({"ranker": "normalized"}, "ranking_options.ranker"),
]


async def test_ranker_out_of_range_is_a_400_naming_the_field(oai: AsyncOpenAI, ranked_store: str) -> None:
    for options, param in RANKER_REFUSALS:
        with pytest.raises(openai.BadRequestError) as exc:
            await _search(oai, ranked_store, ranking_options=options)
        assert _error(exc)["param"] == param, (options, _error(exc))


# --- OGX's chunk API -------------------------------------------------------------------------------------------


async def _post(
    http: aiohttp.ClientSession, server: RunningServer, path: str, body: dict[str, Any], key: str = WRITE_KEY
) -> tuple[int, dict[str, Any]]:
    async with http.post(server.url(path), headers=auth(key), json=body) as response:
        return response.status, await response.json()


CHUNKS: list[dict[str, Any]] = [
    # Precomputed elsewhere, in the shape llama-stack-client's `Chunk` has.
    {
        "chunk_id": "c-precomputed",
        "content": "pgvector stores embeddings in PostgreSQL",
        "metadata": {"document_id": "doc-1", "source": "notes.md"},
        "embedding": fake_vector("pgvector stores embeddings in PostgreSQL", DIMS),
        "embedding_model": "fake-model",
        "embedding_dimension": DIMS,
        "chunk_metadata": {"chunk_id": "c-precomputed", "document_id": "doc-1"},
    },
    # Embedded by the store's model: a text item, and a list of them.
    {"content": {"type": "text", "text": "reciprocal rank fusion merges rankings"}, "metadata": {"chunk_id": "c-item"}},
    {"chunk_id": "c-list", "content": [{"type": "text", "text": "keyword search"}, "with BM25"], "metadata": {}},
]


async def test_insert_then_every_search_route_finds_the_chunks(
    oai: AsyncOpenAI, ogx_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    store = await oai.vector_stores.create(name="chunks")
    status, body = await _post(
        http, ogx_server, "/v1/vector-io/insert", {"vector_store_id": store.id, "chunks": CHUNKS}
    )
    assert status == 200, body
    assert body["chunk_ids"] == ["c-precomputed", "c-item", "c-list"]

    status, body = await _post(
        http,
        ogx_server,
        "/v1/vector-io/query",
        {"vector_db_id": store.id, "query": "pgvector stores embeddings in PostgreSQL", "params": {"mode": "vector"}},
        key=READ_KEY,
    )
    assert status == 200, body
    assert len(body["chunks"]) == len(body["scores"]) == 3
    first = body["chunks"][0]
    assert first["chunk_id"] == "c-precomputed" and body["scores"][0] == pytest.approx(1.0, abs=1e-5)
    assert first["content"] == "pgvector stores embeddings in PostgreSQL"
    assert first["metadata"] == {"document_id": "doc-1", "source": "notes.md"}
    assert first["embedding"] == pytest.approx(CHUNKS[0]["embedding"], abs=1e-6)
    assert (first["embedding_model"], first["embedding_dimension"]) == ("fake-model", DIMS)
    assert first["chunk_metadata"]["document_id"] == "doc-1" and first["chunk_metadata"]["source"] == "notes.md"
    by_id = {chunk["chunk_id"]: chunk for chunk in body["chunks"]}
    assert by_id["c-item"]["content"] == "reciprocal rank fusion merges rankings"
    assert by_id["c-item"]["embedding"] == pytest.approx(fake_vector("reciprocal rank fusion merges rankings", DIMS))
    assert by_id["c-list"]["content"] == "keyword search with BM25"

    # OpenAI's search sees them in every mode, as it sees the prototype's /embeddings rows.
    for mode in ("vector", "keyword", "hybrid"):
        page = await oai.vector_stores.search(store.id, query="rank fusion", extra_body={"search_mode": mode})
        assert "reciprocal rank fusion merges rankings" in [hit.content[0].text for hit in page.data], mode
    # And the chunk API in every mode and with each ranker.
    for params in (
        {"mode": "keyword", "max_chunks": 1},
        {"mode": "hybrid", "ranker": {"strategy": "rrf", "params": {"k": 10}}},
        {"mode": "hybrid", "ranker": {"strategy": "weighted", "params": {"weights": [0.2, 0.8]}}},
        {"ranker": {"strategy": "weighted"}, "score_threshold": 0.0},
    ):
        status, body = await _post(
            http, ogx_server, "/v1/vector-io/query", {"vector_store_id": store.id, "query": "BM25", "params": params}
        )
        assert status == 200 and body["chunks"][0]["chunk_id"] == "c-list", (params, body)
        max_chunks = params.get("max_chunks", 10)
        assert isinstance(max_chunks, int) and len(body["chunks"]) <= max_chunks

    # Inserting a chunk id again replaces that chunk.
    replaced = {"chunk_id": "c-list", "content": "keyword search with BM25, replaced", "metadata": {"v": 2}}
    status, _ = await _post(
        http, ogx_server, "/v1/vector-io/insert", {"vector_store_id": store.id, "chunks": [replaced]}
    )
    assert status == 200
    status, body = await _post(
        http,
        ogx_server,
        "/v1/vector-io/query",
        {"vector_store_id": store.id, "query": "BM25", "params": {"max_chunks": 10}},
    )
    texts = [chunk["content"] for chunk in body["chunks"]]
    assert texts.count("keyword search with BM25, replaced") == 1 and "keyword search with BM25" not in texts
    assert len(texts) == 3


INSERT_REFUSALS: list[tuple[dict[str, Any], int, str]] = [
    ({"chunks": [{"content": "x", "embedding": [0.1] * (DIMS + 1)}]}, 400, "chunks[0].embedding"),
    (
        {"chunks": [{"content": "ok"}, {"content": "x", "embedding": [0.1, "a"]}]},
        400,
        "chunks[1].embedding",
    ),
    ({"chunks": [{"content": "x", "embedding_model": "all-MiniLM-L6-v2"}]}, 400, "chunks[0].embedding_model"),
    ({"chunks": [{"content": "x", "embedding_dimension": 384}]}, 400, "chunks[0].embedding_dimension"),
    ({"chunks": [{"content": {"type": "image", "image": {"url": {"uri": "http://x"}}}}]}, 400, "chunks[0].content"),
    ({"chunks": [{"content": ""}]}, 400, "chunks[0].content"),
    ({"chunks": [{"metadata": {}}]}, 400, "chunks[0].content"),
    ({"chunks": [{"content": "x", "metadata": {"tags": ["a"]}}]}, 400, "chunks[0].metadata.tags"),
    ({"chunks": [{"content": "x", "colour": "red"}]}, 400, "chunks[0].colour"),
    ({"chunks": [{"content": "a", "chunk_id": "d"}, {"content": "b", "chunk_id": "d"}]}, 400, "chunks"),
    ({"chunks": []}, 400, "chunks"),
    ({"chunks": [{"content": "x"}], "ttl_seconds": 60}, 400, "ttl_seconds"),
]


async def test_insert_refusals_write_nothing(
    oai: AsyncOpenAI, ogx_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    store = await oai.vector_stores.create(name="refusals")
    for body, status, param in INSERT_REFUSALS:
        got, answer = await _post(http, ogx_server, "/v1/vector-io/insert", {"vector_store_id": store.id, **body})
        assert (got, answer["error"]["param"]) == (status, param), (body, answer)
    # Not one chunk of any refused insert went in (the valid first chunk of a refused batch included).
    page = await oai.vector_stores.search(store.id, query="ok x a b", extra_body={"search_mode": "vector"})
    assert page.data == []


async def test_chunk_api_store_ids_keys_and_params(
    oai: AsyncOpenAI, ogx_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    chunk = {"content": "hello"}
    status, body = await _post(
        http, ogx_server, "/v1/vector-io/insert", {"vector_store_id": "vs_nope", "chunks": [chunk]}
    )
    assert status == 404 and body["error"]["param"] == "vector_store_id"  # OpenAI's 404, where OGX says 400
    status, body = await _post(http, ogx_server, "/v1/vector-io/insert", {"chunks": [chunk]})
    assert status == 400 and body["error"]["param"] == "vector_store_id"
    status, body = await _post(
        http, ogx_server, "/v1/vector-io/insert", {"vector_store_id": DOCS_ID, "chunks": [chunk]}, key=READ_KEY
    )
    assert status == 403
    status, body = await _post(
        http,
        ogx_server,
        "/v1/vector-io/insert",
        {"vector_store_id": DOCS_ID, "vector_db_id": WIDE_ID, "chunks": [chunk]},
    )
    assert status == 400 and body["error"]["param"] == "vector_db_id"
    # A declared store with its own model embeds with it: 12 dimensions go in, 8 do not.
    status, body = await _post(
        http,
        ogx_server,
        "/v1/vector-io/insert",
        {"vector_store_id": WIDE_ID, "chunks": [{"content": "wide", "embedding": [0.5] * WIDE_DIMS}, chunk]},
    )
    assert status == 200, body
    status, body = await _post(http, ogx_server, "/v1/vector-io/query", {"vector_store_id": WIDE_ID, "query": "hello"})
    assert status == 200 and {len(c["embedding"]) for c in body["chunks"]} == {WIDE_DIMS}
    for params, param in (
        ({"mode": "fuzzy"}, "params.mode"),
        ({"max_chunks": 0}, "params.max_chunks"),
        ({"score_threshold": 2}, "params.score_threshold"),
        ({"ranker": {"strategy": "normalized"}}, "params.ranker.strategy"),
        ({"ranker": {"strategy": "rrf", "params": {"k": -1}}}, "params.ranker.params.k"),
        ({"ranker": {"strategy": "weighted", "params": {"weights": [1.5, 0]}}}, "params.ranker.params.weights[0]"),
        ({"ranker": {"strategy": "weighted", "params": {"weights": "half"}}}, "params.ranker.params.weights"),
        # Every weight is checked, not only the first (the second was ignored, whatever it held).
        ({"ranker": {"strategy": "weighted", "params": {"weights": [0.5, "x"]}}}, "params.ranker.params.weights[1]"),
        ({"ranker": {"strategy": "weighted", "params": {"weights": [0.5, -1]}}}, "params.ranker.params.weights[1]"),
        ({"ranker": {"strategy": "weighted", "params": {"weights": [0.7, 0.7]}}}, "params.ranker.params.weights[1]"),
        ({"ranker": {"strategy": "weighted", "params": {"weights": [None, 1]}}}, "params.ranker.params.weights[0]"),
        ({"ranker": {"strategy": "weighted", "params": {"weights": []}}}, "params.ranker.params.weights"),
        ({"ranker": {"strategy": "weighted", "params": {"weights": [0.2, 0.3, 0.5]}}}, "params.ranker.params.weights"),
        ({"top_k": 3}, "params.top_k"),
    ):
        status, body = await _post(
            http, ogx_server, "/v1/vector-io/query", {"vector_store_id": WIDE_ID, "query": "hello", "params": params}
        )
        assert (status, body["error"]["param"]) == (400, param), body


# --- file contents with OGX's extra query --------------------------------------------------------------------


async def test_file_contents_with_embeddings_and_metadata(
    oai: AsyncOpenAI, ogx_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    text = "Chunks carry their vectors. " * 5
    uploaded = await oai.files.create(file=("v.txt", text.encode(), "text/plain"), purpose="assistants")
    attached = await oai.vector_stores.files.create_and_poll(
        vector_store_id=DOCS_ID, file_id=uploaded.id, attributes={"team": "search"}
    )
    assert attached.status == "completed"
    plain = await oai.vector_stores.files.content(file_id=uploaded.id, vector_store_id=DOCS_ID)
    # Without the extra query, OpenAI's shape exactly.
    assert plain.data and all(set(item.model_dump(exclude_none=True)) == {"type", "text"} for item in plain.data)
    full = await oai.vector_stores.files.content(
        file_id=uploaded.id,
        vector_store_id=DOCS_ID,
        extra_query={"include_embeddings": "true", "include_metadata": "true"},
    )
    assert [item.text for item in full.data] == [item.text for item in plain.data]
    for item in full.data:
        extra = item.model_extra or {}
        assert extra["embedding"] == pytest.approx(fake_vector(item.text or "", DIMS), abs=1e-6)
        assert extra["metadata"]["team"] == "search"
        assert extra["chunk_metadata"]["chunk_embedding_model"] == "fake-model"
    only_vectors = await oai.vector_stores.files.content(
        file_id=uploaded.id, vector_store_id=DOCS_ID, extra_query={"include_embeddings": True}
    )
    assert all("metadata" not in (item.model_extra or {}) for item in only_vectors.data)
    # A file's chunks change only with their file: the chunk API can't overwrite one by its id.
    file_chunk_id = (full.data[0].model_extra or {})["chunk_metadata"]["chunk_id"]
    status, body = await _post(
        http,
        ogx_server,
        "/v1/vector-io/insert",
        {"vector_store_id": DOCS_ID, "chunks": [{"chunk_id": file_chunk_id, "content": "overwrite?"}]},
    )
    assert status == 409, body
    again = await oai.vector_stores.files.content(file_id=uploaded.id, vector_store_id=DOCS_ID)
    assert [item.text for item in again.data] == [item.text for item in plain.data]
    url = ogx_server.url(f"/v1/vector_stores/{DOCS_ID}/files/{uploaded.id}/content?include_metadata=maybe")
    async with http.get(url, headers=auth()) as response:
        assert response.status == 400 and (await response.json())["error"]["param"] == "include_metadata"


# --- OGX's own client ------------------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OGX_SCRIPT = HERE / "ogx_client_script.py"


def _ogx_python() -> Path | None:
    """A Python with `llama-stack-client`: VECTORSTORE_OGX_PYTHON (CI sets it, see .ci/run), this one when it has
    the client (Python >= 3.12 installs it with the test extra), or `.venv-ogx` in or beside the checkout."""
    configured = os.environ.get("VECTORSTORE_OGX_PYTHON")
    if configured:
        return Path(configured)
    if importlib.util.find_spec("llama_stack_client") is not None:
        return Path(sys.executable)
    for venv in (REPO / ".venv-ogx", REPO.parent / ".venv-ogx"):
        if (venv / "bin" / "python").exists():
            return venv / "bin" / "python"
    return None


async def test_llama_stack_client(ogx_server: RunningServer) -> None:
    python = _ogx_python()
    if python is None:
        pytest.skip(
            "llama-stack-client needs Python >= 3.12: python3.12 -m venv .venv-ogx && "
            ".venv-ogx/bin/pip install llama-stack-client (or set VECTORSTORE_OGX_PYTHON)"
        )
    process = await asyncio.create_subprocess_exec(
        str(python),
        str(OGX_SCRIPT),
        ogx_server.base_url,
        WRITE_KEY,
        str(DIMS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()[-4000:]
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert "fake-model" in seen["refused_model"] and "all-MiniLM-L6-v2" in seen["refused_model"]
    assert seen["attach_status"] == "completed" and seen["batch_file_status"] == "completed"
    assert seen["content_dimensions"] == [DIMS]
    assert all(metadata.get("topic") == "db" for metadata in seen["content_metadata"])
    assert seen["query_chunk_ids"][0] == "ogx-chunk-1" and seen["query_embedding_dimensions"] == [DIMS]
    assert all(0.0 <= score <= 1.0 for score in seen["query_scores"])
    fusion = "reciprocal rank fusion of two rankings"
    for name, texts in seen["searches"].items():
        assert fusion in texts, (name, texts)


async def test_where_this_server_keeps_openais_behaviour(oai: AsyncOpenAI) -> None:
    """The deliberate differences docs/search.md lists: 404s for unknown ids, and nothing half-created."""
    before = [s.id async for s in oai.vector_stores.list()]
    with pytest.raises(openai.NotFoundError) as exc:
        await oai.vector_stores.create(name="half", file_ids=["file-missing"], extra_body={"provider_id": "pgvector"})
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "file_ids[0]"
    assert [s.id async for s in oai.vector_stores.list()] == before
    with pytest.raises(openai.NotFoundError):
        await oai.vector_stores.files.list(vector_store_id="vs_unknown")
    # Attaching answers at once, in progress, as OpenAI's API does; the worker completes it.
    uploaded = await oai.files.create(file=("a.txt", b"asynchronous attach", "text/plain"), purpose="assistants")
    attached = await oai.vector_stores.files.create(vector_store_id=DOCS_ID, file_id=uploaded.id)
    assert attached.status == "in_progress"
    done = await oai.vector_stores.files.poll(uploaded.id, vector_store_id=DOCS_ID, poll_interval_ms=50)
    assert done.status == "completed"
