"""A source that can't be read deletes nothing; a file that can't be taken in fails alone, with its reason."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import psycopg
from fakeembed import FakeEmbedder
from server.conftest import LIMITED_KEY, READ_KEY, RunningServer

from sources.conftest import (
    MAX_UPLOAD,
    OTHER_ID,
    STORE_ID,
    Mount,
    attachments,
    headers,
    source_status,
    start_with_sources,
    store_table,
    sync_again,
    wait_synced,
)
from vectorstore.sources.service import SYNCER

T = TypeVar("T")


async def test_an_unreadable_source_is_an_error_and_deletes_nothing(
    handbook: RunningServer, fresh_dsn: str, docs: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    before = attachments(fresh_dsn)
    assert len(before) == 3
    moved = tmp_path / "elsewhere"
    os.rename(docs, moved)  # unmounted, or a wrong path: the directory is gone
    (result,) = await sync_again(handbook, http)
    assert result.sources[0].error and "does not exist" in result.sources[0].error
    assert result.sources[0].deleted == 0 and attachments(fresh_dsn) == before
    (status,) = await wait_synced(http, handbook)
    assert status["status"] == "failed" and "does not exist" in status["last_sync"]["error"]
    assert status["last_success_at"] is not None and status["files"]["completed"] == 3

    _write(docs, b"a file where the directory was")
    (result,) = await sync_again(handbook, http)
    assert "is not a directory" in str(result.sources[0].error) and attachments(fresh_dsn) == before

    async with http.get(handbook.url("/metrics")) as response:
        text = await response.text()
    assert 'vectorstore_source_up{source="handbook",store="docs"} 0.0' in text
    assert 'vectorstore_source_syncs_total{outcome="error",source="handbook",store="docs"} 2.0' in text

    os.unlink(docs)
    os.rename(moved, docs)  # back: the next sync finds everything unchanged
    (result,) = await sync_again(handbook, http)
    assert result.sources[0].error is None and result.sources[0].unchanged == 3
    async with http.get(handbook.url("/metrics")) as response:
        assert 'vectorstore_source_up{source="handbook",store="docs"} 1.0' in await response.text()


async def test_an_empty_sidecar_volume_is_not_believed(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmpfs: Mount, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    outside_tmp = tmpfs.path  # an emptyDir is a volume mounted at `path`
    (outside_tmp / "a.md").write_text("Filled by a sidecar.\n")
    source = {"name": "shared", "path": str(outside_tmp), "volume": {"empty_dir": {}}}
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source])
    try:
        await wait_synced(http, server)
        os.unlink(outside_tmp / "a.md")  # the sidecar restarted and has not filled the volume yet
        (result,) = await sync_again(server, http)
        assert "is empty" in str(result.sources[0].error)
        assert [row["filename"] for row in attachments(fresh_dsn)] == ["a.md"]
    finally:
        await server.stop()


def _write(path: Path | bytes, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _bad_files(docs: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Every kind of file a sync must refuse, next to the good ones; (the secret outside, path -> reason)."""
    secret = tmp_path / "outside.md"
    secret.write_text("Outside the source root: never read.\n")
    (docs / "escape.md").symlink_to(secret)
    (docs / "inside.md").symlink_to(docs / "a.md")  # a symlink that stays inside is an ordinary file
    (docs / "loop").symlink_to(docs / "guide")
    (docs / "dangling.md").symlink_to(docs / "missing.md")
    os.mkfifo(docs / "pipe.md")
    (docs / "big.md").write_text("x" * (MAX_UPLOAD + 1))
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    _write(os.path.join(os.fsencode(docs), b"latin1-\xe9t\xe9.md"), b"A name that is not UTF-8.\n")
    deep = docs / ("d" * 200) / ("e" * 200) / ("f" * 200)
    deep.mkdir(parents=True)
    (deep / "deep.md").write_text("A path longer than an attribute may be.\n")
    (docs / ".hidden.md").write_text("Hidden files are not synced.\n")
    expected = {
        "escape.md": "symlink to outside the source root",
        "loop": "symlink to a directory",
        "dangling.md": "dangling symlink",
        "pipe.md": "not a regular file",
        "big.md": f"larger than the limit of {MAX_UPLOAD} bytes",
        "image.png": "unsupported file type",
        "latin1-\\xe9t\\xe9.md": "not valid UTF-8",
        f"{'d' * 200}/{'e' * 200}/{'f' * 200}/deep.md": "longer than 512 characters",
    }
    # A file without read permission: test_a_file_without_read_permission_fails_alone (root reads any file).

    return secret, expected


