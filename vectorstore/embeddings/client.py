"""Client for an OpenAI-compatible `/v1/embeddings` (usually LiteLLM), over aiohttp.

Public interface:
- `await client.embed(texts, model=..., dimensions=...)` -> one vector per text, in order. Splits into
  requests of `batch_size` inputs; ingestion calls this with a file's chunk texts.
- `await client.embed_query(text, model=..., dimensions=...)` -> one vector, served from an LRU cache of
  recent queries when possible (searches repeat). The cache is bounded in entries and in bytes.
Both raise `UpstreamError` (rendered as 502 with the upstream status) when the upstream fails for good, and
check that every vector has the expected dimensions. An upstream's error body is never relayed: it can quote
what it was sent (the Authorization header included), so clients get its status, reason phrase and error
code, and the body goes to the (redacted) log for the operator.
Retries: on 429 (honouring Retry-After) and 5xx and connection errors, up to `max_retries`, with exponential
backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import aiohttp
from yarl import URL

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
    query_cache_bytes: int = 64 << 20
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
            query_cache_bytes=embedding.query_cache_bytes,
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
        self._cache: OrderedDict[tuple[str, int, str], tuple[list[float], int]] = OrderedDict()
        self.cache_bytes = 0
        """Estimated memory the cached entries hold (`_entry_bytes`), kept under `query_cache_bytes`."""
        self.cache_hits = 0
        self.requests = 0

    @property
    def url(self) -> str:
        return f"{self.settings.base_url.rstrip('/')}/v1/embeddings"

    @property
    def shown_url(self) -> str:
        """The URL as messages show it: without user or password, should the spec's base_url carry them."""
        return str(URL(self.url).with_user(None))

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
                        f"embedding upstream {self.shown_url} failed after {attempt + 1} attempt(s): {exc}",
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
                    reason = await self._failure_reason(response)
                    raise _Retryable(reason, response.status, _retry_after(response.headers.get("Retry-After")))
                if response.status != 200:
                    raise UpstreamError(
                        f"embedding upstream {self.shown_url} answered {await self._failure_reason(response)}",
                        upstream_status=response.status,
                    )
                payload = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            # aiohttp's connection errors name the host and the OS error, never anything that was sent.
            raise _Retryable(f"unreachable ({type(exc).__name__}: {exc})" if str(exc) else "timed out", None) from None
        except (aiohttp.ClientPayloadError, aiohttp.ContentTypeError, ValueError, RecursionError) as exc:
            log.warning("embedding upstream %s sent an unreadable answer: %s", self.shown_url, exc)
            raise UpstreamError(
                f"embedding upstream {self.shown_url} sent an unreadable answer ({type(exc).__name__})",
                upstream_status=200,
            ) from None
        return _vectors(payload, count, dimensions, self.shown_url)

    async def _failure_reason(self, response: aiohttp.ClientResponse) -> str:
        """`status 401 Unauthorized (invalid_api_key)`: the status, its reason phrase and the error code of an
        OpenAI-style envelope, which are identifiers. The body itself only reaches the log, redacted."""
        try:
            body = await response.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError):
            body = ""
        log.warning(
            "embedding upstream %s answered status %d: %s", self.shown_url, response.status, body[:_LOGGED_BODY_CHARS]
        )
        reason = f"status {response.status}"
        with contextlib.suppress(ValueError):
            # The standard phrase, not the upstream's own: a reason phrase is free text too.
            reason += f" {HTTPStatus(response.status).phrase}"
        code = _error_code(body)
        return f"{reason} ({code})" if code else reason


_LOGGED_BODY_CHARS = 500
# What may be quoted from an upstream answer: short identifiers, never free text.
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def _error_code(body: str) -> str | None:
    """`error.code` (else `error.type`) of an OpenAI-style error body, if it is a short identifier."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    for field in ("code", "type"):
        value = error.get(field)
        if isinstance(value, str) and _IDENTIFIER.fullmatch(value):
            return value
    return None


def _entry_bytes(key: tuple[str, int, str], vector: list[float]) -> int:
    """Memory one cache entry holds, estimated: the query text, the list and its float objects, overhead."""
    return sys.getsizeof(key[2]) + sys.getsizeof(vector) + 24 * len(vector) + 256


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
