"""A deterministic Cohere/Jina-compatible rerank endpoint over real HTTP on 127.0.0.1.

`POST /v1/rerank {model, query, documents, top_n}` answers `{results: [{index, relevance_score}]}`, scoring each
document by the share of the query's words it contains, ties broken in reverse order of position (so a
reranked page visibly differs from the order it was sent in). Switches make it misbehave: fail with a status,
be slow, or answer with something that isn't a ranking.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from localhttp import serve_locally


def overlap(query: str, document: str) -> float:
    words = set(re.findall(r"\w+", query.lower()))
    return len(words & set(re.findall(r"\w+", document.lower()))) / max(1, len(words))


@dataclass
class FakeReranker:
    fail_status: int | None = None
    delay_seconds: float = 0.0
    bad_answer: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _rerank(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        self.authorizations.append(request.headers.get("Authorization"))
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.fail_status is not None:
            return web.json_response({"error": {"message": "reranker says no"}}, status=self.fail_status)
        if self.bad_answer:
            return web.json_response({"results": [{"index": 999, "relevance_score": "high"}]})
        documents: list[str] = body["documents"]
        order = sorted(range(len(documents)), key=lambda i: (-overlap(body["query"], documents[i]), -i))
        results = [{"index": i, "relevance_score": overlap(body["query"], documents[i])} for i in order]
        return web.json_response({"results": results[: body.get("top_n") or len(results)]})

    async def start(self) -> FakeReranker:
        app = web.Application()
        app.router.add_post("/v1/rerank", self._rerank)
        self._runner, self.port = await serve_locally(app)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
