"""The OpenAI-compatible `/v1/embeddings` upstream (usually LiteLLM), over aiohttp.

One call is one HTTP request for a list of texts. Retries on 429 (honouring Retry-After), 5xx and connection
errors, up to `max_retries`, with exponential backoff and jitter; raises `UpstreamError` (rendered as 502 with
the upstream status) when the upstream fails for good. Batching, the query cache and the dimension checks are
the caller's (`EmbeddingClient`), shared with the built-in model.

An upstream's error body is never relayed: it can quote what it was sent (the Authorization header included),
so clients get its status, reason phrase and error code, and the body goes to the (redacted) log for the
operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from http import HTTPStatus
from typing import Any

import aiohttp
from yarl import URL

from vectorstore.errors import UpstreamError
from vectorstore.observability import metrics

log = logging.getLogger("vectorstore")

_MAX_RETRY_AFTER_SECONDS = 30.0


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class OpenAIUpstream:
    """`await upstream(texts, model=..., dimensions=...)`: the upstream's vectors for `texts`, in order."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_seconds: float = 30.0,
        max_retries: int = 3,
        send_dimensions: bool = False,
        backoff_base_seconds: float = 0.5,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.send_dimensions = send_dimensions
        self.backoff_base_seconds = backoff_base_seconds
        self._session = session
        self._owns_session = session is None
        self.requests = 0

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/embeddings"

    @property
    def shown_url(self) -> str:
        """The URL as messages show it: without user or password, should the spec's base_url carry them."""
        return str(URL(self.url).with_user(None))

    @property
    def name(self) -> str:
        return f"embedding upstream {self.shown_url}"

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_seconds))
            self._owns_session = True
        return self._session

    async def __call__(self, texts: list[str], *, model: str, dimensions: int) -> list[list[float]]:
        body: dict[str, Any] = {"model": model, "input": texts}
        if self.send_dimensions:
            body["dimensions"] = dimensions
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            try:
                return await self._attempt(body, headers)
            except _Retryable as exc:
                if attempt >= self.max_retries:
                    raise UpstreamError(
                        f"{self.name} failed after {attempt + 1} attempt(s): {exc}", upstream_status=exc.status
                    ) from None
                delay = self.backoff_base_seconds * (2**attempt) * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                log.warning("embedding request failed (%s); retry %d in %.2fs", exc, attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1

    @metrics.timed_embedding
    async def _attempt(self, body: dict[str, Any], headers: dict[str, str]) -> list[list[float]]:
        self.requests += 1
        try:
            async with self._get_session().post(self.url, json=body, headers=headers) as response:
                if response.status == 429 or response.status >= 500:
                    reason = await self._failure_reason(response)
                    raise _Retryable(reason, response.status, _retry_after(response.headers.get("Retry-After")))
                if response.status != 200:
                    raise UpstreamError(
                        f"{self.name} answered {await self._failure_reason(response)}", upstream_status=response.status
                    )
                payload = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            # aiohttp's connection errors name the host and the OS error, never anything that was sent.
            raise _Retryable(f"unreachable ({type(exc).__name__}: {exc})" if str(exc) else "timed out", None) from None
        except aiohttp.TooManyRedirects:
            # A redirect loop (or a chain over aiohttp's limit) is the upstream's fault, not a crash of ours: a
            # 502 naming it, as for any other answer we can't use.
            raise UpstreamError(f"{self.name} redirected too many times", upstream_status=None) from None
        except (aiohttp.ClientPayloadError, aiohttp.ContentTypeError, ValueError, RecursionError) as exc:
            log.warning("%s sent an unreadable answer: %s", self.name, exc)
            raise UpstreamError(
                f"{self.name} sent an unreadable answer ({type(exc).__name__})", upstream_status=200
            ) from None
        try:
            items = sorted(payload["data"], key=lambda item: item["index"])
            return [[float(x) for x in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError):
            raise UpstreamError(f"{self.name} sent an answer without data[].embedding", upstream_status=200) from None

    async def _failure_reason(self, response: aiohttp.ClientResponse) -> str:
        """`status 401 Unauthorized (invalid_api_key)`: the status, its reason phrase and the error code of an
        OpenAI-style envelope, which are identifiers. The body itself only reaches the log, redacted."""
        try:
            body = await response.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError):
            body = ""
        log.warning("%s answered status %d: %s", self.name, response.status, body[:_LOGGED_BODY_CHARS])
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


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        return None
