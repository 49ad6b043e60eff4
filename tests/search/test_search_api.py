"""Search modes, request overrides, store defaults and reranking through the real API and the `openai` client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from fakeembed import FakeEmbedder, fake_vector
from fakererank import FakeReranker
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, RunningServer, auth, spec_data, start_server, write_spec

from vectorstore.observability import metrics

STORE = "vs_searchapi01"
PLAIN = "vs_searchapi02"
DOCS = {
    "wing.md": "The swept wing delays compressibility drag at transonic speed.",
    "heat.md": "Heat conduction in composite slabs was solved in closed form.",
    "flutter.md": "Flutter of panels in supersonic flow can destroy the skin.",
    "garden.md": "Tomatoes in the garden need water every morning.",
}


@pytest.fixture
async def reranker() -> AsyncIterator[FakeReranker]:
    fake = await FakeReranker().start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def search_server(
    fresh_dsn: str, fake_embedder: FakeEmbedder, reranker: FakeReranker, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    data = spec_data(
        fake_embedder.base_url,
        stores=[
            {"name": "docs", "id": STORE, "search": {"default_max_num_results": 3}},
            {"name": "plain", "id": PLAIN, "search": {"mode": "vector", "rerank": False}},
        ],
    )
    data["rerank"] = {
        "base_url": reranker.base_url,
        "model": "fake-rerank",
        "api_key": {"secret": "s", "key": "rr"},
        "candidates": 10,
        "timeout_seconds": 0.5,
    }
    spec = write_spec(tmp_path / "stack.yaml", data)
    running = await start_server(spec, fresh_dsn, rerank_api_key="rerank-key-0123456789")
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def oai(search_server: RunningServer) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=search_server.url("/v1"), api_key=WRITE_KEY, max_retries=0, timeout=30)
    for store_id in (STORE, PLAIN):
        for name, content in DOCS.items():
            await client.vector_stores.files.upload_and_poll(
                vector_store_id=store_id, file=(name, content.encode()), attributes={"kind": name.split(".")[0]}
            )
    try:
        yield client
    finally:
        await client.close()


def names(page: Any) -> list[str]:
    return [hit.filename for hit in page.data]


async def test_default_mode_is_hybrid_with_the_store_page_size(oai: AsyncOpenAI, reranker: FakeReranker) -> None:
    page = await oai.vector_stores.search(STORE, query="supersonic panel flutter", ranking_options={"ranker": "none"})
    assert len(page.data) == 3  # the store's default_max_num_results
    assert names(page)[0] == "flutter.md"  # the keyword leg finds it; the fake vectors are random
    assert all(0.0 < hit.score <= 1.0 for hit in page.data)
    assert reranker.calls == []


async def test_search_mode_and_hybrid_weights(oai: AsyncOpenAI) -> None:
    query = DOCS["garden.md"]
    vector = await oai.vector_stores.search(STORE, query=query, extra_body={"search_mode": "vector"})
    assert names(vector)[0] == "garden.md" and vector.data[0].score == pytest.approx(1.0)
    keyword = await oai.vector_stores.search(
        STORE, query="compressibility drag", max_num_results=5, extra_body={"search_mode": "keyword"}
    )
    assert names(keyword) == ["wing.md"]
    text_only = await oai.vector_stores.search(
        STORE,
        query="heat conduction",
        # OpenAI's hybrid_search weights (Responses file_search); this client's typed options don't have them yet.
        extra_body={"ranking_options": {"ranker": "none", "hybrid_search": {"embedding_weight": 0, "text_weight": 1}}},
    )
    assert names(text_only)[0] == "heat.md" and text_only.data[0].score == pytest.approx(1.0)
    # A vector-mode store still runs hybrid when a request asks for it.
    asked = await oai.vector_stores.search(PLAIN, query="heat conduction", extra_body={"search_mode": "hybrid"})
    assert names(asked)[0] == "heat.md"


async def test_queries_without_terms_fall_back_to_vector(oai: AsyncOpenAI) -> None:
    before = metrics.SEARCHES.labels("vector", "no_terms")._value.get()
    page = await oai.vector_stores.search(STORE, query="the of and ???", extra_body={"search_mode": "keyword"})
    assert len(page.data) == 3
    assert metrics.SEARCHES.labels("vector", "no_terms")._value.get() == before + 1


async def test_filters_and_threshold_in_hybrid(oai: AsyncOpenAI) -> None:
    page = await oai.vector_stores.search(
        STORE,
        query="supersonic flutter",
        filters={"type": "ne", "key": "kind", "value": "flutter"},
        max_num_results=10,
        ranking_options={"ranker": "none"},
    )
    assert "flutter.md" not in names(page) and len(page.data) == 3
    strict = await oai.vector_stores.search(
        STORE, query="supersonic flutter", ranking_options={"ranker": "none", "score_threshold": 0.99}
    )
    assert all(hit.score >= 0.99 for hit in strict.data)


async def test_rewrite_query_is_searched_as_written(
    oai: AsyncOpenAI, search_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    body = {"query": "heat slabs", "rewrite_query": True}
    async with http.post(search_server.url(f"/v1/vector_stores/{STORE}/search"), json=body, headers=auth()) as r:
        page = await r.json()
    assert page["search_query"] == ["heat slabs"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": "x", "search_mode": "semantic"}, "search_mode"),
        ({"query": "x", "ranking_options": {"hybrid_search": {"embedding_weight": -1}}}, None),
        ({"query": "x", "ranking_options": {"hybrid_search": {"embedding_weight": 0, "text_weight": 0}}}, None),
        ({"query": "x", "ranking_options": {"hybrid_search": {"vector_weight": 1}}}, None),
        ({"query": "x", "ranking_options": {"rank": "auto"}}, "ranking_options.rank"),
        ({"query": "x", "ranking_options": {"hybrid_search": "yes"}}, "ranking_options.hybrid_search"),
    ],
)
async def test_bad_search_options_are_400s(
    search_server: RunningServer, http: aiohttp.ClientSession, body: dict[str, Any], param: str | None
) -> None:
    async with http.post(search_server.url(f"/v1/vector_stores/{STORE}/search"), json=body, headers=auth()) as r:
        answer = await r.json()
    assert r.status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"].startswith(param or "ranking_options.hybrid_search")


async def test_reranker_orders_the_page(oai: AsyncOpenAI, reranker: FakeReranker) -> None:
    page = await oai.vector_stores.search(STORE, query="garden water tomatoes morning", max_num_results=2)
    assert names(page)[0] == "garden.md" and page.data[0].score == pytest.approx(1.0)
    assert len(page.data) == 2
    [call] = reranker.calls
    assert call["model"] == "fake-rerank" and call["top_n"] == 2 and len(call["documents"]) == len(DOCS)
    assert reranker.authorizations == ["Bearer rerank-key-0123456789"]
    # The vector-mode store opted out; `ranker: none` skips it per request.
    await oai.vector_stores.search(PLAIN, query="garden")
    await oai.vector_stores.search(STORE, query="garden", ranking_options={"ranker": "none"})
    assert len(reranker.calls) == 1
    # OGX's `neural` (or its `model`) asks for the reranker by name: it runs on the opted-out store too, rather
    # than answering with the fused order it did not ask for.
    for options in ({"ranker": "neural"}, {"ranker": "neural", "model": "fake-rerank"}, {"model": "fake-rerank"}):
        page = await oai.vector_stores.search(
            PLAIN,
            query="garden water tomatoes morning",
            max_num_results=2,
            ranking_options=options,  # type: ignore[arg-type]
        )
        assert names(page)[0] == "garden.md" and page.data[0].score == pytest.approx(1.0), options
        assert reranker.calls[-1]["model"] == "fake-rerank" and reranker.calls[-1]["top_n"] == 2
    assert len(reranker.calls) == 4
    # Beside `neural`, an algorithm ranker's parameter is refused, naming it.
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.vector_stores.search(PLAIN, query="garden", ranking_options={"ranker": "neural", "alpha": 0.5})  # type: ignore[arg-type]
    assert refused.value.body["param"] == "ranking_options.alpha"  # type: ignore[index]


@pytest.mark.parametrize("fault", ["status", "slow", "bad_answer", "down"])
async def test_a_failing_reranker_falls_back_to_fused_order(
    oai: AsyncOpenAI, reranker: FakeReranker, fault: str
) -> None:
    fused = await oai.vector_stores.search(STORE, query="supersonic flutter", ranking_options={"ranker": "none"})
    reason = {"status": "status_5xx", "slow": "timeout", "bad_answer": "bad_answer", "down": "connect"}[fault]
    before = metrics.RERANK_FALLBACKS.labels(reason)._value.get()
    if fault == "status":
        reranker.fail_status = 503
    elif fault == "slow":
        reranker.delay_seconds = 5.0
    elif fault == "bad_answer":
        reranker.bad_answer = True
    else:
        await reranker.close()
    started = time.monotonic()
    page = await oai.vector_stores.search(STORE, query="supersonic flutter")
    assert time.monotonic() - started < 3.0  # the reranker's 0.5 s budget, not its 5 s
    assert names(page) == names(fused)
    assert metrics.RERANK_FALLBACKS.labels(reason)._value.get() == before + 1


async def test_max_num_results_bounds_still_hold(oai: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await oai.vector_stores.search(STORE, query="x", max_num_results=51)
    page = await oai.vector_stores.search(STORE, query="wing", max_num_results=4, ranking_options={"ranker": "none"})
    assert len(page.data) == 4


async def test_keyword_search_on_prototype_rows(search_server: RunningServer, http: aiohttp.ClientSession) -> None:
    """Rows added through the prototype's /embeddings routes are keyword-searchable too."""
    url = search_server.url(f"/v1/vector_stores/{PLAIN}")
    item = {"content": "a prototype row about hydrofoils", "embedding": fake_vector("h", 8)}
    async with http.post(url + "/embeddings", json=item, headers=auth()) as response:
        assert response.status == 200
    body = {"query": "hydrofoils", "search_mode": "keyword"}
    async with http.post(url + "/search", json=body, headers=auth()) as response:
        page = await response.json()
    assert [hit["content"][0]["text"] for hit in page["data"]] == ["a prototype row about hydrofoils"]
