"""A `path` source: the directory's files become the store's contents, and stay in step with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from fakeembed import FakeEmbedder
from server.conftest import RunningServer

from sources.conftest import (
    STORE_ID,
    attachments,
    headers,
    start_with_sources,
    sync_again,
    wait_synced,
)


async def search(http: aiohttp.ClientSession, base: str, query: str, **body: object) -> list[dict[str, Any]]:
    async with http.post(
        f"{base}/v1/vector_stores/{STORE_ID}/search", json={"query": query, **body}, headers=headers()
    ) as response:
        assert response.status == 200, await response.text()
        data: list[dict[str, Any]] = (await response.json())["data"]
        return data


async def test_first_sync_ingests_every_file_with_its_path_and_attributes(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    source = {"name": "handbook", "path": str(docs), "attributes": {"team": "docs", "public": True}}
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source])
    try:
        (status,) = await wait_synced(http, server)
        assert status["status"] == "ok" and status["type"] == "path" and status["location"] == str(docs)
        assert status["last_sync"]["added"] == 3 and status["last_sync"]["failed"] == 0
        assert status["files"] == {"in_progress": 0, "completed": 3, "failed": 0, "total": 3}
        rows = attachments(fresh_dsn)
        assert sorted(row["filename"] for row in rows) == ["a.md", "guide/b.txt", "guide/c.md"]
        for row in rows:
            assert row["status"] == "completed" and row["owner"] == "source:handbook"
            assert row["attributes"] == {"team": "docs", "public": True, "source": "handbook", "path": row["filename"]}
        hits = await search(
            http,
            server.base_url,
            "Bravo explains bananas in the guide folder.",
            filters={"type": "eq", "key": "source", "value": "handbook"},
        )
        assert hits[0]["filename"] == "guide/b.txt" and hits[0]["attributes"]["path"] == "guide/b.txt"
    finally:
        await server.stop()


def _ids(dsn: str) -> dict[str, str]:
    return {row["filename"]: row["file_id"] for row in attachments(dsn)}


def _write_counts(dsn: str) -> tuple[int, ...]:
    """Rows and sequence positions that any write by a sync or the worker would move."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM files), (SELECT COALESCE(max(seq), 0) FROM files),"
            " (SELECT count(*) FROM vector_store_files), (SELECT COALESCE(max(seq), 0) FROM vector_store_files),"
            " (SELECT count(*) FROM ingest_jobs), (SELECT COALESCE(sum(synced_at), 0) FROM source_files)"
        ).fetchone()
    assert row is not None
    return tuple(int(value) for value in row)


async def test_resync_of_unchanged_files_costs_no_embedding_and_no_write(
    handbook: RunningServer, fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, http: aiohttp.ClientSession
) -> None:
    before, ids = _write_counts(fresh_dsn), _ids(fresh_dsn)
    fake_embedder.calls.clear()
    (result,) = await sync_again(handbook, http)
    assert (result.sources[0].unchanged, result.sources[0].changes) == (3, 0)
    assert fake_embedder.calls == []
    assert _write_counts(fresh_dsn) == before and _ids(fresh_dsn) == ids

    # Touched but not changed (a new git checkout does this to every file): read and hashed again, still
    # no embedding and the same files; only the recorded fingerprint moves.
    import os

    os.utime(docs / "a.md", ns=(1, 1))
    (result,) = await sync_again(handbook, http)
    assert (result.sources[0].unchanged, result.sources[0].changes) == (3, 0)
    assert fake_embedder.calls == [] and _ids(fresh_dsn) == ids


