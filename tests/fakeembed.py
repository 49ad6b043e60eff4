"""A deterministic, OpenAI-compatible embedding upstream served over real HTTP on 127.0.0.1.

`fake_vector(text, dims)` is a unit vector seeded by the text's SHA-256: the same text always gives the same
vector, so a query equal to a stored chunk's text finds that chunk with score 1.0, and tests can compute
expected results without a model. Switches make it misbehave: fail with a status, be slow, answer with the
wrong dimensions, rate-limit with Retry-After, or answer 401 quoting the Authorization header it received.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from localhttp import serve_locally


def fake_vector(text: str, dimensions: int) -> list[float]:
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


@dataclass
class Call:
    model: str
    inputs: list[str]
    authorization: str | None
    body: dict[str, Any]


@dataclass
class FakeEmbedder:
    dimensions: int = 8
    model_dimensions: dict[str, int] = field(default_factory=dict)
    """Per-model dimensions; other models get `dimensions`."""
    fail_status: int | None = None
    fail_times: int = -1
    """How many requests fail with `fail_status` (-1: all of them)."""
    rate_limit_times: int = 0
    retry_after: str = "0"
    delay_seconds: float = 0.0
    wrong_dimensions: bool = False
    reflect_authorization: bool = False
    """Answer 401 quoting the Authorization header it got, as LiteLLM's proxy does for a wrong key."""
    calls: list[Call] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.fail_status = None
        self.fail_times = -1
        self.rate_limit_times = 0
        self.delay_seconds = 0.0
        self.wrong_dimensions = False
        self.reflect_authorization = False
        self.calls.clear()

    @property
    def inputs(self) -> list[str]:
        return [text for call in self.calls for text in call.inputs]

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self.calls.append(Call(body["model"], list(inputs), request.headers.get("Authorization"), body))
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.reflect_authorization:
            received = request.headers.get("Authorization", "")
            return web.json_response(
                {
                    "error": {
                        "message": f"Authentication Error, invalid key. Received: {received}",
                        "type": "auth_error",
                        "code": "401",
                    }
                },
                status=401,
            )
        if self.rate_limit_times > 0:
            self.rate_limit_times -= 1
            return web.json_response(
                {"error": {"message": "rate limited"}}, status=429, headers={"Retry-After": self.retry_after}
            )
        if self.fail_status is not None and self.fail_times != 0:
            if self.fail_times > 0:
                self.fail_times -= 1
            return web.json_response({"error": {"message": "upstream says no"}}, status=self.fail_status)
        dims = body.get("dimensions") or self.model_dimensions.get(body["model"], self.dimensions)
        if self.wrong_dimensions:
            dims += 1
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(text, dims)} for i, text in enumerate(inputs)
        ]
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 0, "total_tokens": 0}}
        )

    async def start(self) -> FakeEmbedder:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner, self.port = await serve_locally(app)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
