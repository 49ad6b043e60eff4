"""Two replicas on one database share the ingestion queue: every file is ingested exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, start_server, write_spec

from ingest.conftest import STORE_ID, ingest_spec
from vectorstore.ingest.service import WORKER
from vectorstore.storage import tables


async def test_two_replicas_share_the_queue(fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "stack.yaml", ingest_spec(fake_embedder.base_url, ingest_concurrency=1))
    first, second = await asyncio.gather(start_server(spec, fresh_dsn), start_server(spec, fresh_dsn))
    client = AsyncOpenAI(base_url=first.url("/v1"), api_key=WRITE_KEY, max_retries=0, timeout=30)
    try:
        fake_embedder.delay_seconds = 0.2
        uploaded = [
            await client.files.create(file=(f"r{i}.txt", f"File {i}.".encode(), "text/plain"), purpose="assistants")
            for i in range(8)
        ]
        batch = await client.vector_stores.file_batches.create_and_poll(STORE_ID, file_ids=[f.id for f in uploaded])
        assert batch.file_counts.completed == 8
        done = [server.app[WORKER].completed for server in (first, second)]
        assert sum(done) == 8 and min(done) >= 1, done
        with psycopg.connect(fresh_dsn) as conn:
            rows = conn.execute(
                f'SELECT file_id, count(*) FROM "{tables.table_name(STORE_ID)}" GROUP BY file_id'
            ).fetchall()
        assert sorted(rows) == sorted((f.id, 1) for f in uploaded)
    finally:
        await client.close()
        await first.stop()
        await second.stop()
