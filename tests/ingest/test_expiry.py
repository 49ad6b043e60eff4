"""`server.unattached_file_ttl_hours`: never-attached uploads go after the TTL; attached ones, even detached
since, never do; a file being attached at that moment is skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import psycopg
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, RunningServer, start_server, write_spec

from ingest.conftest import STORE_ID, ingest_spec
from vectorstore.ingest.expiry import SWEEPER
from vectorstore.storage import files


@pytest.fixture
async def expiring(fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path) -> AsyncIterator[RunningServer]:
    spec = write_spec(tmp_path / "stack.yaml", ingest_spec(fake_embedder.base_url, unattached_file_ttl_hours=1))
    running = await start_server(spec, fresh_dsn)
    try:
        yield running
    finally:
        await running.stop()


def _age(dsn: str, file_ids: list[str], hours: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE files SET created_at = %s WHERE id = ANY(%s)", [int(time.time() - hours * 3600), file_ids])


async def _exists(client: AsyncOpenAI, file_id: str) -> bool:
    try:
        await client.files.retrieve(file_id)
    except openai.NotFoundError:
        return False
    return True


async def test_never_attached_uploads_expire_and_nothing_else(expiring: RunningServer) -> None:
    client = AsyncOpenAI(base_url=expiring.url("/v1"), api_key=WRITE_KEY, max_retries=0)
    try:

        async def upload(name: str) -> str:
            created = await client.files.create(file=(name, name.encode(), "text/plain"), purpose="assistants")
            return created.id

        orphan, detached, attached, recent = [await upload(n) for n in ("o.txt", "d.txt", "a.txt", "r.txt")]
        for file_id in (detached, attached):
            await client.vector_stores.files.create_and_poll(file_id, vector_store_id=STORE_ID)
        await client.vector_stores.files.delete(detached, vector_store_id=STORE_ID)
        _age(expiring.dsn, [orphan, detached, attached], hours=1.5)
        _age(expiring.dsn, [recent], hours=0.5)
        # The replica's own background sweep, woken rather than waited for.
        expiring.app[SWEEPER].wake()
        for _ in range(200):
            if not await _exists(client, orphan):
                break
            await asyncio.sleep(0.05)
        assert not await _exists(client, orphan)
        assert all([await _exists(client, f) for f in (detached, attached, recent)])
        assert (await client.vector_stores.files.retrieve(attached, vector_store_id=STORE_ID)).status == "completed"
    finally:
        await client.close()


async def test_a_file_being_attached_is_skipped(expiring: RunningServer) -> None:
    """The attach's foreign key check holds KEY SHARE on the file's row: the sweep passes over it, then the
    attach's commit makes the file attached for good."""
    async with AsyncOpenAI(base_url=expiring.url("/v1"), api_key=WRITE_KEY, max_retries=0) as client:
        file_id = (await client.files.create(file=("x.txt", b"x", "text/plain"), purpose="assistants")).id
    _age(expiring.dsn, [file_id], hours=2)
    cutoff = int(time.time()) - 3600
    async with (
        await psycopg.AsyncConnection.connect(expiring.dsn) as attaching,
        await psycopg.AsyncConnection.connect(expiring.dsn) as sweeping,
    ):
        await attaching.execute("SELECT 1 FROM files WHERE id = %s FOR KEY SHARE", [file_id])
        async with sweeping.transaction():
            assert await files.expire_unattached(sweeping, cutoff) == []
        await attaching.execute("UPDATE files SET attached_once = true WHERE id = %s", [file_id])
        await attaching.commit()
        async with sweeping.transaction():
            assert await files.expire_unattached(sweeping, cutoff) == []


async def test_off_by_default(ingest_server: RunningServer) -> None:
    assert ingest_server.spec.server.unattached_file_ttl_hours == 0
    assert SWEEPER not in ingest_server.app
