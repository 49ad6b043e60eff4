"""The built-in embedder: real (small) semantic vectors from inside the server, with no upstream at all."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, RunningServer, spec_data, start_server, write_spec

from config.model import BUILTIN_MODEL
from vectorstore.embeddings.builtin import BuiltinModel
from vectorstore.errors import UpstreamError

DOCS = {
    "aircraft.md": "The airplane's wings generate lift as air flows over the airfoil during flight.",
    "cooking.md": "Simmer the tomato sauce with garlic and basil for twenty minutes before serving.",
    "finance.md": "The central bank raised interest rates to slow inflation in the economy.",
}


async def test_vectors_are_unit_length_and_finite() -> None:
    model = BuiltinModel()
    try:
        vectors = await model(["lift on a wing", "", "!!!", "x" * 20000], model=BUILTIN_MODEL, dimensions=256)
        assert [len(vector) for vector in vectors] == [256] * 4
        for vector in vectors:
            assert all(math.isfinite(x) for x in vector)
            assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)
        [short] = await model(["lift on a wing"], model=BUILTIN_MODEL, dimensions=64)
        assert len(short) == 64
        with pytest.raises(UpstreamError):
            await model(["x"], model="text-embedding-3-small", dimensions=256)
    finally:
        await model.close()


@pytest.fixture
async def builtin_server(fresh_dsn: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    data = spec_data("http://127.0.0.1:9", stores=[{"name": "docs", "id": "vs_builtin01"}])
    data["embedding"] = {"provider": "builtin"}
    running = await start_server(write_spec(tmp_path / "stack.yaml", data), fresh_dsn, embedding_api_key=None)
    try:
        yield running
    finally:
        await running.stop()


async def test_a_server_with_no_upstream_searches_by_meaning(builtin_server: RunningServer) -> None:
    async with AsyncOpenAI(base_url=builtin_server.url("/v1"), api_key=WRITE_KEY, max_retries=0) as client:
        for name, text in DOCS.items():
            done = await client.vector_stores.files.upload_and_poll(
                vector_store_id="vs_builtin01", file=(name, text.encode())
            )
            assert done.status == "completed"
        # No word in common with the aircraft document: only the meaning can find it.
        page = await client.vector_stores.search(
            "vs_builtin01", query="how do aeroplanes stay in the air", extra_body={"search_mode": "vector"}
        )
        assert page.data[0].filename == "aircraft.md"
        page = await client.vector_stores.search("vs_builtin01", query="recipe for pasta sauce")
        assert page.data[0].filename == "cooking.md"
