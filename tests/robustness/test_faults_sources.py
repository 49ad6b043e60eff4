"""Declared documents against real `vectorstore serve` processes: kill -9 in the middle of a sync and of a
replacement, two replicas syncing one store, and a database lost and recreated (the same query finds the same
files afterwards)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from robustness.conftest import Launcher
from robustness.harness import ServerProcess, Upstream, declared_store_ids, write_spec

FILES = 2000
CHANGED = 40


def sources_spec(path: Path, upstream_url: str, source_dir: Path, **options: Any) -> Path:
    """The harness's spec, with `alpha` kept in sync with `source_dir` (and the schedule off)."""
    write_spec(path, upstream_url, **options)
    data = yaml.safe_load(path.read_text())
    data["stores"][0]["sources"] = [{"name": "docs", "path": str(source_dir), "attributes": {"kind": "doc"}}]
    data["sync"] = {"interval": "0"}
    path.write_text(json.dumps(data))
    return path


def write_files(root: Path, count: int, version: str = "v1") -> None:
    for index in range(count):
        directory = root / f"part{index % 20:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"doc{index:04d}.md").write_text(f"Document {index} {version}. It talks about topic {index}.\n")


def state(dsn: str, store_id: str) -> dict[str, Any]:
    """Everything a sync and the worker write, read in one snapshot."""
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        table = conn.execute("SELECT table_name FROM vector_stores WHERE id = %s", [store_id]).fetchone()
        assert table is not None
        rows = conn.execute("SELECT path, file_id FROM source_files WHERE vector_store_id = %s", [store_id]).fetchall()
        attached = conn.execute(
            "SELECT f.filename, v.file_id, v.status FROM vector_store_files v JOIN files f ON f.id = v.file_id"
            " WHERE v.vector_store_id = %s AND f.owner = 'source:docs'",
            [store_id],
        ).fetchall()
        orphans = conn.execute(
            "SELECT count(*) FROM files f WHERE f.owner = 'source:docs'"
            " AND NOT EXISTS (SELECT 1 FROM vector_store_files v WHERE v.file_id = f.id)"
        ).fetchone()
        chunks = conn.execute(
            sql.SQL("SELECT attributes->>'path', file_id, chunk_index, content FROM {}").format(
                sql.Identifier(table[0])
            )
        ).fetchall()
    versions: dict[str, set[str]] = {}
    for path, file_id, _, _ in chunks:
        versions.setdefault(str(path), set()).add(str(file_id))
    return {
        "rows": {str(path): str(file_id) for path, file_id in rows},
        "attached": [(str(name), str(file_id), str(status)) for name, file_id, status in attached],
        "orphans": int(orphans[0]) if orphans else -1,
        "chunks": chunks,
        "searchable_versions": versions,
    }


def assert_consistent(snapshot: dict[str, Any]) -> None:
    """Each path's rows were written together: its row names an attached File, no File is left unattached,
    and no path is searchable in two versions at once."""
    attached_ids = {file_id for _, file_id, _ in snapshot["attached"]}
    assert set(snapshot["rows"].values()) <= attached_ids
    assert snapshot["orphans"] == 0
    assert all(len(ids) == 1 for ids in snapshot["searchable_versions"].values()), "a path in two versions"
    keys = [(file_id, index) for _, file_id, index, _ in snapshot["chunks"]]
    assert len(keys) == len(set(keys)), "a chunk stored twice"


