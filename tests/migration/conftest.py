"""Helpers for the online-migration tests: a store with files and /embeddings rows, a search load, polling.

Every test runs on the real database and the fake upstream over HTTP; the "new model" is another model name the
fake upstream answers with other dimensions (`fake-small`, 4 dimensions, against the spec's 8).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, RunningServer, auth, spec_data, start_server, write_spec

from vectorstore.migration import records
from vectorstore.storage import stores

STORE_ID = "vs_migrate0001"
NEW_MODEL = "fake-small"
NEW_DIMS = 4
UPLOAD_SECONDS = 60.0
LOAD_SECONDS = 180.0


def migration_spec(embed_url: str, *, store: Mapping[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    declared = {"name": "docs", "id": STORE_ID, "chunking": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}
    data = spec_data(embed_url, stores=[{**declared, **(store or {})}])
    data["server"] = {"ingest_concurrency": 2}
    data.update(top)
    return data


NEW_MODEL_STORE: dict[str, Any] = {"embedding": {"model": NEW_MODEL, "dimensions": NEW_DIMS}}


def row_text(i: int) -> str:
    return f"row {i} about topic {i % 7} with the word lantern{i}"


async def add_rows(http: aiohttp.ClientSession, base_url: str, start: int, count: int) -> list[str]:
    """Rows through the prototype's /embeddings batch route (the server embeds them): the bulk of the store."""
    ids: list[str] = []
    for first in range(start, start + count, 100):
        batch = [{"content": row_text(i), "metadata": {"n": i}} for i in range(first, min(first + 100, start + count))]
        async with http.post(
            f"{base_url}/v1/vector_stores/{STORE_ID}/embeddings/batch", json={"embeddings": batch}, headers=auth()
        ) as response:
            assert response.status == 200, await response.text()
            ids += [item["id"] for item in (await response.json())["data"]]
    return ids


async def upload(client: AsyncOpenAI, name: str, text: str, **attributes: Any) -> str:
    uploaded = await client.files.create(file=(name, text.encode()), purpose="assistants")
    # The SDK's poll loop has no deadline of its own: bound it, so a stuck ingest fails the test instead of hanging it.
    attached = await asyncio.wait_for(
        client.vector_stores.files.create_and_poll(
            uploaded.id, vector_store_id=STORE_ID, attributes=attributes or None, poll_interval_ms=100
        ),
        timeout=UPLOAD_SECONDS,
    )
    assert attached.status == "completed", attached.last_error
    return uploaded.id


def openai_client(base_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url + "/v1", api_key=WRITE_KEY, max_retries=0, timeout=30)


@dataclass
class SearchLoad:
    """Searches in a loop on each server until stopped (or until its deadline): every answer must be a 200, and
    each query that found results before the change must keep finding some. Use it through `running()`, which
    stops it in a `finally`: a failed assertion must not leave a task spinning in the session's event loop."""

    clients: list[AsyncOpenAI]
    queries: list[str]
    seconds: float = LOAD_SECONDS
    done: int = 0
    errors: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _one(self, client: AsyncOpenAI, offset: int, deadline: float) -> None:
        i = offset
        while not self._stop.is_set():
            if time.monotonic() > deadline:
                self.errors.append(f"search load still running after {self.seconds}s: never stopped")
                return
            query = self.queries[i % len(self.queries)]
            i += 1
            try:
                page = await client.vector_stores.search(STORE_ID, query=query, max_num_results=3)
            except Exception as exc:
                self.errors.append(f"{query!r}: {exc!r}")
                # A failing server must not turn this loop into a busy spin that starves the servers it tests.
                await asyncio.sleep(0.1)
                continue
            if not page.data:
                self.empty.append(query)
            self.done += 1
            await asyncio.sleep(0.005)

    async def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        await asyncio.gather(*(self._one(client, n * 3, deadline) for n, client in enumerate(self.clients)))

    def stop(self) -> None:
        self._stop.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SearchLoad]:
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            self.stop()
            # On a timeout wait_for cancels it; the test reports its own failure.
            with suppress(TimeoutError):
                await asyncio.wait_for(task, timeout=30)


Serve = Callable[..., AbstractAsyncContextManager[RunningServer]]
"""`serve(store_fields, **top_level)`: a server on the test's database with the migration spec, changed so."""


@pytest.fixture
def serve(fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path) -> Serve:
    fake_embedder.model_dimensions[NEW_MODEL] = NEW_DIMS
    count = 0

    @asynccontextmanager
    async def run(store: Mapping[str, Any] | None = None, **top: Any) -> AsyncIterator[RunningServer]:
        nonlocal count
        count += 1
        spec = write_spec(tmp_path / f"s{count}.yaml", migration_spec(fake_embedder.base_url, store=store, **top))
        server = await start_server(spec, fresh_dsn)
        try:
            yield server
        finally:
            await server.stop()

    return run


async def migration_of(dsn: str) -> records.Migration | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await records.get(conn, STORE_ID)


async def record_of(dsn: str) -> stores.StoreRecord:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        record = await stores.get(conn, STORE_ID)
    assert record is not None
    return record


async def wait_phase(dsn: str, *phases: str, seconds: float = 90.0) -> records.Migration:
    deadline = time.monotonic() + seconds
    migration = None
    while time.monotonic() < deadline:
        migration = await migration_of(dsn)
        if migration is not None and migration.phase in phases:
            return migration
        await asyncio.sleep(0.1)
    raise AssertionError(f"migration never reached {phases}: {migration}")


async def table_exists(dsn: str, table: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        row = await cur.fetchone()
    return bool(row and row[0])
