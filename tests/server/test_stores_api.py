"""The OpenAI client drives the stores API and search against a real server, database and HTTP upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI

from config.names import derived_store_id
from server.conftest import DIMS, DOCS_ID, LIMITED_KEY, READ_KEY, RunningServer, auth


async def add_rows(
    http: aiohttp.ClientSession, server: RunningServer, store_id: str, rows: list[dict[str, Any]]
) -> None:
    url = server.url(f"/v1/vector_stores/{store_id}/embeddings/batch")
    async with http.post(url, headers=auth(), json={"embeddings": rows}) as response:
        assert response.status == 200, await response.text()


async def test_create_list_retrieve_update_delete(client: AsyncOpenAI) -> None:
    created = [await client.vector_stores.create(name=f"store-{i}", metadata={"i": str(i)}) for i in range(5)]
    assert all(store.id.startswith("vs_") and store.object == "vector_store" for store in created)
    assert created[0].file_counts.total == 0 and created[0].status == "completed"

    # Auto-pagination with limit=2 walks after= cursors across 4 pages: 5 created + 2 declared.
    seen = [store.id async for store in client.vector_stores.list(limit=2)]
    declared = {DOCS_ID, derived_store_id("notes")}
    assert len(seen) == 7 and len(set(seen)) == 7
    assert seen[:5] == [store.id for store in reversed(created)]  # newest first
    assert set(seen[5:]) == declared
    ascending = [store.id async for store in client.vector_stores.list(limit=3, order="asc")]
    assert ascending == list(reversed(seen))

    page = await client.vector_stores.list(limit=2, order="asc", after=created[1].id)
    assert [s.id for s in page.data] == [created[2].id, created[3].id] and page.has_more
    back = await client.vector_stores.list(limit=2, order="asc", before=created[2].id)
    assert [s.id for s in back.data] == [created[0].id, created[1].id]

    got = await client.vector_stores.retrieve(created[2].id)
    assert got.name == "store-2" and got.metadata == {"i": "2"}

    updated = await client.vector_stores.update(created[2].id, name="renamed", metadata={"k": "v"})
    assert updated.name == "renamed" and updated.metadata == {"k": "v"}
    assert (await client.vector_stores.retrieve(created[2].id)).name == "renamed"

    deleted = await client.vector_stores.delete(created[2].id)
    assert deleted.deleted and deleted.id == created[2].id
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.retrieve(created[2].id)


async def test_declared_store_is_owned_by_the_spec(client: AsyncOpenAI, server: RunningServer) -> None:
    docs = await client.vector_stores.retrieve(DOCS_ID)
    assert docs.name == "docs" and docs.metadata == {"team": "a"}
    for call in (
        client.vector_stores.update(DOCS_ID, name="x"),
        client.vector_stores.delete(DOCS_ID),
    ):
        with pytest.raises(openai.ConflictError) as info:
            await call
        assert info.value.response.headers["x-should-retry"] == "false"
        assert "change the spec" in info.value.message
    # A client with retries on still makes one request: x-should-retry stops it.
    retrying = AsyncOpenAI(base_url=server.url("/v1"), api_key=client.api_key, max_retries=3)
    with pytest.raises(openai.ConflictError):
        await retrying.vector_stores.delete(DOCS_ID)
    await retrying.close()
    assert (await client.vector_stores.retrieve(DOCS_ID)).name == "docs"


ROWS: list[dict[str, Any]] = [
    {"content": "red apple", "metadata": {"kind": "fruit", "price": 3, "organic": True, "tag": "a"}},
    {"content": "green pear", "metadata": {"kind": "fruit", "price": 5, "organic": False, "tag": "b"}},
    {"content": "carrot", "metadata": {"kind": "vegetable", "price": 2, "organic": True, "tag": "c"}},
    {"content": "potato", "metadata": {"kind": "vegetable", "price": 10, "organic": False, "tag": "d"}},
    {"content": "price as text", "metadata": {"kind": "other", "price": "7", "organic": "true", "tag": "e"}},
]


def texts(page: Any) -> list[str]:
    return [item.content[0].text for item in page.data]


async def test_search_with_typed_filters(
    client: AsyncOpenAI, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    await add_rows(http, server, DOCS_ID, ROWS)

    page = await client.vector_stores.search(DOCS_ID, query="carrot")
    assert page.data[0].content[0].text == "carrot" and page.data[0].score == pytest.approx(1.0, abs=1e-6)
    assert len(page.data) == 5 and all(0.0 <= item.score <= 1.0 for item in page.data)
    assert [item.score for item in page.data] == sorted((item.score for item in page.data), reverse=True)
    assert page.data[0].attributes == {"kind": "vegetable", "price": 2, "organic": True, "tag": "c"}

    async def only(filters: Any) -> set[str]:
        return set(texts(await client.vector_stores.search(DOCS_ID, query="carrot", filters=filters)))

    # Numbers compare as numbers: "7" (a string) is not >= 5, and 10 > 5 though "10" < "5" as text.
    assert await only({"type": "gte", "key": "price", "value": 5}) == {"green pear", "potato"}
    assert await only({"type": "lt", "key": "price", "value": 5}) == {"red apple", "carrot"}
    assert await only({"type": "eq", "key": "price", "value": 2}) == {"carrot"}
    # Booleans compare as booleans: the string "true" is not true.
    assert await only({"type": "eq", "key": "organic", "value": True}) == {"red apple", "carrot"}
    assert await only({"type": "ne", "key": "kind", "value": "fruit"}) == {"carrot", "potato", "price as text"}
    assert await only({"type": "in", "key": "tag", "value": ["a", "d", "zz"]}) == {"red apple", "potato"}
    assert await only({"type": "nin", "key": "tag", "value": ["a", "d"]}) == {"green pear", "carrot", "price as text"}
    assert await only({"type": "eq", "key": "price", "value": "7"}) == {"price as text"}
    compound = {
        "type": "or",
        "filters": [
            {
                "type": "and",
                "filters": [
                    {"type": "eq", "key": "kind", "value": "fruit"},
                    {"type": "gt", "key": "price", "value": 4},
                ],
            },
            {"type": "eq", "key": "tag", "value": "c"},
        ],
    }
    assert await only(compound) == {"green pear", "carrot"}
    assert await only({"type": "eq", "key": "missing", "value": 1}) == set()

    limited = await client.vector_stores.search(DOCS_ID, query="carrot", max_num_results=2)
    assert texts(limited)[0] == "carrot" and len(limited.data) == 2

    thresholded = await client.vector_stores.search(
        DOCS_ID, query="carrot", ranking_options={"score_threshold": 0.99, "ranker": "auto"}, rewrite_query=True
    )
    assert texts(thresholded) == ["carrot"]

    multi = await client.vector_stores.search(DOCS_ID, query=["carrot", "potato"])
    assert multi.search_query == ["carrot", "potato"]  # type: ignore[attr-defined]
    assert len(multi.data) == 5


async def test_litellm_search_body_with_explicit_nulls(server: RunningServer, http: aiohttp.ClientSession) -> None:
    await add_rows(http, server, DOCS_ID, ROWS[:2])
    body = {"query": "red apple", "filters": None, "max_num_results": 5, "ranking_options": None, "rewrite_query": None}
    for prefix in ("/v1", ""):  # both LiteLLM generations
        async with http.post(server.url(f"{prefix}/vector_stores/{DOCS_ID}/search"), headers=auth(), json=body) as r:
            assert r.status == 200
            data = await r.json()
        assert set(data) == {"object", "search_query", "data", "has_more", "next_page"}
        assert data["object"] == "vector_store.search_results.page"
        first = data["data"][0]
        assert set(first) == {"file_id", "filename", "score", "attributes", "content"}
        assert first["content"] == [{"type": "text", "text": "red apple"}]
        assert first["file_id"] == "" and first["filename"] == ""  # strings, as OpenAI's schema says: no file


async def test_filtered_search_fills_max_num_results(
    client: AsyncOpenAI, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """Only 1 row in 20 matches: plain HNSW (ef_search 100) would return ~5; iterative scans return all asked."""
    rows = [{"content": f"row {i}", "metadata": {"rare": i % 20 == 0}} for i in range(1200)]
    for start in range(0, len(rows), 400):
        await add_rows(http, server, DOCS_ID, rows[start : start + 400])
    page = await client.vector_stores.search(
        DOCS_ID, query="row 7", max_num_results=50, filters={"type": "eq", "key": "rare", "value": True}
    )
    assert len(page.data) == 50
    assert all(int(text.split()[1]) % 20 == 0 for text in texts(page))


async def test_prototype_routes(
    server: RunningServer, http: aiohttp.ClientSession, fake_embedder: FakeEmbedder
) -> None:
    store = derived_store_id("notes")
    url = server.url(f"/v1/vector_stores/{store}/embeddings")
    explicit = [0.0] * DIMS
    explicit[0] = 1.0
    async with http.post(
        url, headers=auth(), json={"content": "given", "embedding": explicit, "metadata": {"src": "x"}}
    ) as r:
        assert r.status == 200
        one = await r.json()
    assert one["object"] == "embedding" and one["vector_store_id"] == store and one["metadata"] == {"src": "x"}
    assert fake_embedder.inputs == []  # the embedding was given: nothing computed
    async with http.post(url, headers=auth(), json={"content": "computed"}) as r:
        assert r.status == 200
    assert fake_embedder.inputs == ["computed"]
    async with http.post(url, headers=auth(), json={"content": "short", "embedding": [1.0, 2.0]}) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["param"] == "embedding" and "expects 8" in error["message"]

    batch = {"embeddings": [{"content": f"b{i}", "metadata": {"n": i, "grp": "g" if i % 2 else "h"}} for i in range(6)]}
    async with http.post(url + "/batch", headers=auth(), json=batch) as r:
        assert r.status == 200
        out = await r.json()
    assert out["object"] == "embedding.batch" and len(out["data"]) == 6

    # The prototype's search body: limit (up to 100), flat equality filters, return_metadata.
    search = server.url(f"/vector_stores/{store}/search")
    body = {"query": "b3", "limit": 100, "filters": {"grp": "g"}, "return_metadata": True}
    async with http.post(search, headers=auth(), json=body) as r:
        assert r.status == 200
        data = (await r.json())["data"]
    assert data[0]["content"][0]["text"] == "b3"
    assert sorted(d["content"][0]["text"] for d in data) == ["b1", "b3", "b5"]
    body["return_metadata"] = False
    async with http.post(search, headers=auth(), json=body) as r:
        assert all(d["attributes"] == {} for d in (await r.json())["data"])


async def test_query_embeddings_are_cached(client: AsyncOpenAI, fake_embedder: FakeEmbedder) -> None:
    for _ in range(3):
        await client.vector_stores.search(DOCS_ID, query="same question")
    assert fake_embedder.inputs == ["same question"]
    assert fake_embedder.calls[0].authorization == "Bearer upstream-key"


async def test_store_settings_route(client: AsyncOpenAI, server: RunningServer, http: aiohttp.ClientSession) -> None:
    """`GET /vector_stores/{id}/settings` (the console's store details): a read key may call it, a key limited to
    other stores gets 404, and it says how the store is built and searched, nothing secret."""
    created = await client.vector_stores.create(name="by-api")
    answer = await http.get(server.url(f"/v1/vector_stores/{DOCS_ID}/settings"), headers=auth(READ_KEY))
    assert answer.status == 200
    settings = await answer.json()
    assert settings["object"] == "vector_store.settings" and settings["id"] == DOCS_ID
    assert settings["declared"] is True and settings["model"] == "fake-model" and settings["dimensions"] == DIMS
    assert settings["index"]["m"] > 0 and settings["search"]["mode"] in {"vector", "keyword", "hybrid"}
    assert "upstream-key" not in await answer.text()
    other = await http.get(server.url(f"/v1/vector_stores/{created.id}/settings"), headers=auth(READ_KEY))
    assert (await other.json())["declared"] is False
    limited = await http.get(server.url(f"/v1/vector_stores/{created.id}/settings"), headers=auth(LIMITED_KEY))
    assert limited.status == 404
    missing = await http.get(server.url("/v1/vector_stores/vs_nothere/settings"), headers=auth(READ_KEY))
    assert missing.status == 404 and (await missing.json())["error"]["type"] == "invalid_request_error"