async def wait_synced(server: ServerProcess, store_id: str, within: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    async with server.session("reader") as http:
        while True:
            response = await http.get(f"/v1/vector_stores/{store_id}/sources")
            assert response.status == 200, await response.text()
            (item,) = (await response.json())["data"]
            if item["status"] in ("ok", "failed") and item["files"]["in_progress"] == 0:
                return dict(item)
            assert time.monotonic() < deadline, item
            await asyncio.sleep(0.2)


def wait_for(condition: Any, server: ServerProcess, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert server.process is not None and server.process.poll() is None, server.logs()[-3000:]
        assert time.monotonic() < deadline, server.logs()[-3000:]
        time.sleep(0.01)


async def test_kill_9_during_a_sync_and_during_replacements(
    fresh_dsn: str, upstream: Upstream, launch: Launcher, tmp_path: Path
) -> None:
    source_dir = tmp_path / "docs"
    await asyncio.to_thread(write_files, source_dir, FILES)
    spec = sources_spec(tmp_path / "spec.yaml", upstream.base_url, source_dir)
    alpha = declared_store_ids(spec)["alpha"]
    upstream.delay = 0.2  # ingestion is slow; the sync itself (listing, queueing) is not

    def rows() -> int:
        with psycopg.connect(fresh_dsn) as conn:
            if conn.execute("SELECT to_regclass('source_files')").fetchone() == (None,):
                return 0
            found = conn.execute("SELECT count(*) FROM source_files").fetchone()
        return int(found[0]) if found else 0

    server = launch(fresh_dsn, upstream.base_url, spec=spec)
    await asyncio.to_thread(wait_for, lambda: rows() > 0, server)
    server.kill()  # in the middle of the sync: some batches committed, the rest not
    first = state(fresh_dsn, alpha)
    assert 0 < len(first["rows"]) < FILES, len(first["rows"])
    assert_consistent(first)

    # Two replicas start together: one syncs the store, the other finds it locked and skips; either way each
    # path ends up once.
    upstream.delay = 0.0
    replicas = [launch(fresh_dsn, upstream.base_url, spec=spec, ready=False) for _ in range(2)]
    for replica in replicas:
        replica.wait_ready(timeout=60.0)
    status = await wait_synced(replicas[0], alpha)
    assert status["status"] == "ok" and status["files"] == {
        "in_progress": 0,
        "completed": FILES,
        "failed": 0,
        "total": FILES,
    }
    done = state(fresh_dsn, alpha)
    assert_consistent(done)
    assert len(done["rows"]) == FILES and len(done["attached"]) == FILES
    assert len({name for name, _, _ in done["attached"]}) == FILES
    for replica in replicas:
        replica.kill()

    # Change some files, and kill -9 while their new versions are being ingested.
    def change() -> None:
        for index in range(CHANGED):
            (source_dir / f"part{index % 20:02d}" / f"doc{index:04d}.md").write_text(f"Document {index} v2.\n")

    await asyncio.to_thread(change)
    upstream.delay = 0.5
    server = launch(fresh_dsn, upstream.base_url, spec=spec)

    def replacing() -> bool:
        with psycopg.connect(fresh_dsn) as conn:
            found = conn.execute("SELECT count(*) FROM vector_store_files WHERE replaces <> '{}'").fetchone()
        return bool(found and found[0] >= CHANGED)

    await asyncio.to_thread(wait_for, replacing, server)
    await asyncio.sleep(0.5)
    server.kill()
    during = state(fresh_dsn, alpha)
    assert_consistent(during)  # old or new version of each path, never both, never half
    assert set(during["searchable_versions"]) == set(done["searchable_versions"])

    upstream.delay = 0.0
    restarted = launch(fresh_dsn, upstream.base_url, spec=spec)
    await wait_synced(restarted, alpha)
    final = state(fresh_dsn, alpha)
    assert_consistent(final)
    assert len(final["attached"]) == FILES and {status for _, _, status in final["attached"]} == {"completed"}
    texts = {str(path): str(content) for path, _, _, content in final["chunks"]}
    for index in range(CHANGED):
        assert texts[f"part{index % 20:02d}/doc{index:04d}.md"] == f"Document {index} v2."
    assert texts[f"part00/doc{FILES - 20:04d}.md"].endswith("v1. It talks about topic 1980.")


async def test_after_a_database_loss_the_same_query_finds_the_same_files(
    pg_dsn: str, fresh_dsn: str, upstream: Upstream, launch: Launcher, tmp_path: Path
) -> None:
    source_dir = tmp_path / "handbook"

    def handbook() -> None:
        (source_dir / "policies").mkdir(parents=True)
        (source_dir / "welcome.md").write_text("Welcome to the company handbook.\n")
        (source_dir / "policies" / "leave.md").write_text("Annual leave: twenty five days of holiday a year.\n")
        (source_dir / "policies" / "travel.md").write_text("Travel: book trains before flights.\n")

    await asyncio.to_thread(handbook)
    spec = sources_spec(tmp_path / "spec.yaml", upstream.base_url, source_dir)
    alpha = declared_store_ids(spec)["alpha"]
    # The fake upstream embeds words into 8 dimensions: the exact text of a chunk is the unambiguous query.
    query = {"query": "Annual leave: twenty five days of holiday a year.", "max_num_results": 3}

    async def ask(server: ServerProcess) -> list[tuple[str, dict[str, Any], str]]:
        await wait_synced(server, alpha)
        async with server.session() as http:
            response = await http.post(f"/v1/vector_stores/{alpha}/search", json=query)
            assert response.status == 200, await response.text()
            data = (await response.json())["data"]
        return [(hit["filename"], hit["attributes"], hit["content"][0]["text"]) for hit in data]

    server = launch(fresh_dsn, upstream.base_url, spec=spec)
    before = await ask(server)
    assert before[0][0] == "policies/leave.md" and before[0][1] == {
        "kind": "doc",
        "source": "docs",
        "path": "policies/leave.md",
    }
    server.stop()

    # The database is lost: dropped and created again, empty, under the same name.
    name = str(psycopg.conninfo.conninfo_to_dict(fresh_dsn)["dbname"])
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    restarted = launch(fresh_dsn, upstream.base_url, spec=spec)
    after = await ask(restarted)
    assert after == before
