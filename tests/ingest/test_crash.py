"""The server as a real process: kill -9 in the middle of ingesting a file, then SIGTERM during one.

A slow fake upstream keeps a file's ingestion running for seconds, with some of its chunks already
written by COPY inside the open transaction. After kill -9 none of them may be visible; after a restart
the queue gives the file to the new process, which finishes it. SIGTERM lets the current file finish.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, write_spec
from serverprocess import ServerProcess

from ingest.conftest import STORE_ID, ingest_spec
from vectorstore.ingest.chunking import chunk_text
from vectorstore.storage import tables
from vectorstore.storage.strategy import Strategy

# 100-token chunks without overlap, two per embedding request, 0.4 s per request: ~8 s for 40 chunks.
PARAGRAPH = "This sentence is about the crash test and what survives a crash of the server process. "
TEXT = "\n\n".join(PARAGRAPH * 5 for _ in range(40))
EXPECTED_CHUNKS = len(list(chunk_text(TEXT, Strategy(100, 0))))
STATIC = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}


@pytest.fixture
def crash_server(fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path) -> Iterator[ServerProcess]:
    data = ingest_spec(fake_embedder.base_url)
    data["embedding"]["batch_size"] = 2
    write_spec(tmp_path / "stack.yaml", data)
    server = ServerProcess(tmp_path / "stack.yaml", fresh_dsn, tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def crash_client(crash_server: ServerProcess) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=crash_server.base_url + "/v1", api_key=WRITE_KEY, max_retries=0, timeout=30)
    try:
        yield client
    finally:
        await client.close()


def _visible_chunks(dsn: str, file_id: str) -> int:
    table = tables.table_name(STORE_ID)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{table}" WHERE file_id = %s', [file_id]).fetchone()
    assert row is not None
    return int(row[0])


def _table_bytes(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_relation_size(%s::regclass)", [tables.table_name(STORE_ID)]).fetchone()
    assert row is not None
    return int(row[0])


async def _wait_for_calls(embedder: FakeEmbedder, count: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while len(embedder.calls) < count:
        assert time.monotonic() < deadline, f"only {len(embedder.calls)} embedding calls"
        await asyncio.sleep(0.05)


async def test_kill_9_mid_ingestion_leaves_nothing_then_resumes(
    crash_server: ServerProcess, crash_client: AsyncOpenAI, fake_embedder: FakeEmbedder
) -> None:
    crash_server.start()
    await crash_server.wait_ready()
    uploaded = await crash_client.files.create(file=("crash.md", TEXT.encode(), "text/markdown"), purpose="assistants")
    fake_embedder.delay_seconds = 0.4
    await crash_client.vector_stores.files.create(
        vector_store_id=STORE_ID,
        file_id=uploaded.id,
        chunking_strategy=STATIC,  # type: ignore[arg-type]
    )
    # Several batches embedded (so several COPYs done inside the open transaction), then the process dies.
    await _wait_for_calls(fake_embedder, 6)
    # COPY has written pages for the first batches (uncommitted, so invisible): the table is no longer empty.
    assert _table_bytes(crash_server.dsn) > 0
    assert _visible_chunks(crash_server.dsn, uploaded.id) == 0
    assert crash_server.kill(signal.SIGKILL) == -signal.SIGKILL
    assert _visible_chunks(crash_server.dsn, uploaded.id) == 0

    fake_embedder.delay_seconds = 0.0
    crash_server.start()
    await crash_server.wait_ready()
    done = await asyncio.wait_for(
        crash_client.vector_stores.files.poll(uploaded.id, vector_store_id=STORE_ID), timeout=60
    )
    assert done.status == "completed", crash_server.log_path.read_text()[-4000:]
    assert EXPECTED_CHUNKS >= 20
    assert _visible_chunks(crash_server.dsn, uploaded.id) == EXPECTED_CHUNKS
    store = await crash_client.vector_stores.retrieve(STORE_ID)
    assert (store.file_counts.completed, store.file_counts.total) == (1, 1)
    with psycopg.connect(crash_server.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ingest_jobs").fetchone() == (0,)


async def test_sigterm_lets_the_current_file_finish(
    crash_server: ServerProcess, crash_client: AsyncOpenAI, fake_embedder: FakeEmbedder
) -> None:
    crash_server.start()
    await crash_server.wait_ready()
    uploaded = await crash_client.files.create(file=("term.md", TEXT.encode(), "text/markdown"), purpose="assistants")
    fake_embedder.delay_seconds = 0.1
    await crash_client.vector_stores.files.create(
        vector_store_id=STORE_ID,
        file_id=uploaded.id,
        chunking_strategy=STATIC,  # type: ignore[arg-type]
    )
    await _wait_for_calls(fake_embedder, 3)
    code = await asyncio.to_thread(crash_server.kill, signal.SIGTERM)
    assert code == 0, crash_server.log_path.read_text()[-2000:]
    # The process finished the file before exiting: complete and visible, nothing left queued.
    assert _visible_chunks(crash_server.dsn, uploaded.id) == EXPECTED_CHUNKS
    with psycopg.connect(crash_server.dsn) as conn:
        status = conn.execute("SELECT status FROM vector_store_files WHERE file_id = %s", [uploaded.id]).fetchone()
        assert status == ("completed",)
        assert conn.execute("SELECT count(*) FROM ingest_jobs").fetchone() == (0,)
