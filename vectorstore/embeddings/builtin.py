"""The embedding model built into the server (`embedding.provider: builtin`): wordllama's `l2_supercat`.

Static token embeddings, averaged: no GPU, no network, a 16 MB weight file inside the `wordllama` wheel, about
10 ms for 1,000 short texts on one core. Its quality is modest (nDCG@10 0.33 on Cranfield against 0.37 for
BM25, docs/benchmarks.md) but real: a newcomer's server, the tests and the benchmarks get semantic search with
nothing else running. It is an optional dependency (`pip install 'vectorstore[builtin]'`, ~100 MB with numpy).

Its default lookup looks for the tokenizer in a folder that doesn't exist and then tries the network
(REFERENCE §8), so it is loaded from the installed package directory with downloads disabled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from config.model import BUILTIN_ALLOWED_DIMENSIONS, BUILTIN_DIMENSIONS, BUILTIN_MODEL
from vectorstore.errors import UpstreamError
from vectorstore.observability import metrics

INSTALL_HINT = "embedding.provider builtin needs the optional dependency: pip install 'vectorstore[builtin]'"


class BuiltinUnavailable(Exception):
    """wordllama (the `builtin` extra) is not installed, or its bundled model can't be loaded."""


def load_model() -> Any:
    """The wordllama model from the installed package, never from the network."""
    try:
        from pathlib import Path

        import wordllama
        from wordllama import WordLlama
    except ImportError:
        raise BuiltinUnavailable(INSTALL_HINT) from None
    try:
        return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True, dim=BUILTIN_DIMENSIONS)
    except Exception as exc:  # wordllama raises plain Exceptions for missing files
        raise BuiltinUnavailable(f"the built-in embedding model can't be loaded: {exc}") from None


class BuiltinModel:
    """`await model(texts, model=..., dimensions=...)`: unit vectors from the built-in model, in order.

    Runs in one thread of its own: the model is fast, and one thread keeps ingestion from taking both cores
    away from searches. Shorter dimensions are the model's Matryoshka prefixes, renormalized.
    """

    name = "the built-in embedding model"

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="builtin-embed")
        self.requests = 0

    def load(self) -> None:
        """Load now (the server does this at startup, so the first search doesn't pay for it)."""
        with self._lock:
            if self._model is None:
                self._model = load_model()

    @metrics.timed_embedding
    async def __call__(self, texts: list[str], *, model: str, dimensions: int) -> list[list[float]]:
        if model != BUILTIN_MODEL or dimensions not in BUILTIN_ALLOWED_DIMENSIONS:
            raise UpstreamError(
                f"{self.name} is {BUILTIN_MODEL!r} with {', '.join(map(str, BUILTIN_ALLOWED_DIMENSIONS))} dimensions;"
                f" this store wants {model!r} with {dimensions}",
                upstream_status=None,
            )
        self.requests += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed, texts, dimensions)

    def _embed(self, texts: list[str], dimensions: int) -> list[list[float]]:
        import numpy as np

        self.load()
        raw = np.asarray(self._model.embed(texts, norm=False), dtype=np.float32)[:, :dimensions]
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        # A text with no known token (empty, only symbols) averages to zero, which has no direction: cosine
        # distance to it is NaN, which pgvector refuses. Give all of them one fixed unit vector instead.
        empty = (norms[:, 0] == 0) | ~np.isfinite(norms[:, 0])
        norms[empty] = 1.0
        unit = raw / norms
        unit[empty] = 0.0
        unit[empty, 0] = 1.0
        return [[float(x) for x in row] for row in unit]

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
