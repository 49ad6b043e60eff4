"""A running server with ingestion for the API tests: a fresh database, the fake embedding upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, RunningServer, spec_data, start_server, write_spec

STORE_ID = "vs_ingest0001"
MAX_UPLOAD = 200_000


def ingest_spec(embed_url: str, **server: Any) -> dict[str, Any]:
    data = spec_data(
        embed_url,
        stores=[
            {"name": "docs", "id": STORE_ID, "chunking": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}}
        ],
    )
    data["server"] = {"max_upload_bytes": MAX_UPLOAD, "ingest_concurrency": 2, **server}
    return data


@pytest.fixture
async def ingest_server(fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path) -> AsyncIterator[RunningServer]:
    spec = write_spec(tmp_path / "stack.yaml", ingest_spec(fake_embedder.base_url))
    running = await start_server(spec, fresh_dsn)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def oai(ingest_server: RunningServer) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=ingest_server.url("/v1"), api_key=WRITE_KEY, max_retries=0, timeout=30)
    try:
        yield client
    finally:
        await client.close()
