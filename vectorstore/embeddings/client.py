"""Client for an OpenAI-compatible `/v1/embeddings` (usually LiteLLM), over aiohttp.

Public interface:
- `await client.embed(texts, model=..., dimensions=...)` -> one vector per text, in order. Splits into
  requests of `batch_size` inputs; ingestion calls this with a file's chunk texts.
- `await client.embed_query(text, model=..., dimensions=...)` -> one vector, served from an LRU cache of
  recent queries when possible (searches repeat).
Both raise `UpstreamError` (rendered as 502 with the upstream status) when the upstream fails for good, and
check that every vector has the expected dimensions.
Retries: on 429 (honouring Retry-After) and 5xx and connection errors, up to `max_retries`, with exponential
backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from config.model import Embedding
from vectorstore.errors import UpstreamError
from vectorstore.observability import metrics

log = logging.getLogger("vectorstore")

_MAX_RETRY_AFTER_SECONDS = 30.0


@dataclass(frozen=True)
class EmbeddingSettings:
    base_url: str
    api_key: str | None = None
    timeout_seconds: float = 30.0
    max_retries: int = 3
    batch_size: int = 64
    query_cache_size: int = 1024
    send_dimensions: bool = False
    backoff_base_seconds: float = 0.5

    @classmethod
    def from_spec(cls, embedding: Embedding, api_key: str | None) -> EmbeddingSettings:
        return cls(
            base_url=embedding.base_url,
            api_key=api_key,
            timeout_seconds=embedding.timeout_seconds,
            max_retries=embedding.max_retries,
            batch_size=embedding.batch_size,
            query_cache_size=embedding.query_cache_size,
            send_dimensions=embedding.send_dimensions,
        )


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class EmbeddingClient:
    def __init__(self, settings: EmbeddingSettings, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._cache: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()
        self.cache_hits = 0
        self.requests = 0

    @property
    def url(self) -> str:
        return f"{self.settings.base_url.rstrip('/')}/v1/embeddings"

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds))
            self._owns_session = True
        return self._session

    async def embed_query(self, text: str, *, model: str, dimensions: int) -> list[float]:
        key = (model, dimensions, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached
        [vector] = await self._request([text], model=model, dimensions=dimensions)
        if self.settings.query_cache_size > 0:
            self._cache[key] = vector
            while len(self._cache) > self.settings.query_cache_size:
                self._cache.popitem(last=False)
        return vector

    async def embed(self, texts: Sequence[str], *, model: str, dimensions: int) -> list[list[float]]:
        vectors: list[list[float]] = []
        size = max(1, self.settings.batch_size)
        for start in range(0, len(texts), size):
            vectors += await self._request(list(texts[start : start + size]), model=model, dimensions=dimensions)
        return vectors

    async def _request(self, texts: list[str], *, model: str, dimensions: int) -> list[list[float]]:
        body: dict[str, Any] = {"model": model, "input": texts}
        if self.settings.send_dimensions:
            body["dimensions"] = dimensions
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        attempt = 0
        while True:
            try:
                return await self._attempt(body, headers, len(texts), dimensions)
            except _Retryable as exc:
                if attempt >= self.settings.max_retries:
                    raise UpstreamError(
                        f"embedding upstream {self.url} failed after {attempt + 1} attempt(s): {exc}",
                        upstream_status=exc.status,
                    ) from None
                delay = self.settings.backoff_base_seconds * (2**attempt) * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                log.warning("embedding request failed (%s); retry %d in %.2fs", exc, attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1

    @metrics.timed_embedding
    async def _attempt(
        self, body: dict[str, Any], headers: dict[str, str], count: int, dimensions: int
    ) -> list[list[float]]:
        self.requests += 1
        try:
            async with self._get_session().post(self.url, json=body, headers=headers) as response:
                if response.status == 429 or response.status >= 500:
                    raise _Retryable(
                        f"status {response.status}", response.status, _retry_after(response.headers.get("Retry-After"))
                    )
                if response.status != 200:
                    detail = (await response.text())[:200]
                    raise UpstreamError(
                        f"embedding upstream {self.url} answered status {response.status}: {detail}",
                        upstream_status=response.status,
                    )
                payload = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise _Retryable(f"unreachable ({type(exc).__name__}: {exc})" if str(exc) else "timed out", None) from None
        except (aiohttp.ClientPayloadError, aiohttp.ContentTypeError, ValueError) as exc:
            raise UpstreamError(
                f"embedding upstream {self.url} sent an unreadable answer: {exc}", upstream_status=200
            ) from None
        return _vectors(payload, count, dimensions, self.url)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        return None


def _vectors(payload: Any, count: int, dimensions: int, url: str) -> list[list[float]]:
    try:
        items = sorted(payload["data"], key=lambda item: item["index"])
        vectors = [[float(x) for x in item["embedding"]] for item in items]
    except (KeyError, TypeError, ValueError):
        raise UpstreamError(
            f"embedding upstream {url} sent an answer without data[].embedding", upstream_status=200
        ) from None
    if len(vectors) != count:
        raise UpstreamError(
            f"embedding upstream {url} returned {len(vectors)} vectors for {count} inputs", upstream_status=200
        )
    for vector in vectors:
        if len(vector) != dimensions:
            raise UpstreamError(
                f"embedding upstream {url} returned {len(vector)} dimensions; the store expects {dimensions}",
                upstream_status=200,
            )
    return vectors
