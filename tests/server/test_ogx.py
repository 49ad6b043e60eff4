"""OGX (ex-Llama Stack) clients work unchanged: the OpenAI SDK sending what OGX's client and docs send.

`embedding_model`, `embedding_dimension` and `provider_id` on create, attach and batches; OGX's rankers on
search; its chunk API (`/v1/vector-io/insert` and `/query`); file contents with embeddings and metadata.
OGX's own client (`llama-stack-client`) runs against a real server in tests/server/test_ogx_client.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI

from config.names import derived_store_id
from server.conftest import DIMS, DOCS_ID, WRITE_KEY, RunningServer, auth, spec_data, start_server, write_spec

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


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"embedding_model": "all-MiniLM-L6-v2"}, "embedding_model", ["'fake-model' (8 dimensions)", WIDE_MODEL]),
        ({"embedding_model": "fake-model", "embedding_dimension": 384}, "embedding_dimension", ["384", "8 dim"]),
        ({"embedding_dimension": 12}, "embedding_dimension", ["12", "'fake-model' (8 dimensions)"]),
        ({"provider_id": "faiss"}, "provider_id", ["'pgvector'", "'remote::pgvector'"]),
        ({"provider_id": 7}, "provider_id", ["string"]),
        ({"embedding_dimension": "8"}, "embedding_dimension", ["integer"]),
        ({"embedding_dimension": 0}, "embedding_dimension", ["between 1"]),
        ({"embedding_model": ["fake-model"]}, "embedding_model", ["string"]),
    ],
)
async def test_create_refuses_what_it_cant_serve(
    oai: AsyncOpenAI, extra: dict[str, Any], param: str, words: list[str]
) -> None:
    before = [s.id async for s in oai.vector_stores.list()]
    with pytest.raises(openai.BadRequestError) as exc:
        await oai.vector_stores.create(name="refused", extra_body=extra)
    error = _error(exc)
    assert error["param"] == param, error
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


@pytest.mark.parametrize("shape", ["string", "object"])
@pytest.mark.parametrize("k", [1.0, 60.0, 500.0])
async def test_rrf_impact_factor_is_rrfs_k(oai: AsyncOpenAI, ranked_store: str, shape: str, k: float) -> None:
    vector = [text for text, _ in await _search(oai, ranked_store, search_mode="vector")]
    keyword = [text for text, _ in await _search(oai, ranked_store, search_mode="keyword")]
    assert keyword and len(keyword) < len(TEXTS)  # the two legs differ: fusion has something to do
    options = (
        {"ranker": "rrf", "impact_factor": k} if shape == "string" else {"ranker": {"type": "rrf", "impact_factor": k}}
    )
    hits = await _search(oai, ranked_store, ranking_options=options)
    expected = _rrf([(vector, 1.0), (keyword, 1.0)], k)
    assert {text for text, _ in hits} == set(expected)
    for text, score in hits:
        assert score == pytest.approx(expected[text], abs=1e-6), text
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)


@pytest.mark.parametrize("shape", ["string", "object"])
async def test_weighted_alpha_is_the_vector_share(oai: AsyncOpenAI, ranked_store: str, shape: str) -> None:
    def options(alpha: float) -> dict[str, Any]:
        if shape == "string":
            return {"ranker": "weighted", "alpha": alpha}
        return {"ranker": {"type": "weighted", "alpha": alpha}}

    vector = [text for text, _ in await _search(oai, ranked_store, search_mode="vector")]
    keyword = [text for text, _ in await _search(oai, ranked_store, search_mode="keyword")]
    # OGX: alpha 1 is vector only, 0 keyword only.
    only_vector = [text for text, _ in await _search(oai, ranked_store, ranking_options=options(1.0))]
    assert only_vector == vector
    only_keyword = [text for text, _ in await _search(oai, ranked_store, ranking_options=options(0.0))]
    assert only_keyword[: len(keyword)] == keyword
    hits = await _search(oai, ranked_store, ranking_options=options(0.7))
    expected = _rrf([(vector, 0.7), (keyword, 0.3)], 60.0)
    for text, score in hits:
        assert score == pytest.approx(expected[text], abs=1e-6), text


async def test_ogx_weights_and_an_explicit_mode(oai: AsyncOpenAI, ranked_store: str) -> None:
    vector = [text for text, _ in await _search(oai, ranked_store, search_mode="vector")]
    keyword = [text for text, _ in await _search(oai, ranked_store, search_mode="keyword")]
    hits = await _search(
        oai, ranked_store, ranking_options={"ranker": "weighted", "weights": {"vector": 2.0, "keyword": 1.0}}
    )
    expected = _rrf([(vector, 2.0), (keyword, 1.0)], 60.0)
    assert all(score == pytest.approx(expected[text], abs=1e-6) for text, score in hits)
    # An explicit search_mode wins: the ranker only says how hybrid search fuses.
    keyword_again = await _search(oai, ranked_store, search_mode="keyword", ranking_options={"ranker": "rrf"})
    assert [text for text, _ in keyword_again] == keyword


@pytest.mark.parametrize(
    ("options", "param"),
    [
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
    ],
)
async def test_ranker_out_of_range_is_a_400_naming_the_field(
    oai: AsyncOpenAI, ranked_store: str, options: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await _search(oai, ranked_store, ranking_options=options)
    assert _error(exc)["param"] == param, _error(exc)
