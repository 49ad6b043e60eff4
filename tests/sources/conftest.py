"""Sources tests: a server whose one store is kept in sync with a directory, a git repository or a bucket."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from fakeembed import FakeEmbedder
from server.conftest import READ_KEY, WRITE_KEY, RunningServer, spec_data, start_server, write_spec

from vectorstore.sources.engine import StoreResult
from vectorstore.sources.service import SYNCER

STORE_ID = "vs_sources0001"
OTHER_ID = "vs_sources0002"
MAX_UPLOAD = 20_000
CHUNKING = {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}


def sources_spec(embed_url: str, sources: list[dict[str, Any]], *, interval: str = "0") -> dict[str, Any]:
    data = spec_data(
        embed_url,
        stores=[
            {"name": "docs", "id": STORE_ID, "chunking": CHUNKING, "sources": sources},
            {"name": "other", "id": OTHER_ID, "chunking": CHUNKING},
        ],
    )
    data["server"] = {"max_upload_bytes": MAX_UPLOAD, "ingest_concurrency": 2}
    data["sync"] = {"interval": interval}
    return data


def headers(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def source_status(http: aiohttp.ClientSession, server: RunningServer, store_id: str = STORE_ID) -> dict[str, Any]:
    async with http.get(server.url(f"/v1/vector_stores/{store_id}/sources"), headers=headers(READ_KEY)) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def wait_synced(
    http: aiohttp.ClientSession, server: RunningServer, *, within: float = 30.0, store_id: str = STORE_ID
) -> list[dict[str, Any]]:
    """Poll the status endpoint until every source has finished a sync and none of its files is in progress."""
    deadline = time.monotonic() + within
    while True:
        data: list[dict[str, Any]] = (await source_status(http, server, store_id))["data"]
        if data and all(
            item["status"] in ("ok", "failed", "held") and item["files"]["in_progress"] == 0 for item in data
        ):
            return data
        assert time.monotonic() < deadline, f"sources not synced after {within}s: {data}"
        await asyncio.sleep(0.1)


async def sync_again(server: RunningServer, http: aiohttp.ClientSession) -> list[StoreResult]:
    """One more sync, as the schedule would run it, then wait for its ingestion."""
    results = await server.app[SYNCER].sync_all()
    await wait_synced(http, server)
    return results


def store_table(dsn: str, store_id: str = STORE_ID) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT table_name FROM vector_stores WHERE id = %s", [store_id]).fetchone()
    assert row is not None
    return str(row[0])


def attachments(dsn: str, store_id: str = STORE_ID) -> list[dict[str, Any]]:
    """Every attachment of the store with its File's name and owner, in order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT v.file_id, f.filename, f.owner, v.status, v.attributes, v.last_error, v.replaces"
            " FROM vector_store_files v JOIN files f ON f.id = v.file_id WHERE v.vector_store_id = %s ORDER BY v.seq",
            [store_id],
        ).fetchall()
    keys = ("file_id", "filename", "owner", "status", "attributes", "last_error", "replaces")
    return [dict(zip(keys, row, strict=True)) for row in rows]


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp: the spec refuses volumes there (the server mounts its own /tmp)."""
    directory = Path(tempfile.mkdtemp(prefix="vs-source-", dir="/var/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Mount:
    """A tmpfs at `path` (the tests run as root, as CI does): mounted, unmounted and mounted again at will."""

    path: Path

    def mount(self) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=True)

    @property
    def mounted(self) -> bool:
        return os.path.ismount(self.path)


@pytest.fixture
def tmpfs(outside_tmp: Path) -> Iterator[Mount]:
    assert os.geteuid() == 0, "mounting a tmpfs needs root (CI runs the tests as root)"
    mount = Mount(outside_tmp)
    mount.mount()
    try:
        yield mount
    finally:
        if mount.mounted:
            mount.unmount()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A small source directory: Markdown and text in nested folders."""
    root = tmp_path / "docs"
    (root / "guide").mkdir(parents=True)
    (root / "a.md").write_text("# Alpha\n\nAlpha is the first document about apples.\n")
    (root / "guide" / "b.txt").write_text("Bravo explains bananas in the guide folder.\n")
    (root / "guide" / "c.md").write_text("Charlie covers cherries.\n")
    return root


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def start_with_sources(
    fake_embedder: FakeEmbedder,
    dsn: str,
    spec_path: Path,
    sources: list[dict[str, Any]],
    settings_fields: dict[str, Any] | None = None,
    **options: Any,
) -> RunningServer:
    spec = write_spec(spec_path, sources_spec(fake_embedder.base_url, sources, **options))
    # Relative paths start at the spec's directory; the server's own git clones go beside it, never in the repo.
    return await start_server(
        spec, dsn, spec_dir=spec_path.parent, sources_dir=spec_path.parent / "clones", **(settings_fields or {})
    )


@pytest.fixture
async def handbook(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[RunningServer]:
    """A server whose one source, `handbook`, is the `docs` directory, once its first sync has ingested it;
    stopped after the test, whatever the test did (the set-up most path-source tests share)."""
    server = await start_with_sources(
        fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [{"name": "handbook", "path": str(docs)}]
    )
    try:
        await wait_synced(http, server)
        yield server
    finally:
        await server.stop()
