"""kill -9 of the migrating server, then a restart: the build continues where the new table stops, and no chunk
(or re-chunked file) it already held is embedded again (counted at the fake upstream). The server as a real
process, as in tests/ingest/test_crash.py."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from fakeembed import FakeEmbedder
from server.conftest import write_spec
from serverprocess import ServerProcess

from migration.conftest import (
    NEW_DIMS,
    NEW_MODEL,
    NEW_MODEL_STORE,
    STORE_ID,
    add_rows,
    migration_spec,
    wait_phase,
)
from migration.test_rechunk import NEW, NEW_CHUNKING, OLD, attach_documents, cut, document
from vectorstore.migration import records

ROWS = 400


def _spec(embed_url: str, *, new: bool) -> dict[str, Any]:
    data = migration_spec(embed_url, store=NEW_MODEL_STORE if new else None)
    # Small requests, one at a time: many committed batches before the kill.
    data["embedding"]["batch_size"] = 8
    data["migration"] = {"concurrency": 1}
    return data


async def _resume(server: ServerProcess, dsn: str, fake_embedder: FakeEmbedder) -> None:
    """Restart the killed server with an upstream that no longer drags, and wait for the migration to finish."""
    fake_embedder.delay_seconds = 0
    server.start()
    await server.wait_ready()
    done = await wait_phase(dsn, "done", "paused", seconds=60)
    assert done.phase == "done", done.last_error


async def _kill_mid_build(
    server: ServerProcess, dsn: str, reached: Callable[[records.Migration], bool], what: str
) -> records.Migration:
    """Wait (90 s at most) until the migration, still building, has `reached` its mark, then kill -9 the server."""
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, f"the build never {what}"
        migration = await wait_phase(dsn, "building", "swapping", "done")
        assert migration.phase == "building"
        if reached(migration):
            break
        await asyncio.sleep(0.05)
    assert server.kill(signal.SIGKILL) == -signal.SIGKILL
    return migration


async def test_kill_9_mid_migration_resumes_without_embedding_again(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    fake_embedder.model_dimensions[NEW_MODEL] = NEW_DIMS
    path = tmp_path / "stack.yaml"
    write_spec(path, _spec(fake_embedder.base_url, new=False))
    server = ServerProcess(path, fresh_dsn, tmp_path / "server.log")
    try:
        server.start()
        await server.wait_ready()
        async with aiohttp.ClientSession() as http:
            await add_rows(http, server.base_url, 0, ROWS)
        server.kill(signal.SIGTERM)

        write_spec(path, _spec(fake_embedder.base_url, new=True))
        fake_embedder.delay_seconds = 0.05
        server.start()
        await server.wait_ready()
        migration = await _kill_mid_build(server, fresh_dsn, lambda m: m.chunks_done >= 80, "reached 80 chunks")
        assert migration.build_table is not None
        async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
            cur = await conn.execute(f'SELECT content FROM "{migration.build_table}"')
            committed = {str(row[0]) for row in await cur.fetchall()}
        assert 80 <= len(committed) < ROWS
        before_restart = len(fake_embedder.calls)

        await _resume(server, fresh_dsn, fake_embedder)
        after = [
            text for call in fake_embedder.calls[before_restart:] if call.model == NEW_MODEL for text in call.inputs
        ]
        assert not committed & set(after), "chunks already in the new generation were embedded again"
        assert len(after) == ROWS - len(committed)
        async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
            cur = await conn.execute("SELECT dimensions, table_name FROM vector_stores WHERE id = %s", [STORE_ID])
            row = await cur.fetchone()
            assert row is not None and row[0] == NEW_DIMS
            cur = await conn.execute(f'SELECT count(*) FROM "{row[1]}"')
            assert await cur.fetchone() == (ROWS,)
    finally:
        server.stop()


async def test_kill_9_mid_rechunk_resumes_without_cutting_or_embedding_a_file_again(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    count = 10
    path = tmp_path / "stack.yaml"
    write_spec(path, migration_spec(fake_embedder.base_url))
    server = ServerProcess(path, fresh_dsn, tmp_path / "server.log")
    try:
        server.start()
        await server.wait_ready()
        ids = await attach_documents(server.base_url, count)
        server.kill(signal.SIGTERM)

        # Requests of 2 texts, one at a time: about one file a committed batch.
        data = migration_spec(fake_embedder.base_url, store=NEW_CHUNKING)
        data["embedding"]["batch_size"] = 2
        data["migration"] = {"concurrency": 1}
        write_spec(path, data)
        fake_embedder.delay_seconds = 0.2
        fake_embedder.calls.clear()
        server.start()
        await server.wait_ready()
        await _kill_mid_build(server, fresh_dsn, lambda m: m.files_done >= 3, "re-chunked 3 files")
        async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
            cur = await conn.execute("SELECT file_id FROM store_migration_files")
            committed = {str(row[0]) for row in await cur.fetchall()}
        assert 3 <= len(committed) < count
        before_restart = len(fake_embedder.calls)

        await _resume(server, fresh_dsn, fake_embedder)
        after = [text for call in fake_embedder.calls[before_restart:] for text in call.inputs]

        def changed(n: int) -> list[str]:
            old = cut(document(10 + n), OLD)
            return [text for text in cut(document(10 + n), NEW) if text not in old]

        redone = [text for n, file_id in enumerate(ids) if file_id in committed for text in changed(n)]
        assert not set(redone) & set(after), "files already in the new generation were cut and embedded again"
        left = [text for n, file_id in enumerate(ids) if file_id not in committed for text in changed(n)]
        assert sorted(after) == sorted(left)
        async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
            cur = await conn.execute("SELECT table_name FROM vector_stores WHERE id = %s", [STORE_ID])
            row = await cur.fetchone()
            assert row is not None
            for n, file_id in enumerate(ids):
                cur = await conn.execute(
                    f'SELECT content FROM "{row[0]}" WHERE file_id = %s ORDER BY chunk_index', [file_id]
                )
                assert [str(r[0]) for r in await cur.fetchall()] == cut(document(10 + n), NEW)
    finally:
        server.stop()