async def test_a_changed_file_replaces_its_old_version_atomically(
    handbook: RunningServer, fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, http: aiohttp.ClientSession
) -> None:
    import asyncio

    import psycopg

    from sources.conftest import store_table

    try:
        old_id = _ids(fresh_dsn)["a.md"]
        table = store_table(fresh_dsn)
        (docs / "a.md").write_text("# Alpha, second edition\n\n" + "Apples are red and green. " * 200)
        fake_embedder.calls.clear()
        fake_embedder.delay_seconds = 0.3  # the new version's ingestion takes a while: searches run meanwhile
        sync = asyncio.create_task(sync_again(handbook, http))
        seen: set[tuple[str, ...]] = set()
        query = f"SELECT DISTINCT file_id FROM {table} WHERE attributes->>'path' = 'a.md'"
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
            while True:
                done = sync.done()
                rows = await (await conn.execute(query)).fetchall()
                seen.add(tuple(sorted(str(row[0]) for row in rows)))
                if done:
                    break
                await asyncio.sleep(0.02)
        (result,) = await sync
        assert (result.sources[0].updated, result.sources[0].unchanged) == (1, 2)
        new_id = _ids(fresh_dsn)["a.md"]
        assert new_id != old_id
        # Every snapshot showed exactly one version of the path: the old one, then the new one.
        assert seen <= {(old_id,), (new_id,)} and (new_id,) in seen and (old_id,) in seen, seen
        # Only the changed file was embedded, and the old version's File is gone with its chunks.
        assert fake_embedder.inputs and all("Apples" in text or "Alpha" in text for text in fake_embedder.inputs)
        with psycopg.connect(fresh_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM files WHERE id = %s", [old_id]).fetchone() == (0,)
        assert [row["filename"] for row in attachments(fresh_dsn)].count("a.md") == 1
    finally:
        fake_embedder.delay_seconds = 0.0


async def test_a_new_version_that_fails_leaves_the_old_one_searchable(
    handbook: RunningServer, fresh_dsn: str, docs: Path, http: aiohttp.ClientSession
) -> None:
    old_id = _ids(fresh_dsn)["a.md"]
    (docs / "a.md").write_bytes(b"not UTF-8 at all: \x80\x81\xc3\x28")
    await sync_again(handbook, http)
    versions = [row for row in attachments(fresh_dsn) if row["filename"] == "a.md"]
    assert [row["status"] for row in versions] == ["completed", "failed"]
    assert versions[0]["file_id"] == old_id and versions[1]["last_error"]["code"] == "invalid_file"
    hits = await search(http, handbook.base_url, "# Alpha\n\nAlpha is the first document about apples.")
    assert hits[0]["file_id"] == old_id
    (status,) = await wait_synced(http, handbook)
    assert status["files"]["failed"] == 1

    # Fixed in the source: the new version replaces both the failed one and the old one.
    (docs / "a.md").write_text("Alpha, fixed.\n")
    await sync_again(handbook, http)
    versions = [row for row in attachments(fresh_dsn) if row["filename"] == "a.md"]
    assert [row["status"] for row in versions] == ["completed"] and versions[0]["file_id"] != old_id


async def test_vanished_and_excluded_files_are_deleted_but_api_uploads_are_never_touched(
    handbook: RunningServer,
    fresh_dsn: str,
    fake_embedder: FakeEmbedder,
    docs: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    from openai import AsyncOpenAI
    from server.conftest import WRITE_KEY

    from config import load_spec
    from sources.conftest import sources_spec
    from vectorstore.sources.engine import Syncer
    from vectorstore.sources.service import SYNCER

    client = AsyncOpenAI(base_url=handbook.url("/v1"), api_key=WRITE_KEY, max_retries=0)
    try:
        uploaded = await client.vector_stores.files.upload_and_poll(
            vector_store_id=STORE_ID, file=("a.md", b"An upload by hand, named like a synced file.")
        )
        assert uploaded.status == "completed"
        (docs / "guide" / "c.md").unlink()
        (result,) = await sync_again(handbook, http)
        assert result.sources[0].deleted == 1
        assert sorted(row["filename"] for row in attachments(fresh_dsn)) == ["a.md", "a.md", "guide/b.txt"]

        # The spec now excludes guide/**: what it drops leaves the store at the next sync.
        narrowed = sources_spec(
            fake_embedder.base_url, [{"name": "handbook", "path": str(docs), "exclude": ["guide/**"]}]
        )
        (tmp_path / "narrow.yaml").write_text(__import__("json").dumps(narrowed))
        syncer: Syncer = handbook.app[SYNCER]
        syncer.spec = load_spec(tmp_path / "narrow.yaml")
        (result,) = await sync_again(handbook, http)
        assert (result.sources[0].deleted, result.sources[0].unchanged) == (1, 1)
        rows = attachments(fresh_dsn)
        assert sorted((row["filename"], row["owner"]) for row in rows) == [
            ("a.md", "source:handbook"),
            ("a.md", "writer"),
        ]
        assert uploaded.id in {row["file_id"] for row in rows}
    finally:
        await client.close()


async def test_a_file_detached_through_the_api_comes_back_at_the_next_sync(
    handbook: RunningServer, fresh_dsn: str, http: aiohttp.ClientSession
) -> None:
    file_id = _ids(fresh_dsn)["guide/b.txt"]
    async with http.delete(
        handbook.url(f"/v1/vector_stores/{STORE_ID}/files/{file_id}"), headers=headers()
    ) as response:
        assert response.status == 200
    (result,) = await sync_again(handbook, http)
    assert (result.sources[0].added, result.sources[0].unchanged) == (1, 2)
    assert sorted(_ids(fresh_dsn)) == ["a.md", "guide/b.txt", "guide/c.md"]


async def test_the_schedule_syncs_again_every_interval(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    import asyncio
    import time

    server = await start_with_sources(
        fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [{"name": "handbook", "path": str(docs)}], interval="1s"
    )
    try:
        await wait_synced(http, server)
        await asyncio.to_thread((docs / "later.md").write_text, "Added while the server runs.\n")
        deadline = time.monotonic() + 20
        while "later.md" not in {row["filename"] for row in attachments(fresh_dsn)}:
            assert time.monotonic() < deadline, "the schedule never picked the new file up"
            await asyncio.sleep(0.2)
        (status,) = await wait_synced(http, server)
        assert status["files"]["completed"] == 4
    finally:
        await server.stop()
