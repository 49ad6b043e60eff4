"""Rerank a search's best candidates through a Cohere/Jina-compatible endpoint (LiteLLM's `/v1/rerank`).

`POST {base_url}/v1/rerank {model, query, documents: [text], top_n}` answers
`{results: [{index, relevance_score}]}` (REFERENCE §8). The reranker is an improvement, never a dependency:
whatever goes wrong (unreachable, slow past `timeout_seconds`, an error status, an answer that doesn't fit),
`rerank` returns None, the search keeps its fused order, a warning is logged with the reason (never the
endpoint's answer, which may quote our key) and `vectorstore_rerank_fallbacks_total{reason}` counts it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from config.model import Rerank
from vectorstore.observability import metrics

log = logging.getLogger("vectorstore")


@dataclass(frozen=True)
class Ranked:
    index: int
    """Position in the documents sent."""
    score: float
    """The endpoint's relevance score, clamped to 0..1."""


class _Fallback(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reranker:
    def __init__(self, settings: Rerank, api_key: str | None, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self.api_key = api_key
        self._session = session
        self._owns_session = session is None
        self.requests = 0

    @property
    def url(self) -> str:
        return f"{self.settings.base_url.rstrip('/')}/v1/rerank"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def rerank(self, query: str, documents: Sequence[str], top_n: int) -> list[Ranked] | None:
        """The documents' new order, best first (at most `top_n`), or None to keep the current order."""
        if not documents:
            return []
        started = time.perf_counter()
        self.requests += 1
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                ranked = await self._request(query, documents, top_n)
        except _Fallback as exc:
            reason = exc.reason
        except TimeoutError:
            reason = "timeout"
        except aiohttp.ClientError as exc:
            reason = "connect" if isinstance(exc, aiohttp.ClientConnectionError) else "bad_answer"
        else:
            metrics.observe_rerank(time.perf_counter() - started)
            return ranked
        metrics.observe_rerank(time.perf_counter() - started, reason)
        log.warning("rerank endpoint %s failed (%s); keeping the fused order", URL(self.url).with_user(None), reason)
        return None

    async def _request(self, query: str, documents: Sequence[str], top_n: int) -> list[Ranked]:
        body = {"model": self.settings.model, "query": query, "documents": list(documents), "top_n": top_n}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with self._get_session().post(self.url, json=body, headers=headers) as response:
            if response.status != 200:
                status = response.status
                raise _Fallback("status_429" if status == 429 else f"status_{status // 100}xx")
            try:
                payload: Any = await response.json(content_type=None)
            except ValueError:
                raise _Fallback("bad_answer") from None
        return _parse(payload, len(documents), top_n)


def _parse(payload: Any, count: int, top_n: int) -> list[Ranked]:
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
        raise _Fallback("bad_answer")
    ranked: list[Ranked] = []
    seen: set[int] = set()
    for item in results:
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get("relevance_score") if isinstance(item, dict) else None
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < count
            or index in seen
            or isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
        ):
            raise _Fallback("bad_answer")
        seen.add(index)
        ranked.append(Ranked(index, min(1.0, max(0.0, float(score)))))
    # Endpoints sort by score already; sorting again costs nothing and doesn't trust them to.
    ranked.sort(key=lambda item: (-item.score, item.index))
    return ranked[:top_n]
