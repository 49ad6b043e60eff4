"""The query-embedding cache is bounded in bytes as well as in entries (a read key could otherwise make the
server hold gigabytes of long query texts), against the fake upstream over real HTTP."""

from __future__ import annotations

from fakeembed import FakeEmbedder

from vectorstore.embeddings.client import EmbeddingClient, EmbeddingSettings
from vectorstore.embeddings.upstream import OpenAIUpstream


async def test_the_cache_stays_under_its_byte_bound(fake_embedder: FakeEmbedder) -> None:
    limit = 200_000
    client = EmbeddingClient(
        OpenAIUpstream(fake_embedder.base_url), EmbeddingSettings(query_cache_size=1000, query_cache_bytes=limit)
    )
    try:
        texts = [f"query {index} " + "x" * 20_000 for index in range(40)]
        for text in texts:
            await client.embed_query(text, model="m", dimensions=8)
            assert client.cache_bytes <= limit
        # Far fewer than the 1,000 entries allowed: the bytes bound the cache, the oldest went first.
        cached = len(client._cache)
        assert 3 <= cached < 20, cached
        calls = len(fake_embedder.calls)
        await client.embed_query(texts[-1], model="m", dimensions=8)
        assert len(fake_embedder.calls) == calls, "the newest query is still served from the cache"
        await client.embed_query(texts[0], model="m", dimensions=8)
        assert len(fake_embedder.calls) == calls + 1, "the oldest was dropped"

        # A single entry bigger than the whole bound is not cached at all.
        huge = "y" * (limit * 2)
        before = dict(client._cache)
        await client.embed_query(huge, model="m", dimensions=8)
        assert dict(client._cache).keys() == before.keys()
    finally:
        await client.close()


async def test_the_entry_bound_still_holds(fake_embedder: FakeEmbedder) -> None:
    client = EmbeddingClient(OpenAIUpstream(fake_embedder.base_url), EmbeddingSettings(query_cache_size=3))
    try:
        for index in range(10):
            await client.embed_query(f"short {index}", model="m", dimensions=8)
        assert len(client._cache) == 3
        assert 0 < client.cache_bytes <= 3 * 2000
    finally:
        await client.close()
