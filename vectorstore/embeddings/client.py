"""Text in, vectors out: what ingestion and search call, whichever model makes the vectors.

Public interface:
- `await client.embed(texts, model=..., dimensions=...)` -> one vector per text, in order. Splits into
  requests of `batch_size` inputs; ingestion calls this with a file's chunk texts.
- `await client.embed_query(text, model=..., dimensions=...)` -> one vector, served from an LRU cache of
  recent queries when possible (searches repeat). The cache is bounded in entries and in bytes.
Both check that the backend gave one vector per text with the expected dimensions, and raise `UpstreamError`
(rendered as 502) otherwise or when the backend fails. The backend is the OpenAI-compatible upstream
(`upstream.py`) or the built-in model (`builtin.py`); everything after "text in, vectors out" is shared here.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from config.model import Embedding
from vectorstore.embeddings.upstream import OpenAIUpstream
from vectorstore.errors import UpstreamError
from vectorstore.observability import metrics


class Backend(Protocol):
    """One request's worth of texts in, their vectors out, in order."""

    @property
    def name(self) -> str:
        """How error messages name it (`embedding upstream <url>`)."""
        ...

    @property
    def requests(self) -> int:
        """Requests made so far (tests and benches count them)."""
        ...

    def __call__(self, texts: list[str], *, model: str, dimensions: int) -> Awaitable[list[list[float]]]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class EmbeddingSettings:
    batch_size: int = 64
    query_cache_size: int = 1024
    query_cache_bytes: int = 64 << 20


def backend_from_spec(embedding: Embedding, api_key: str | None) -> Backend:
    if embedding.provider == "builtin":
        from vectorstore.embeddings.builtin import BuiltinModel

        return BuiltinModel()
    return OpenAIUpstream(
        embedding.base_url,
        api_key=api_key,
        timeout_seconds=embedding.timeout_seconds,
        max_retries=embedding.max_retries,
        send_dimensions=embedding.send_dimensions,
    )


class EmbeddingClient:
    def __init__(self, backend: Backend, settings: EmbeddingSettings | None = None) -> None:
        self.backend = backend
        self.settings = settings or EmbeddingSettings()
        self._cache: OrderedDict[tuple[str, int, str], tuple[list[float], int]] = OrderedDict()
        self.cache_bytes = 0
        """Estimated memory the cached entries hold (`_entry_bytes`), kept under `query_cache_bytes`."""
        self.cache_hits = 0

    @classmethod
    def from_spec(cls, embedding: Embedding, api_key: str | None) -> EmbeddingClient:
        return cls(
            backend_from_spec(embedding, api_key),
            EmbeddingSettings(
                batch_size=embedding.batch_size,
                query_cache_size=embedding.query_cache_size,
                query_cache_bytes=embedding.query_cache_bytes,
            ),
        )

    @property
    def requests(self) -> int:
        return self.backend.requests

    async def close(self) -> None:
        await self.backend.close()

    async def embed_query(self, text: str, *, model: str, dimensions: int) -> list[float]:
        key = (model, dimensions, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached[0]
        [vector] = await self._request([text], model=model, dimensions=dimensions)
        self._remember(key, vector)
        return vector

    def _remember(self, key: tuple[str, int, str], vector: list[float]) -> None:
        """Cache a query's vector, then drop the oldest entries until both bounds hold (count and bytes)."""
        size = _entry_bytes(key, vector)
        limit_bytes, limit_entries = self.settings.query_cache_bytes, self.settings.query_cache_size
        if limit_entries <= 0 or size > limit_bytes:
            return
        previous = self._cache.pop(key, None)
        if previous is not None:
            self.cache_bytes -= previous[1]
        self._cache[key] = (vector, size)
        self.cache_bytes += size
        while len(self._cache) > limit_entries or self.cache_bytes > limit_bytes:
            _, (_, dropped) = self._cache.popitem(last=False)
            self.cache_bytes -= dropped

    async def embed(self, texts: Sequence[str], *, model: str, dimensions: int) -> list[list[float]]:
        vectors: list[list[float]] = []
        size = max(1, self.settings.batch_size)
        for start in range(0, len(texts), size):
            vectors += await self._request(list(texts[start : start + size]), model=model, dimensions=dimensions)
        return vectors

    async def _request(self, texts: list[str], *, model: str, dimensions: int) -> list[list[float]]:
        vectors = await self.backend(texts, model=model, dimensions=dimensions)
        problem = _problem(vectors, len(texts), dimensions)
        if problem is not None:
            metrics.count_embedding_error("bad_answer")
            raise UpstreamError(f"{self.backend.name} {problem}", upstream_status=200)
        return vectors


def _problem(vectors: list[list[float]], count: int, dimensions: int) -> str | None:
    """What is wrong with an answer, in words, or None."""
    if len(vectors) != count:
        return f"returned {len(vectors)} vectors for {count} inputs"
    for vector in vectors:
        if len(vector) != dimensions:
            return f"returned {len(vector)} dimensions; the store expects {dimensions}"
        if not all(map(math.isfinite, vector)):
            # PostgreSQL would refuse the whole COPY (pgvector rejects NaN and infinity): say who sent it.
            return "returned a vector with NaN or infinity"
    return None


def _entry_bytes(key: tuple[str, int, str], vector: list[float]) -> int:
    """Memory one cache entry holds, estimated: the query text, the list and its float objects, overhead."""
    return sys.getsizeof(key[2]) + sys.getsizeof(vector) + 24 * len(vector) + 256