async def test_each_bad_file_fails_with_its_reason_and_the_rest_goes_on(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    secret, expected = _bad_files(docs, tmp_path)
    server = await start_with_sources(
        fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [{"name": "handbook", "path": str(docs)}]
    )
    try:
        (status,) = await wait_synced(http, server)
        failures = {item["path"]: item["reason"] for item in status["last_sync"]["failures"]}
        assert set(failures) == set(expected), failures
        for path, reason in expected.items():
            assert reason in failures[path], (path, failures[path])
        assert status["last_sync"]["failed"] == len(expected) and status["status"] == "ok"
        names = sorted(row["filename"] for row in attachments(fresh_dsn))
        assert names == ["a.md", "guide/b.txt", "guide/c.md", "inside.md"]
        assert secret.read_text() not in str(fake_embedder.inputs)
    finally:
        await server.stop()


async def test_the_status_route_follows_the_key_rules(handbook: RunningServer, http: aiohttp.ClientSession) -> None:
    body = await source_status(http, handbook)
    assert body["object"] == "list" and body["first_id"] == "handbook" and body["has_more"] is False
    assert (await source_status(http, handbook, OTHER_ID))["data"] == []  # a store without sources
    for path in (f"/v1/vector_stores/{STORE_ID}/sources", f"/vector_stores/{STORE_ID}/sources"):
        async with http.get(handbook.url(path)) as response:
            assert response.status == 401
        async with http.get(handbook.url(path), headers=headers(READ_KEY)) as response:
            assert response.status == 200
    async with http.get(handbook.url(f"/v1/vector_stores/{OTHER_ID}/sources"), headers=headers(LIMITED_KEY)) as r:
        assert r.status == 404 and (await r.json())["error"]["type"] == "invalid_request_error"
    async with http.get(handbook.url("/v1/vector_stores/vs_nope/sources"), headers=headers(READ_KEY)) as response:
        assert response.status == 404


def _as_nobody(function: Callable[[], T]) -> T:
    """Run `function` in a thread whose file-system uid is `nobody`: root reads any file whatever its mode, so
    that is how a root test run meets a file it may not read. (Linux: setfsuid is per thread, and leaving uid 0
    drops the file capabilities with it.)"""
    if os.geteuid() != 0:
        return function()
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []

    def run() -> None:
        libc.setfsuid(65534)
        try:
            result.append(function())
        finally:
            libc.setfsuid(0)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    (value,) = result
    return value


def test_a_file_without_read_permission_fails_alone(outside_tmp: Path) -> None:
    from vectorstore.sources.readers import DirectoryReader, Entry, FileProblem

    outside_tmp.chmod(0o755)
    (outside_tmp / "open.md").write_text("readable")
    (outside_tmp / "locked.md").write_text("locked")
    (outside_tmp / "locked.md").chmod(0)

    def read_all() -> dict[str, str]:
        reader = DirectoryReader(outside_tmp)
        reader.prepare()
        out: dict[str, str] = {}
        for item in reader.entries():
            assert isinstance(item, Entry)
            try:
                out[item.path] = "read " + item.read(1000).decode()
            except FileProblem as exc:
                out[item.path] = str(exc)
        return out

    assert _as_nobody(read_all) == {"locked.md": "can't be read: Permission denied", "open.md": "read readable"}


async def test_a_file_that_failed_for_its_content_is_not_queued_again(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    from ingest.pdfs import deep_page_tree_pdf

    (docs / "deep.pdf").write_bytes(deep_page_tree_pdf())
    server = await start_with_sources(
        fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [{"name": "handbook", "path": str(docs)}]
    )
    try:
        await wait_synced(http, server)
        (failed,) = [row for row in attachments(fresh_dsn) if row["filename"] == "deep.pdf"]
        assert failed["status"] == "failed" and failed["last_error"]["code"] == "invalid_file"
        assert "Maximum page tree depth" in failed["last_error"]["message"]
        (result,) = await sync_again(server, http)
        assert (result.sources[0].unchanged, result.sources[0].changes) == (4, 0)
        assert [row for row in attachments(fresh_dsn) if row["filename"] == "deep.pdf"] == [failed]
    finally:
        await server.stop()


async def test_a_writer_swapping_a_directory_for_a_symlink_gets_nothing_outside_in(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Statistical: for a few seconds a writer swaps root/sub with a symlink to a directory of the same file names
    (and rewrites a file, so every sync reads), while syncs run back to back. Not one outside byte gets in."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for index in range(4):
        (root / f"top-{index}.md").write_text(f"Top page {index}, inside.\n")
        (root / "sub" / f"page-{index}.md").write_text(f"Sub page {index}, inside.\n")
        (outside / f"page-{index}.md").write_text(f"OUTSIDE secret {index}.\n")
    server = await start_with_sources(
        fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [{"name": "r", "path": str(root)}]
    )
    stop = threading.Event()
    swaps = [0]

    def writer() -> None:
        while not stop.is_set():
            (root / "sub" / "page-0.md").write_text(f"Sub page 0, inside, version {swaps[0]}.\n")
            os.rename(root / "sub", root / "sub.real")
            (root / "sub").symlink_to(outside)
            os.unlink(root / "sub")
            os.rename(root / "sub.real", root / "sub")
            swaps[0] += 1

    try:
        await wait_synced(http, server)
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        syncs = 0
        deadline = asyncio.get_running_loop().time() + 4.0
        try:
            while asyncio.get_running_loop().time() < deadline:
                await server.app[SYNCER].sync_all()
                syncs += 1
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)
        await sync_again(server, http)
        assert syncs >= 5 and swaps[0] >= 100, (syncs, swaps[0])
        with psycopg.connect(fresh_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM files WHERE position('OUTSIDE'::bytea IN content) > 0").fetchone()
            chunks = conn.execute(
                f"SELECT count(*) FROM {store_table(fresh_dsn)} WHERE content LIKE '%%OUTSIDE%%'"
            ).fetchone()
        assert row == (0,) and chunks == (0,)
    finally:
        stop.set()
        await server.stop()
